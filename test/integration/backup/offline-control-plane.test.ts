// The offline control plane against real qemu-storage-daemon and libnbd (no libvirt): qcow2 and raw images of a
// "shut-off VM" exported read-only, a full read byte-identical to the image, an incremental from a persistent bitmap
// added with qemu-img (exact dirty extents), QEMU's image locking against a running writer, nothing left behind.
import { afterEach, beforeEach, describe, expect, test } from '@jest/globals';
import { execa } from 'execa';
import { createHash } from 'node:crypto';
import { readFile, readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { createDisk, qemuImg, qemuIo, startQemuSystem, startStorageDaemon as startHarnessDaemon } from '../../harness/qemu.js';
import { makeTempDir, removeTempDir } from '../../harness/temp-dir.js';
import { OfflineControlPlane, type OfflineControlPlaneOptions } from '../../../src/backup/control/offline-control-plane.js';
import { StorageDaemonError } from '../../../src/backup/control/storage-daemon.js';
import { backupVmToRepository } from '../../../src/backup/repository-backup.js';
import { CheckpointUnusableError } from '../../../src/checkpoint/manager.js';
import type { Checkpoint } from '../../../src/checkpoint/model.js';
import { dirtyExtents } from '../../../src/nbd/context-extents.js';
import { mergeExtents } from '../../../src/nbd/extent-algebra.js';
import { NbdSource } from '../../../src/nbd/nbd-source.js';
import { openRepository } from '../../../src/repository/index.js';
import { createSparseFileSink } from '../../../src/restore/file-sink.js';
import { restoreBackup } from '../../../src/restore/restore.js';
import { ConflictError } from '../../../src/util/errors.js';

const MiB = 1024 * 1024;
const KiB = 1024;

let dir: string;
let runDir: string;
let vda: string;
let vdb: string;

const cp1: Checkpoint = { name: 'cp1', creationTime: 1_700_000_000, disks: [{ name: 'vda', checkpoint: 'bitmap', bitmap: 'cp1' }, { name: 'vdb', checkpoint: 'no' }] };
const cpGone: Checkpoint = { name: 'cp0', creationTime: 1_600_000_000, disks: [{ name: 'vda', checkpoint: 'bitmap', bitmap: 'cp0' }] };

function plane(extra: Partial<OfflineControlPlaneOptions> = {}): OfflineControlPlane {
  return new OfflineControlPlane({
    vm: 'shutoff1',
    disks: [
      { target: 'vda', path: vda, format: 'qcow2' },
      { target: 'vdb', path: vdb, format: 'raw' },
    ],
    checkpoints: [cpGone, cp1],
    runDir,
    ...extra,
  });
}

const sha = (data: Buffer | Uint8Array): string => createHash('sha256').update(data).digest('hex');

/** Processes whose command line names `needle` (our run directory is unique to the test). */
async function processesNaming(needle: string): Promise<string[]> {
  const result = await execa('pgrep', ['-a', '-f', needle], { reject: false });
  return result.stdout.split('\n').filter((l) => l.trim() && !l.includes('pgrep'));
}

async function rawCopy(image: string, format: 'qcow2' | 'raw', out: string): Promise<string> {
  await execa('qemu-img', ['convert', '-U', '-f', format, '-O', 'raw', image, out]);
  return sha(await readFile(out));
}

/** nbdcopy of one export to a raw file; returns its sha256. */
async function nbdcopy(uri: string, out: string): Promise<string> {
  await execa('nbdcopy', [uri, out]);
  return sha(await readFile(out));
}

beforeEach(async () => {
  dir = await makeTempDir('offline');
  runDir = join(dir, 'run');
  vda = join(dir, 'vda.qcow2');
  vdb = join(dir, 'vdb.img');
  await createDisk(vda, { size: 16 * MiB });
  await qemuIo(vda, ['write -P 0x11 0 1M', 'write -P 0x22 5M 2M']);
  await qemuImg(['bitmap', '--add', '--enable', '-f', 'qcow2', vda, 'cp1']);
  // After cp1: 1 MiB at 3M, 100 KiB at 10M (two 64 KiB granules), an overwrite at 5M+64K.
  await qemuIo(vda, ['write -P 0x33 3M 1M', 'write -P 0x44 10M 100K', 'write -P 0x55 5184K 4K']);
  await createDisk(vdb, { size: 8 * MiB, format: 'raw' });
  await qemuIo(vdb, ['write -P 0x66 1M 2M'], 'raw');
});

afterEach(async () => {
  expect(await processesNaming(dir)).toEqual([]);
  await removeTempDir(dir);
});

describe('inspect', () => {
  test('lists the images with their sizes and the checkpoint bitmaps with their state', async () => {
    const inspection = await plane().inspect();
    expect(inspection.canCheckpoint).toBe(false);
    expect(inspection.disks).toEqual([
      { target: 'vda', virtualSize: 16 * MiB, format: 'qcow2', path: vda },
      { target: 'vdb', virtualSize: 8 * MiB, format: 'raw', path: vdb },
    ]);
    const byName = new Map(inspection.checks.map((c) => [c.name, c]));
    expect(byName.get('cp1')).toEqual({
      name: 'cp1', valid: true, disks: [{ checkpoint: 'cp1', disk: 'vda', bitmap: 'cp1', state: 'ok', detail: 'flags: auto' }],
    });
    expect(byName.get('cp0')?.valid).toBe(false);
    expect(byName.get('cp0')?.disks[0]).toMatchObject({ state: 'missing', detail: expect.stringContaining('no bitmap cp0') });
  });

  test('an image left with an in-use bitmap (QEMU killed) is inconsistent, and begin refuses it', async () => {
    const daemon = await startHarnessDaemon({ disks: [{ path: vda, target: 'vda' }], dir });
    await daemon.kill();
    await daemon.stop();
    const p = plane();
    const inspection = await p.inspect();
    const check = inspection.checks.find((c) => c.name === 'cp1')!.disks[0]!;
    expect(check.state).toBe('inconsistent');
    expect(check.detail).toContain('in-use');
    const error = await p.begin({ disks: [{ target: 'vda', incrementalFrom: 'cp1' }] }).then(() => undefined, (e: unknown) => e);
    expect(error).toBeInstanceOf(CheckpointUnusableError);
    expect(error).toMatchObject({ state: 'inconsistent' });
    expect(await readdir(runDir)).toEqual([]);
  });

  test('a disabled bitmap is not-recording, and begin refuses it', async () => {
    await qemuImg(['bitmap', '--disable', '-f', 'qcow2', vda, 'cp1']);
    const p = plane();
    const check = (await p.inspect()).checks.find((c) => c.name === 'cp1')!.disks[0]!;
    expect(check).toMatchObject({ state: 'not-recording', detail: expect.stringContaining('disabled') });
    await expect(p.begin({ disks: [{ target: 'vda', incrementalFrom: 'cp1' }] })).rejects.toThrow(/not-recording/);
  });
});

describe('begin / finish', () => {
  test('a full export of every disk reads byte-identical to the images; the images are not touched', async () => {
    const before = [sha(await readFile(vda)), sha(await readFile(vdb))];
    const t0 = performance.now();
    const point = await plane().begin({ disks: [{ target: 'vda' }, { target: 'vdb' }], checkpoint: { name: 'ignored', disks: ['vda'] } });
    const tBegin = performance.now() - t0;
    try {
      expect(point.checkpoint).toBeNull();
      expect(point.warnings.join('\n')).toContain('no checkpoint ignored was made');
      expect(point.exports.map((e) => [e.disk, e.exportName, e.context, e.size])).toEqual([
        ['vda', 'vda', 'base:allocation', 16 * MiB],
        ['vdb', 'vdb', 'base:allocation', 8 * MiB],
      ]);
      const socket = point.exports[0]!.socket!;
      expect((await stat(socket)).mode & 0o777).toBe(0o600);
      expect((await stat(runDir)).mode & 0o777).toBe(0o700);
      const procs = await processesNaming(runDir);
      expect(procs).toHaveLength(1);
      expect(procs[0]).toContain('qemu-storage-daemon');
      expect(procs[0]).toContain('fleece');
      for (const [i, exp] of point.exports.entries()) {
        const image = i === 0 ? vda : vdb;
        const format = i === 0 ? 'qcow2' : 'raw';
        expect(await nbdcopy(exp.uri, join(dir, `${exp.disk}.nbd.raw`))).toBe(await rawCopy(image, format, join(dir, `${exp.disk}.ref.raw`)));
      }
      // While exported, nothing can open the qcow2 image for writing (a VM start would fail the same way).
      await expect(qemuIo(vda, ['write -P 0x77 0 4K'])).rejects.toThrow(/lock/);
    } catch (error) {
      await point.abort(error);
      throw error;
    }
    const t1 = performance.now();
    expect(await point.finish()).toEqual({ warnings: [] });
    const tFinish = performance.now() - t1;
    console.log(`offline plane: begin ${tBegin.toFixed(0)} ms (2 disks), finish ${tFinish.toFixed(0)} ms`);
    expect(await readdir(runDir)).toEqual([]);
    expect(await processesNaming(runDir)).toEqual([]);
    expect([sha(await readFile(vda)), sha(await readFile(vdb))]).toEqual(before);
  });

  test('an incremental export from cp1 shows exactly what was written after cp1, over a read-only node', async () => {
    const point = await plane().begin({ disks: [{ target: 'vda', incrementalFrom: 'cp1' }] });
    try {
      const exp = point.exports[0]!;
      expect(exp).toMatchObject({ disk: 'vda', context: 'qemu:dirty-bitmap:cp1', incrementalFrom: 'cp1', size: 16 * MiB });
      const source = await NbdSource.open({ socket: exp.socket!, exportName: exp.exportName }, { metaContexts: [exp.context], connections: 2 });
      try {
        expect(source.readOnly).toBe(true);
        const dirty = [];
        for await (const e of dirtyExtents(source, exp.context)) dirty.push(e);
        expect(mergeExtents(dirty).map((e) => [e.offset, e.length])).toEqual([
          [3 * MiB, 1 * MiB],
          [5 * MiB + 64 * KiB, 64 * KiB],
          [10 * MiB, 128 * KiB],
        ]);
        const data = await source.read(3 * MiB, 64 * KiB);
        expect(Buffer.from(data).every((b) => b === 0x33)).toBe(true);
      } finally {
        await source.close();
      }
    } finally {
      await point.finish();
    }
    expect(await readdir(runDir)).toEqual([]);
    // Reading the bitmap did not change it: it still records since cp1.
    expect((await plane().inspect()).checks.find((c) => c.name === 'cp1')?.valid).toBe(true);
  });

  test('abort ends everything, twice without a throw; a second begin works after it', async () => {
    const p = plane();
    const point = await p.begin({ disks: [{ target: 'vda' }, { target: 'vdb' }] });
    await point.abort(new Error('test'));
    await point.abort();
    expect(await readdir(runDir)).toEqual([]);
    expect(await processesNaming(runDir)).toEqual([]);
    const again = await p.begin({ disks: [{ target: 'vdb' }] });
    await p.close();
    expect(await readdir(runDir)).toEqual([]);
    await again.abort();
  });

  test.each([0, 300])('a daemon that dies on its own (finish %d ms later) makes finish throw a clear error, and nothing is left', async (wait) => {
    const point = await plane().begin({ disks: [{ target: 'vda' }] });
    const [line] = await processesNaming(runDir);
    process.kill(Number(line!.split(' ')[0]), 'SIGKILL');
    if (wait) await new Promise((resolve) => setTimeout(resolve, wait));
    const error = await point.finish().then(() => undefined, (e: unknown) => e);
    expect(error).toBeInstanceOf(StorageDaemonError);
    expect((error as Error).message).toMatch(/qemu-storage-daemon \(pid \d+\) exporting the disks of VM 'shutoff1' was killed by SIGKILL before the backup ended/);
    expect(await readdir(runDir)).toEqual([]);
  });

  test('an overlay exports its whole backing chain (backing opened read-only from the header), its own bitmap incremental', async () => {
    const top = join(dir, 'top.qcow2');
    await qemuImg(['create', '-q', '-f', 'qcow2', '-F', 'qcow2', '-b', vda, top]);
    await qemuImg(['bitmap', '--add', '-f', 'qcow2', top, 'cp1']);
    await qemuIo(top, ['write -P 0x99 12M 64K']);
    const p = plane({ disks: [{ target: 'vda', path: top, format: 'qcow2' }] });
    const point = await p.begin({ disks: [{ target: 'vda' }] });
    try {
      expect(await nbdcopy(point.exports[0]!.uri, join(dir, 'top.nbd.raw'))).toBe(await rawCopy(top, 'qcow2', join(dir, 'top.ref.raw')));
    } finally {
      await point.finish();
    }
    const inc = await p.begin({ disks: [{ target: 'vda', incrementalFrom: 'cp1' }] });
    try {
      const source = await NbdSource.open({ socket: inc.exports[0]!.socket!, exportName: 'vda' }, { metaContexts: [inc.exports[0]!.context] });
      const dirty = [];
      for await (const e of dirtyExtents(source, inc.exports[0]!.context)) dirty.push([e.offset, e.length]);
      await source.close();
      expect(dirty).toEqual([[12 * MiB, 64 * KiB]]);
    } finally {
      await inc.finish();
    }
  });

  test('an abort signal: before begin nothing starts; after begin it ends the exports', async () => {
    const aborted = new AbortController();
    aborted.abort(new Error('stop'));
    await expect(plane().begin({ disks: [{ target: 'vda' }], signal: aborted.signal })).rejects.toThrow(/aborted/);
    const controller = new AbortController();
    const point = await plane().begin({ disks: [{ target: 'vda' }], signal: controller.signal });
    controller.abort(new Error('user'));
    await point.abort();
    expect(await readdir(runDir)).toEqual([]);
    expect(await processesNaming(runDir)).toEqual([]);
  });

  test('unknown disks and incrementals of raw disks are refused before anything starts', async () => {
    await expect(plane().begin({ disks: [{ target: 'vdz' }] })).rejects.toThrow(/has no disk 'vdz'/);
    await expect(plane().begin({ disks: [{ target: 'vdb', incrementalFrom: 'cp1' }] })).rejects.toThrow(/only be backed up in full/);
  });
});

describe('image locking', () => {
  test('a qcow2 image held for writing by a running QEMU process gives ConflictError', async () => {
    const writer = await startHarnessDaemon({ disks: [{ path: vda, target: 'vda' }], dir });
    try {
      const error = await plane().begin({ disks: [{ target: 'vdb' }, { target: 'vda' }] }).then(() => undefined, (e: unknown) => e);
      expect(error).toBeInstanceOf(ConflictError);
      expect((error as Error).message).toContain(`disk image ${vda} (vda) of VM 'shutoff1' is in use by another process (is the VM running?)`);
      expect(await readdir(runDir)).toEqual([]);
      expect(await processesNaming(runDir)).toEqual([]);
    } finally {
      await writer.stop();
    }
  });

  test('a raw image in a running VM gives ConflictError (the write lock probe), though a read-only open would not conflict', async () => {
    const vm = await startQemuSystem({ disks: [{ path: vdb, target: 'vdb', format: 'raw' }], dir });
    try {
      const error = await plane().begin({ disks: [{ target: 'vdb' }] }).then(() => undefined, (e: unknown) => e);
      expect(error).toBeInstanceOf(ConflictError);
      expect((error as Error).message).toContain(`disk image ${vdb} (vdb) of VM 'shutoff1' is in use by another process (is the VM running?)`);
      // Why the probe is needed: QEMU lets a read-only raw node share the image with the running VM.
      await execa('qemu-io', ['-r', '-f', 'raw', '-c', 'read -P 0x66 1M 4K', vdb]);
      expect(await readdir(runDir)).toEqual([]);
    } finally {
      await vm.stop();
    }
  });
});

describe('image locking while exported', () => {
  test('a VM cannot start on an exported qcow2 image; on a raw image it can (the known limit of the raw probe)', async () => {
    const point = await plane().begin({ disks: [{ target: 'vda' }, { target: 'vdb' }] });
    try {
      await expect(startQemuSystem({ disks: [{ path: vda, target: 'vda' }], dir })).rejects.toThrow(/lock/);
      const vm = await startQemuSystem({ disks: [{ path: vdb, target: 'vdb', format: 'raw' }], dir });
      await vm.stop();
    } finally {
      await point.finish();
    }
  });
});

describe('backupVmToRepository over the offline plane', () => {
  test('a full backup and a forced full backup restore byte-identical, with no checkpoint recorded', async () => {
    const repoDir = join(dir, 'repo');
    const warnings: string[] = [];
    const first = await backupVmToRepository({ plane: plane(), repo: repoDir }, { onEvent: (e) => e.type === 'warning' && warnings.push(e.message) });
    expect(first).toMatchObject({ controlPlane: 'offline', level: 'full', checkpoint: null, incrementalFrom: null });
    expect(first.disks.map((d) => d.disk)).toEqual(['vda', 'vdb']);
    expect(warnings.join('\n')).toContain('is shut off');
    const second = await backupVmToRepository({ plane: plane(), repo: repoDir, level: 'full' });
    expect(second).toMatchObject({ level: 'full', checkpoint: null });
    const repo = await openRepository(repoDir);
    for (const d of second.disks) {
      const out = join(dir, `${d.disk}.restored`);
      const sink = await createSparseFileSink(out, d.size);
      await restoreBackup(repo, d.backupId, sink);
      await sink.close();
      const image = d.disk === 'vda' ? vda : vdb;
      expect(sha(await readFile(out))).toBe(await rawCopy(image, d.disk === 'vda' ? 'qcow2' : 'raw', join(dir, `${d.disk}.ref`)));
    }
    expect(await readdir(runDir)).toEqual([]);
  });
});
