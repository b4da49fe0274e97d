import { describe, expect, it } from '@jest/globals';
import { disksFromQuery, targetFromQdev, type VmDisk } from '../../../src/qemu/block-graph.js';
import { QemuReplyError } from '../../../src/qemu/errors.js';
import { loadFixture } from './fixtures.js';

const NAMED = 'query-named-block-nodes';
const BLOCK = 'query-block';
const GRAPH = 'x-debug-query-block-graph';

describe('disksFromQuery on a real VM with two disks (QEMU 7.2)', () => {
  const fx = loadFixture('vm-two-disks.json');
  const expected: VmDisk[] = [
    {
      target: 'vda',
      qdev: '/machine/peripheral/vda/virtio-backend',
      formatNode: 'disk-vda',
      fileNode: 'disk-vda-file',
      filename: '/tmp/cap/a.qcow2',
      format: 'qcow2',
      virtualSize: 33554432,
      bitmaps: [
        { name: 'cp0', recording: true, busy: false, persistent: true, inconsistent: false, granularity: 65536, count: 0 },
      ],
    },
    {
      target: 'vdb',
      qdev: '/machine/peripheral/vdb/virtio-backend',
      formatNode: 'disk-vdb',
      fileNode: 'disk-vdb-file',
      filename: '/tmp/cap/b.raw',
      format: 'raw',
      virtualSize: 16777216,
      bitmaps: [],
    },
  ];

  it('uses the graph for exact links', () => {
    expect(disksFromQuery(fx[NAMED], fx[BLOCK], fx[GRAPH])).toEqual(expected);
  });

  it('finds the same links from file names without the graph', () => {
    expect(disksFromQuery(fx[NAMED], fx[BLOCK])).toEqual(expected);
  });

  it('accepts whole reply messages', () => {
    expect(disksFromQuery({ return: fx[NAMED] }, { return: fx[BLOCK], id: 'x' })).toEqual(expected);
  });
});

describe('disksFromQuery during fleecing', () => {
  const fx = loadFixture('vm-fleecing.json');

  it.each([
    ['with the graph', true],
    ['without the graph', false],
  ])('skips the copy-before-write filter to the qcow2 node (%s)', (_label, withGraph) => {
    const disks = disksFromQuery(fx[NAMED], fx[BLOCK], withGraph ? fx[GRAPH] : undefined);
    expect(disks.map((d) => [d.target, d.formatNode, d.fileNode, d.format])).toEqual([
      ['vda', 'disk-vda', 'disk-vda-file', 'qcow2'],
      ['vdb', 'disk-vdb', 'disk-vdb-file', 'raw'],
    ]);
    // the job's anonymous bitmap is left out, the checkpoint stays
    expect(disks[0]!.bitmaps.map((b) => b.name)).toEqual(['cp0']);
  });
});

describe('disksFromQuery on qemu-storage-daemon (no devices)', () => {
  const fx = loadFixture('qsd-two-disks.json');
  it.each([
    ['with the graph', true],
    ['without the graph', false],
  ])('treats each unused top node as a disk named after it (%s)', (_label, withGraph) => {
    const disks = disksFromQuery(fx[NAMED], fx[BLOCK], withGraph ? fx[GRAPH] : undefined);
    expect(disks.map((d) => [d.target, d.qdev, d.formatNode, d.fileNode, d.format, d.virtualSize])).toEqual([
      ['disk0', '', 'disk0', 'f0', 'qcow2', 33554432],
      ['disk1', '', 'disk1', 'f1', 'raw', 16777216],
    ]);
  });
});

describe('disksFromQuery on libvirt 9.0 captures (no query-block: node names only)', () => {
  it('push full: one disk on libvirt-1-format with bitmap cp0', () => {
    const fx = loadFixture('libvirt-named-nodes-push-full-cp1.json');
    const disks = disksFromQuery(fx[NAMED], []);
    expect(disks).toEqual([
      {
        target: 'libvirt-1-format',
        qdev: '',
        formatNode: 'libvirt-1-format',
        fileNode: 'libvirt-1-storage',
        filename: '/tmp/lv/img/small.qcow2',
        format: 'qcow2',
        virtualSize: 1073741824,
        bitmaps: [
          { name: 'cp0', recording: true, busy: false, persistent: true, inconsistent: false, granularity: 65536, count: 0 },
        ],
      },
    ]);
  });

  it('pull during fleecing: the filter resolves to libvirt-1-format with its four checkpoints', () => {
    const fx = loadFixture('libvirt-named-nodes-pull-inc-during.json');
    const disks = disksFromQuery(fx[NAMED], []);
    const live = disks.find((d) => d.formatNode === 'libvirt-1-format');
    expect(live?.target).toBe('libvirt-1-format');
    expect(disks.map((d) => d.target)).toEqual(['libvirt-1-format', 'libvirt-4-format']);
    expect(live?.bitmaps.map((b) => [b.name, b.count])).toEqual([
      ['cp3', 0],
      ['cp2', 8388608],
      ['cp1', 25165824],
      ['cp0', 25165824],
    ]);
    const scratch = disks.find((d) => d.formatNode === 'libvirt-4-format');
    expect(scratch?.bitmaps).toEqual([
      { name: 'backup-vda', recording: false, busy: true, persistent: false, inconsistent: false, granularity: 65536, count: 8388608 },
    ]);
  });
});

describe('validation', () => {
  it('throws QemuReplyError naming the command on odd shapes', () => {
    expect(() => disksFromQuery({}, [])).toThrow(QemuReplyError);
    expect(() => disksFromQuery([{ 'node-name': 'x' }], [])).toThrow(/query-named-block-nodes.*node #0/);
    expect(() => disksFromQuery([], 'nope')).toThrow(/query-block/);
    expect(() =>
      disksFromQuery([], [{ device: '', qdev: '/machine/peripheral/vda/virtio-backend', inserted: { 'node-name': 'gone' } }]),
    ).toThrow(/device vda uses node gone/);
  });

  it('reads the inconsistent flag', () => {
    const fx = loadFixture('vm-two-disks.json');
    const named = structuredClone(fx[NAMED]) as Array<Record<string, unknown>>;
    const vda = named.find((n) => n['node-name'] === 'disk-vda')!;
    (vda['dirty-bitmaps'] as Array<Record<string, unknown>>)[0]!.inconsistent = true;
    expect(disksFromQuery(named, fx[BLOCK])[0]!.bitmaps[0]!.inconsistent).toBe(true);
  });

  it('derives targets from qdev paths', () => {
    expect(targetFromQdev('/machine/peripheral/vda/virtio-backend')).toBe('vda');
    expect(targetFromQdev('/machine/peripheral/scsi0-0-0-0')).toBe('scsi0-0-0-0');
    expect(targetFromQdev('/machine/unattached/device[5]')).toBeUndefined();
  });
});
