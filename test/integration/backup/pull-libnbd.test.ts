// Pull backups read the way fleece reads them: through the libnbd binding (NbdSource, readExtents), against a real
// qemu-system-x86_64: the point-in-time view under guest overwrites, copy-before-write into the scratch (seen through
// qemu:allocation-depth), exact dirty extents of an incremental, and two disks read concurrently.
import { describe, expect, test } from '@jest/globals';
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { useQemuSystem } from '../../harness/jest-qemu.js';
import { createDisk } from '../../harness/qemu.js';
import { bitmapAdd } from '../../../src/qemu/actions.js';
import { queryDisks, type VmDisk } from '../../../src/qemu/block-graph.js';
import { startPullBackup, type PullExport } from '../../../src/backup/pull-backup.js';
import { BackupRegistry } from '../../../src/backup/backup-registry.js';
import { NbdSource } from '../../../src/nbd/nbd-source.js';
import { allocatedExtents, dataExtents, dirtyExtents } from '../../../src/nbd/context-extents.js';
import { readExtents } from '../../../src/nbd/read-extents.js';
import { mergeExtents } from '../../../src/nbd/extent-algebra.js';
import { leftovers, snapshotRaw } from './helpers.js';

const MiB = 1024 * 1024;
const KiB = 1024;

const fixture = useQemuSystem(async (dir) => {
  for (const name of ['a', 'b']) await createDisk(join(dir, `${name}.qcow2`), { size: 16 * MiB });
  return {
    disks: [
      { path: join(dir, 'a.qcow2'), target: 'vda' },
      { path: join(dir, 'b.qcow2'), target: 'vdb' },
    ],
  };
});

async function disk(target: string): Promise<VmDisk> {
  const found = (await queryDisks(fixture.qemu.client)).find((d) => d.target === target);
  if (!found) throw new Error(`no disk ${target}`);
  return found;
}

async function write(target: string, command: string): Promise<void> {
  await fixture.qemu.guestWrite(target, command);
  await fixture.qemu.guestWrite(target, 'flush');
}

/** Reads what a full backup reads (allocated data; zeros elsewhere) through libnbd into one buffer. */
async function readWholeDisk(exp: PullExport, connections = 2): Promise<{ image: Buffer; bytesRead: number }> {
  const source = await NbdSource.open({ socket: exp.socket as string, exportName: exp.exportName }, { metaContexts: ['base:allocation'], connections });
  try {
    const image = Buffer.alloc(exp.size);
    let bytesRead = 0;
    for await (const piece of readExtents(source, dataExtents(source), { concurrency: 4, maxRequest: 1 * MiB })) {
      piece.data.copy(image, piece.offset);
      bytesRead += piece.length;
    }
    return { image, bytesRead };
  } finally {
    await source.close();
  }
}

const sha = (data: Buffer) => createHash('sha256').update(data).digest('hex');

