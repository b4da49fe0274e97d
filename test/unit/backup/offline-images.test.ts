// qemu-img info parsing and the checkpoint states of a shut-off VM's images, on output captured from qemu-img 7.2.22.
import { describe, expect, test } from '@jest/globals';
import { bitmapState, checkImageCheckpoints, parseImageInfo, type InspectedDisk } from '../../../src/backup/control/offline-images.js';
import type { Checkpoint } from '../../../src/checkpoint/model.js';
import { InvalidInputError } from '../../../src/util/errors.js';

const MiB = 1024 * 1024;

/** `qemu-img info --output=json -U -f qcow2` of an image with an enabled and a disabled bitmap. */
const QCOW2 = `{
    "virtual-size": 67108864,
    "filename": "a.qcow2",
    "cluster-size": 65536,
    "format": "qcow2",
    "actual-size": 5677056,
    "format-specific": {
        "type": "qcow2",
        "data": {
            "compat": "1.1",
            "compression-type": "zlib",
            "lazy-refcounts": false,
            "bitmaps": [
                { "flags": [ "auto" ], "name": "cp1", "granularity": 65536 },
                { "flags": [ ], "name": "cp3off", "granularity": 65536 }
            ],
            "refcount-bits": 16,
            "corrupt": false,
            "extended-l2": false
        }
    },
    "dirty-flag": false
}`;

/** An overlay whose QEMU was killed: its bitmap stays `in-use`. */
const IN_USE = `{
    "backing-filename-format": "qcow2",
    "virtual-size": 67108864,
    "filename": "top.qcow2",
    "cluster-size": 65536,
    "format": "qcow2",
    "actual-size": 208896,
    "format-specific": {
        "type": "qcow2",
        "data": {
            "compat": "1.1",
            "compression-type": "zlib",
            "lazy-refcounts": false,
            "bitmaps": [ { "flags": [ "in-use", "auto" ], "name": "cpx", "granularity": 65536 } ],
            "refcount-bits": 16,
            "corrupt": false,
            "extended-l2": false
        }
    },
    "full-backing-filename": "/tmp/fleece-test-probe/a.qcow2",
    "backing-filename": "/tmp/fleece-test-probe/a.qcow2",
    "dirty-flag": false
}`;

const RAW = `{
    "virtual-size": 10485760,
    "filename": "r.img",
    "format": "raw",
    "actual-size": 4096,
    "dirty-flag": false
}`;

/** A qcow2 image without bitmaps has no `bitmaps` key at all. */
const NO_BITMAPS = `{"virtual-size": 16777216, "filename": "b.qcow2", "format": "qcow2",
  "format-specific": {"type": "qcow2", "data": {"compat": "1.1", "corrupt": false}}}`;

describe('parseImageInfo', () => {
  test('qcow2: size, format, bitmaps with their flags', () => {
    expect(parseImageInfo(QCOW2)).toEqual({
      filename: 'a.qcow2',
      format: 'qcow2',
      virtualSize: 64 * MiB,
      actualSize: 5677056,
      bitmaps: [
        { name: 'cp1', flags: ['auto'], granularity: 65536 },
        { name: 'cp3off', flags: [], granularity: 65536 },
      ],
      corrupt: false,
    });
  });

  test('an overlay: the backing file and an in-use bitmap', () => {
    const info = parseImageInfo(IN_USE);
    expect(info.backingFile).toBe('/tmp/fleece-test-probe/a.qcow2');
    expect(info.bitmaps).toEqual([{ name: 'cpx', flags: ['in-use', 'auto'], granularity: 65536 }]);
  });

  test('raw and qcow2 without bitmaps: no bitmaps', () => {
    expect(parseImageInfo(RAW)).toEqual({ filename: 'r.img', format: 'raw', virtualSize: 10 * MiB, actualSize: 4096, bitmaps: [], corrupt: false });
    expect(parseImageInfo(NO_BITMAPS).bitmaps).toEqual([]);
  });

  test.each([
    ['not JSON', 'qemu-img: Could not open'],
    ['an array (--backing-chain)', `[${RAW}]`],
    ['no virtual-size', '{"format": "raw"}'],
    ['a bitmap without flags', '{"virtual-size": 1, "format": "qcow2", "format-specific": {"type": "qcow2", "data": {"bitmaps": [{"name": "x"}]}}}'],
  ])('%s is refused', (_what, json) => {
    expect(() => parseImageInfo(json, 'qemu-img info x')).toThrow(InvalidInputError);
  });
});

