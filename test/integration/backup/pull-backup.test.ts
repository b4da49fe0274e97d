// Pull backups (fleecing) against a real qemu-system-x86_64, read with the libnbd CLIs: point in time under guest
// overwrites, incremental bitmaps exported exactly, two disks, and nothing left behind after finish, abort or a lost
// QMP connection.
import { describe, expect, test } from '@jest/globals';
import { execa } from 'execa';
import { existsSync } from 'node:fs';
import { mkdir, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { useQemuSystem } from '../../harness/jest-qemu.js';
import { createDisk } from '../../harness/qemu.js';
import { QmpClient } from '../../../src/qmp/index.js';
import { bitmapAdd } from '../../../src/qemu/actions.js';
import { queryDisks, type VmDisk } from '../../../src/qemu/block-graph.js';
import type { QmpExecutor } from '../../../src/qmp/index.js';
import { startPullBackup } from '../../../src/backup/pull-backup.js';
import { startPushBackup } from '../../../src/backup/push-backup.js';
import { BackupRegistry } from '../../../src/backup/backup-registry.js';
import { leftovers, sha256File, snapshotRaw } from './helpers.js';

const MiB = 1024 * 1024;
const KiB = 1024;

const fixture = useQemuSystem(async (dir) => {
  for (const name of ['a', 'b']) await createDisk(join(dir, `${name}.qcow2`), { size: 8 * MiB });
  return {
    extraQmpSockets: 1,
    disks: [
      { path: join(dir, 'a.qcow2'), target: 'vda' },
      { path: join(dir, 'b.qcow2'), target: 'vdb' },
    ],
  };
});

async function disk(target: string, qmp: QmpExecutor = fixture.qemu.client): Promise<VmDisk> {
  const found = (await queryDisks(qmp)).find((d) => d.target === target);
  if (!found) throw new Error(`no disk ${target}`);
  return found;
}

async function write(target: string, command: string): Promise<void> {
  await fixture.qemu.guestWrite(target, command);
  await fixture.qemu.guestWrite(target, 'flush');
}

/** Reads a whole export into a raw file with qemu-img (libnbd-independent). */
async function readExport(uri: string, out: string): Promise<void> {
  await execa('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', uri, out]);
}

/** The extents of `context` whose type is non-zero (dirty for a bitmap), from nbdinfo --map. */
async function dirtyRanges(uri: string, context: string): Promise<{ start: number; length: number }[]> {
  const { stdout } = await execa('nbdinfo', [`--map=${context}`, '--json', uri]);
  const map = JSON.parse(stdout) as { offset: number; length: number; type: number }[];
  return map.filter((e) => (e.type & 1) !== 0).map((e) => ({ start: e.offset, length: e.length }));
}

async function nbdServerRunning(qmp: QmpExecutor): Promise<boolean> {
  // nbd-server-stop on a stopped server fails; when it succeeds the server was running (and is now stopped).
  return qmp.execute('nbd-server-stop').then(
    () => true,
    () => false,
  );
}