describe('pull backup read through libnbd', () => {
  test('full: reads the disk as it was at the start while the guest overwrites; old clusters land in the scratch', async () => {
    const { dir, qemu } = fixture;
    await write('vda', 'write -P 0x11 0 4M');
    await write('vda', 'write -P 0x12 8M 2M');
    await snapshotRaw(join(dir, 'a.qcow2'), join(dir, 'ref.raw'));
    const reference = await readFile(join(dir, 'ref.raw'));
    const vda = await disk('vda');
    const session = await startPullBackup({
      vm: 'vm1', qmp: qemu.client, registry: new BackupRegistry(), disks: [{ disk: vda }],
      checkpointActions: [bitmapAdd({ node: vda.formatNode, name: 'cp1', persistent: true })],
      scratchDir: join(dir, 'scratch'), runDir: join(dir, 'run'),
    });
    try {
      const [exp] = session.exports;
      // The guest overwrites data the reader has not read yet, and writes where there was nothing.
      await write('vda', 'write -P 0x99 1M 512k');
      await write('vda', 'write -P 0x98 12M 64k');

      // Copy-before-write put the old 512 KiB (and the zero cluster at 12M) into the scratch overlay: a second export
      // of the scratch node with allocation depth shows those ranges at depth 1 (the overlay itself).
      const nodes = await qemu.client.execute<{ 'node-name': string; drv: string }[]>('query-named-block-nodes', { flat: true });
      const scratchNode = nodes.find((n) => n['node-name'].startsWith('fl-') && n.drv === 'qcow2');
      expect(scratchNode).toBeDefined();
      await qemu.client.execute('block-export-add', {
        type: 'nbd', id: 'depth-probe', 'node-name': scratchNode!['node-name'], name: 'depth-probe', 'allocation-depth': true,
      });
      const probe = await NbdSource.open({ socket: exp.socket as string, exportName: 'depth-probe' }, { metaContexts: ['qemu:allocation-depth'] });
      const inOverlay: { offset: number; length: number; flags: number }[] = [];
      try {
        for await (const e of probe.extents('qemu:allocation-depth')) if (e.flags === 1) inOverlay.push({ offset: e.offset, length: e.length, flags: 0 });
      } finally {
        await probe.close();
        await qemu.client.execute('block-export-del', { id: 'depth-probe' });
      }
      const copied = mergeExtents(inOverlay);
      expect(copied).toContainEqual(expect.objectContaining({ offset: 1 * MiB, length: 512 * KiB }));
      expect(copied.every((e) => (e.offset >= 1 * MiB && e.offset + e.length <= 1.5 * MiB) || (e.offset >= 12 * MiB && e.offset + e.length <= 12 * MiB + 64 * KiB))).toBe(true);

      const { image, bytesRead } = await readWholeDisk(exp);
      expect(sha(image)).toBe(sha(reference));
      // Holes were not read: only the 6 MiB written before the backup (the zero cluster at 12M reads as zero).
      expect(bytesRead).toBe(6 * MiB);
    } finally {
      await session.finish();
    }
    expect(await leftovers(qemu.client)).toEqual({ fleeceNodes: [], jobs: [], exports: [], bitmaps: { vda: ['cp1'], vdb: [] } });
  });

  test('incremental: the dirty extents read through libnbd are exactly what the guest wrote since the checkpoint', async () => {
    const { dir, qemu } = fixture;
    const vda = await disk('vda');
    await qemu.client.execute('transaction', { actions: [{ type: 'block-dirty-bitmap-add', data: { node: vda.formatNode, name: 'cp1', persistent: true } }] });
    await write('vda', 'write -P 0x21 2M 128k');
    await write('vda', 'write -P 0x22 5M 64k');
    await write('vda', 'write -P 0x23 5275648 64k'); // overlaps and spills into the next 64 KiB cluster
    await write('vda', 'write -z 9M 1M');
    const session = await startPullBackup({
      vm: 'vm1', qmp: qemu.client, registry: new BackupRegistry(),
      disks: [{ disk: await disk('vda'), incrementalFrom: 'cp1' }],
      checkpointActions: [bitmapAdd({ node: vda.formatNode, name: 'cp2', persistent: true })],
      scratchDir: join(dir, 'scratch'), runDir: join(dir, 'run'),
    });
    try {
      const [exp] = session.exports;
      expect(exp.context).toBe('qemu:dirty-bitmap:backup-vda');
      await write('vda', 'write -P 0x77 0 1M'); // after the start: not part of this incremental
      const source = await NbdSource.open({ socket: exp.socket as string, exportName: exp.exportName }, { metaContexts: [exp.context] });
      try {
        const dirty: { offset: number; length: number; flags: number }[] = [];
        for await (const e of dirtyExtents(source, exp.context)) dirty.push({ offset: e.offset, length: e.length, flags: 0 });
        expect(mergeExtents(dirty).map(({ offset, length }) => ({ offset, length }))).toEqual([
          { offset: 2 * MiB, length: 128 * KiB },
          { offset: 5 * MiB, length: 128 * KiB },
          { offset: 9 * MiB, length: 1 * MiB },
        ]);
        // And the bytes read there are the ones written.
        const pieces = [];
        for await (const piece of readExtents(source, dirty)) pieces.push(piece);
        expect(pieces[0].data.equals(Buffer.alloc(128 * KiB, 0x21))).toBe(true);
        expect(pieces.find((p) => p.offset === 9 * MiB)?.data.equals(Buffer.alloc(1 * MiB))).toBe(true);
      } finally {
        await source.close();
      }
    } finally {
      await session.abort('test done');
    }
    expect(await leftovers(qemu.client)).toEqual({ fleeceNodes: [], jobs: [], exports: [], bitmaps: { vda: ['cp1'], vdb: [] } });
  });

  test('two disks in one pull backup, read concurrently through several connections each', async () => {
    const { dir, qemu } = fixture;
    await write('vda', 'write -P 0x31 0 3M');
    await write('vdb', 'write -P 0x41 4M 5M');
    await snapshotRaw(join(dir, 'a.qcow2'), join(dir, 'a.raw'));
    await snapshotRaw(join(dir, 'b.qcow2'), join(dir, 'b.raw'));
    const [vda, vdb] = [await disk('vda'), await disk('vdb')];
    const session = await startPullBackup({
      vm: 'vm1', qmp: qemu.client, registry: new BackupRegistry(), disks: [{ disk: vda }, { disk: vdb }],
      checkpointActions: [], scratchDir: join(dir, 'scratch'), runDir: join(dir, 'run'),
    });
    try {
      expect(session.exports.map((e) => e.exportName)).toEqual(['vda', 'vdb']);
      await write('vdb', 'write -P 0x42 4M 1M');
      const [a, b] = await Promise.all(session.exports.map((exp) => readWholeDisk(exp, 3)));
      expect(sha(a.image)).toBe(sha(await readFile(join(dir, 'a.raw'))));
      expect(sha(b.image)).toBe(sha(await readFile(join(dir, 'b.raw'))));
      expect([a.bytesRead, b.bytesRead]).toEqual([3 * MiB, 5 * MiB]);
    } finally {
      await session.finish();
    }
    expect((await leftovers(qemu.client)).exports).toEqual([]);
  });

  test('allocatedExtents of a full pull skips holes and reports nothing outside the written data', async () => {
    const { dir, qemu } = fixture;
    await write('vdb', 'write -P 0x51 1M 1M');
    const vdb = await disk('vdb');
    const session = await startPullBackup({
      vm: 'vm1', qmp: qemu.client, registry: new BackupRegistry(), disks: [{ disk: vdb }],
      checkpointActions: [], scratchDir: join(dir, 'scratch'), runDir: join(dir, 'run'),
    });
    try {
      const [exp] = session.exports;
      const source = await NbdSource.open({ socket: exp.socket as string, exportName: exp.exportName }, { metaContexts: ['base:allocation'] });
      try {
        const extents = [];
        for await (const e of allocatedExtents(source)) extents.push({ offset: e.offset, length: e.length, zero: e.zero });
        expect(extents.filter((e) => !e.zero)).toEqual([{ offset: 1 * MiB, length: 1 * MiB, zero: false }]);
      } finally {
        await source.close();
      }
    } finally {
      await session.abort('test done');
    }
  });
});