describe('bitmapState', () => {
  test.each([
    [['auto'], 'ok'],
    [['in-use', 'auto'], 'inconsistent'],
    [['in-use'], 'inconsistent'],
    [[], 'not-recording'],
  ] as const)('%j → %s', (flags, state) => {
    expect(bitmapState(flags)).toBe(state);
  });
});

describe('checkImageCheckpoints', () => {
  const disks: InspectedDisk[] = [
    { target: 'vda', path: '/img/vda.qcow2', info: parseImageInfo(QCOW2) },
    { target: 'vdb', path: '/img/vdb.qcow2', info: parseImageInfo(IN_USE) },
    { target: 'vdc', path: '/img/vdc.img', info: parseImageInfo(RAW) },
  ];
  const cp = (name: string, on: Array<[string, string?]>): Checkpoint => ({
    name,
    creationTime: 1,
    disks: on.map(([disk, bitmap]) => ({ name: disk, checkpoint: 'bitmap' as const, ...(bitmap ? { bitmap } : {}) })),
  });

  test('ok, inconsistent, not-recording and missing, each with the flags or why', () => {
    const checks = checkImageCheckpoints(
      [cp('cp1', [['vda'], ['vdb', 'cpx']]), cp('cp3off', [['vda']]), cp('gone', [['vda'], ['vdc'], ['vdz']])],
      disks,
    );
    expect(checks).toEqual([
      {
        name: 'cp1',
        valid: false,
        disks: [
          { checkpoint: 'cp1', disk: 'vda', bitmap: 'cp1', state: 'ok', detail: 'flags: auto' },
          {
            checkpoint: 'cp1', disk: 'vdb', bitmap: 'cpx', state: 'inconsistent',
            detail: 'flags: in-use, auto (the image was not closed cleanly since it was last opened for writing, or a QEMU holds it open now)',
          },
        ],
      },
      {
        name: 'cp3off',
        valid: false,
        disks: [{ checkpoint: 'cp3off', disk: 'vda', bitmap: 'cp3off', state: 'not-recording', detail: 'flags: (none: disabled) (the bitmap is disabled and misses writes)' }],
      },
      {
        name: 'gone',
        valid: false,
        disks: [
          { checkpoint: 'gone', disk: 'vda', bitmap: 'gone', state: 'missing', detail: 'no bitmap gone in /img/vda.qcow2 (bitmaps: cp1, cp3off)' },
          { checkpoint: 'gone', disk: 'vdc', bitmap: 'gone', state: 'missing', detail: '/img/vdc.img is raw, which holds no bitmaps' },
          { checkpoint: 'gone', disk: 'vdz', bitmap: 'gone', state: 'missing', detail: 'the VM has no disk vdz any more' },
        ],
      },
    ]);
  });

  test("disks with checkpoint='no' are not checked; a checkpoint of only ok bitmaps is valid", () => {
    const checkpoint: Checkpoint = { name: 'cp1', creationTime: 1, disks: [{ name: 'vda', checkpoint: 'bitmap' }, { name: 'vdc', checkpoint: 'no' }] };
    expect(checkImageCheckpoints([checkpoint], disks)).toEqual([
      { name: 'cp1', valid: true, disks: [{ checkpoint: 'cp1', disk: 'vda', bitmap: 'cp1', state: 'ok', detail: 'flags: auto' }] },
    ]);
  });
});