describe('pull backup', () => {
  test('full: the export shows the disk as it was when the backup began, whatever the guest writes after', async () => {
    const { dir, qemu } = fixture;
    await write('vda', 'write -P 0x11 0 4M');
    await snapshotRaw(join(dir, 'a.qcow2'), join(dir, 'ref.raw'));
    const vda = await disk('vda');
    const registry = new BackupRegistry();
    const session = await startPullBackup({
      vm: 'vm1',
      qmp: qemu.client,
      registry,
      disks: [{ disk: vda }],
      checkpointActions: [bitmapAdd({ node: vda.formatNode, name: 'cp1', persistent: true })],
      scratchDir: join(dir, 'scratch'),
      runDir: join(dir, 'run'),
    });
    expect(session.exports).toEqual([
      expect.objectContaining({ disk: 'vda', exportName: 'vda', context: 'base:allocation', size: 8 * MiB }),
    ]);
    const [exp] = session.exports;
    const scratch = join(dir, 'scratch', (await readdir(join(dir, 'scratch')))[0]);
    const before = (await session.scratchUsage()).vda;

    // The guest overwrites a range (and writes where nothing was) after the backup began.
    await write('vda', 'write -P 0x99 1M 256k');
    await write('vda', 'write -P 0x98 6M 64k');
    // The old data of the overwritten 256 KiB was copied into the scratch (the never-written range needs only a
    // zero cluster; the scratch's qcow2 metadata is still cached in QEMU, so the host file size is what we can see).
    expect((await session.scratchUsage()).vda - before).toBeGreaterThanOrEqual(256 * KiB);
    await readExport(exp.uri, join(dir, 'export.raw'));
    await snapshotRaw(join(dir, 'a.qcow2'), join(dir, 'now.raw'));
    expect(await sha256File(join(dir, 'export.raw'))).toBe(await sha256File(join(dir, 'ref.raw')));
    expect(await sha256File(join(dir, 'now.raw'))).not.toBe(await sha256File(join(dir, 'ref.raw')));

    // One backup per VM.
    await expect(
      startPushBackup({ vm: 'vm1', qmp: qemu.client, registry, disks: [{ disk: vda, push: { path: join(dir, 'x.qcow2'), format: 'qcow2', create: true } }] }),
    ).rejects.toThrow(/another backup job is already running for VM 'vm1'/);

    const info = await session.jobInfo();
    expect(info).toMatchObject({ mode: 'pull', phase: 'ready' });
    expect(info.scratchBytes).toBeGreaterThan(0);

    const result = await session.finish();
    expect(result.checkpointBitmaps).toEqual([{ node: vda.formatNode, name: 'cp1' }]);
    const left = await leftovers(qemu.client);
    expect(left).toEqual({ fleeceNodes: [], jobs: [], exports: [], bitmaps: { vda: ['cp1'], vdb: [] } });
    expect(existsSync(scratch)).toBe(false);
    expect(existsSync(exp.socket as string)).toBe(false);
    expect(await nbdServerRunning(qemu.client)).toBe(false);
    expect(registry.isBusy('vm1')).toBe(false);
  });

  test('incremental since a checkpoint exports exactly the written ranges; abort drops the new checkpoint', async () => {
    const { dir, qemu } = fixture;
    await write('vda', 'write -P 0x21 0 8M');
    let vda = await disk('vda');
    const first = await startPullBackup({
      vm: 'vm1',
      qmp: qemu.client,
      disks: [{ disk: vda }],
      checkpointActions: [bitmapAdd({ node: vda.formatNode, name: 'cp1', persistent: true })],
      scratchDir: join(dir, 'scratch'),
      runDir: join(dir, 'run'),
    });
    await first.finish();

    await write('vda', 'write -P 0x22 2M 192k');
    await write('vda', 'write -P 0x23 6M 64k');
    await snapshotRaw(join(dir, 'a.qcow2'), join(dir, 'ref.raw'));
    vda = await disk('vda');
    const session = await startPullBackup({
      vm: 'vm1',
      qmp: qemu.client,
      disks: [{ disk: vda, incrementalFrom: 'cp1' }],
      checkpointActions: [bitmapAdd({ node: vda.formatNode, name: 'cp2', persistent: true })],
      scratchDir: join(dir, 'scratch'),
      server: { type: 'unix', path: join(dir, 'nbd.sock') },
    });
    const [exp] = session.exports;
    expect(exp).toMatchObject({ bitmap: 'backup-vda', context: 'qemu:dirty-bitmap:backup-vda', incrementalFrom: 'cp1' });
    // Guest writes during the export do not show up in the exported bitmap nor in the data.
    await write('vda', 'write -P 0x24 4M 64k');
    expect(await dirtyRanges(exp.uri, exp.context)).toEqual([
      { start: 2 * MiB, length: 192 * KiB },
      { start: 6 * MiB, length: 64 * KiB },
    ]);
    await readExport(exp.uri, join(dir, 'export.raw'));
    expect(await sha256File(join(dir, 'export.raw'))).toBe(await sha256File(join(dir, 'ref.raw')));
    const during = await leftovers(qemu.client);
    expect(during.bitmaps.vda).toEqual(['cp1', 'cp2']);

    await session.abort('test');
    const left = await leftovers(qemu.client);
    expect(left).toEqual({ fleeceNodes: [], jobs: [], exports: [], bitmaps: { vda: ['cp1'], vdb: [] } });
    expect(await readdir(join(dir, 'scratch'))).toEqual([]);
    expect(await nbdServerRunning(qemu.client)).toBe(false);
  });

  test('two disks: one incremental, one full, each export reads as its disk did', async () => {
    const { dir, qemu } = fixture;
    await write('vda', 'write -P 0x31 0 2M');
    await write('vdb', 'write -P 0x41 3M 2M');
    let [vda, vdb] = [await disk('vda'), await disk('vdb')];
    const base = await startPullBackup({
      vm: 'vm1',
      qmp: qemu.client,
      disks: [{ disk: vda }],
      checkpointActions: [bitmapAdd({ node: vda.formatNode, name: 'c0', persistent: true })],
      scratchDir: join(dir, 'scratch'),
      runDir: join(dir, 'run'),
    });
    await base.finish();
    await write('vda', 'write -P 0x32 512k 64k');
    await snapshotRaw(join(dir, 'a.qcow2'), join(dir, 'ref-a.raw'));
    await snapshotRaw(join(dir, 'b.qcow2'), join(dir, 'ref-b.raw'));
    [vda, vdb] = [await disk('vda'), await disk('vdb')];
    const session = await startPullBackup({
      vm: 'vm1',
      qmp: qemu.client,
      disks: [{ disk: vda, incrementalFrom: 'c0' }, { disk: vdb, exportName: 'second' }],
      checkpointActions: [
        bitmapAdd({ node: vda.formatNode, name: 'c1', persistent: true }),
        bitmapAdd({ node: vdb.formatNode, name: 'c1', persistent: true }),
      ],
      scratchDir: join(dir, 'scratch'),
      runDir: join(dir, 'run'),
    });
    await write('vda', 'write -P 0x33 0 8M');
    await write('vdb', 'write -P 0x43 0 8M');
    const [a, b] = session.exports;
    expect(b).toMatchObject({ disk: 'vdb', exportName: 'second', context: 'base:allocation' });
    expect(await dirtyRanges(a.uri, a.context)).toEqual([{ start: 512 * KiB, length: 64 * KiB }]);
    await readExport(a.uri, join(dir, 'exp-a.raw'));
    await readExport(b.uri, join(dir, 'exp-b.raw'));
    expect(await sha256File(join(dir, 'exp-a.raw'))).toBe(await sha256File(join(dir, 'ref-a.raw')));
    expect(await sha256File(join(dir, 'exp-b.raw'))).toBe(await sha256File(join(dir, 'ref-b.raw')));
    const usage = await session.scratchUsage();
    // Every allocated cluster of vda (2 MiB + 64 KiB) was overwritten, so its old data sits in the scratch now.
    expect(usage.vda).toBeGreaterThanOrEqual(2 * MiB + 64 * KiB);
    await session.finish();
    const left = await leftovers(qemu.client);
    expect(left).toEqual({ fleeceNodes: [], jobs: [], exports: [], bitmaps: { vda: ['c0', 'c1'], vdb: ['c1'] } });
    expect(await readdir(join(dir, 'scratch'))).toEqual([]);
  });

  test('when the QMP connection dies mid-backup, the scratch files are still removed', async () => {
    const { dir, qemu } = fixture;
    const own = await QmpClient.connect({ path: qemu.extraQmpPaths[0] }, { name: 'backup-owner' });
    await mkdir(join(dir, 'scratch'));
    try {
      const session = await startPullBackup({
        vm: 'vm1',
        qmp: own,
        disks: [{ disk: await disk('vda', own) }, { disk: await disk('vdb', own) }],
        scratchDir: join(dir, 'scratch'),
        runDir: join(dir, 'run'),
      });
      expect((await readdir(join(dir, 'scratch'))).length).toBe(2);
      await own.close();
      await session.abort();
      expect(['failed', 'cancelled']).toContain(session.phase());
      expect(await readdir(join(dir, 'scratch'))).toEqual([]);
    } finally {
      await own.close();
    }
  });
});
