// Push backups against a real qemu-system-x86_64: full, incremental, differential chains compared byte for byte with
// the disk as it was, several disks in one transaction, abort, failing targets, and the one-job-per-VM rule.
import { describe, expect, test } from '@jest/globals';
import { existsSync } from 'node:fs';
import { mkdir, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { useQemuSystem } from '../../harness/jest-qemu.js';
import { createDisk } from '../../harness/qemu.js';
import { bitmapAdd } from '../../../src/qemu/actions.js';
import { queryDisks, type VmDisk } from '../../../src/qemu/block-graph.js';
import { runPushBackup, startPushBackup, type PushDiskRequest } from '../../../src/backup/push-backup.js';
import { BackupRegistry } from '../../../src/backup/backup-registry.js';
import { AbortedError, ConflictError } from '../../../src/util/errors.js';
import { leftovers, mountTmpfs, ownDataRanges, sameContent, snapshotRaw, unmount } from './helpers.js';

const MiB = 1024 * 1024;

const fixture = useQemuSystem(async (dir) => {
  for (const name of ['a', 'b', 'c']) await createDisk(join(dir, `${name}.qcow2`), { size: 16 * MiB });
  return {
    disks: [
      { path: join(dir, 'a.qcow2'), target: 'vda' },
      { path: join(dir, 'b.qcow2'), target: 'vdb' },
      { path: join(dir, 'c.qcow2'), target: 'vdc' },
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

function cp(d: VmDisk, name: string) {
  return bitmapAdd({ node: d.formatNode, name, persistent: true });
}

/** Runs `body` with a tmpfs mounted on `dir`, always unmounting (before the fixture removes the directory). */
async function withTmpfs(dir: string, options: string, body: () => Promise<void>): Promise<void> {
  await mkdir(dir);
  if (!(await mountTmpfs(dir, options))) {
    console.warn('cannot mount tmpfs here: skipped');
    return;
  }
  try {
    await body();
  } finally {
    await unmount(dir);
  }
}

describe('push backup', () => {
  test('full, incremental, differential: each chain reads as the disk did at its backup', async () => {
    const { dir, qemu } = fixture;
    const out = join(dir, 'out');
    await mkdir(out);
    await write('vda', 'write -P 0x11 0 3M');
    await snapshotRaw(join(dir, 'a.qcow2'), join(out, 'ref1.raw'));

    let vda = await disk('vda');
    const full = await runPushBackup({
      vm: 'vm1',
      qmp: qemu.client,
      disks: [{ disk: vda, push: { path: join(out, 'full.qcow2'), format: 'qcow2', create: true } }],
      checkpointActions: [cp(vda, 'cp1')],
    });
    expect(full.disks[0]).toMatchObject({ disk: 'vda', sync: 'full' });
    expect(await sameContent(join(out, 'ref1.raw'), join(out, 'full.qcow2'))).toMatchObject({ same: true });

    await write('vda', 'write -P 0x22 1M 128k');
    await snapshotRaw(join(dir, 'a.qcow2'), join(out, 'ref2.raw'));
    vda = await disk('vda');
    const inc = await runPushBackup({
      vm: 'vm1',
      qmp: qemu.client,
      disks: [
        {
          disk: vda,
          incrementalFrom: 'cp1',
          push: { path: join(out, 'inc1.qcow2'), format: 'qcow2', create: true },
          rebaseOnto: join(out, 'full.qcow2'),
        },
      ],
      checkpointActions: [cp(vda, 'cp2')],
    });
    expect(inc.disks[0]).toMatchObject({ sync: 'incremental', incrementalFrom: 'cp1', bytes: 128 * 1024 });
    expect(await ownDataRanges(join(out, 'inc1.qcow2'))).toEqual([{ start: MiB, length: 128 * 1024 }]);
    expect((await sameContent(join(out, 'ref2.raw'), join(out, 'inc1.qcow2'))).same).toBe(true);
    // and the earlier backup did not match the later disk: the compare can fail
    expect((await sameContent(join(out, 'ref2.raw'), join(out, 'full.qcow2'))).same).toBe(false);

    await write('vda', 'write -P 0x33 8M 64k');
    await snapshotRaw(join(dir, 'a.qcow2'), join(out, 'ref3.raw'));
    vda = await disk('vda');
    await runPushBackup({
      vm: 'vm1',
      qmp: qemu.client,
      disks: [
        {
          disk: vda,
          incrementalFrom: 'cp1',
          push: { path: join(out, 'diff.qcow2'), format: 'qcow2', create: true },
          rebaseOnto: join(out, 'full.qcow2'),
        },
      ],
      checkpointActions: [cp(vda, 'cp3')],
    });
    expect(await ownDataRanges(join(out, 'diff.qcow2'))).toEqual([
      { start: MiB, length: 128 * 1024 },
      { start: 8 * MiB, length: 64 * 1024 },
    ]);
    expect((await sameContent(join(out, 'ref3.raw'), join(out, 'diff.qcow2'))).same).toBe(true);

    const left = await leftovers(qemu.client);
    expect(left).toMatchObject({ fleeceNodes: [], jobs: [], exports: [] });
    expect(left.bitmaps.vda).toEqual(['cp1', 'cp2', 'cp3']);
  });

  test('two disks in one transaction, a third excluded', async () => {
    const { dir, qemu } = fixture;
    await write('vda', 'write -P 0x44 0 1M');
    await write('vdb', 'write -P 0x55 2M 1M');
    await write('vdc', 'write -P 0x66 0 1M');
    await snapshotRaw(join(dir, 'a.qcow2'), join(dir, 'ref-a.raw'));
    await snapshotRaw(join(dir, 'b.qcow2'), join(dir, 'ref-b.raw'));
    const [vda, vdb] = [await disk('vda'), await disk('vdb')];
    const requests: PushDiskRequest[] = [
      { disk: vda, push: { path: join(dir, 'full-a.qcow2'), format: 'qcow2', create: true } },
      { disk: vdb, push: { path: join(dir, 'full-b.raw'), format: 'raw', create: true } },
    ];
    const result = await runPushBackup({ vm: 'vm1', qmp: qemu.client, disks: requests, checkpointActions: [cp(vda, 'c1'), cp(vdb, 'c1')] });
    expect(result.disks.map((d) => d.disk)).toEqual(['vda', 'vdb']);
    expect((await sameContent(join(dir, 'ref-a.raw'), join(dir, 'full-a.qcow2'))).same).toBe(true);
    expect((await sameContent(join(dir, 'ref-b.raw'), join(dir, 'full-b.raw'), 'raw')).same).toBe(true);
    const files = await readdir(dir);
    expect(files.filter((f) => f.startsWith('full-'))).toEqual(['full-a.qcow2', 'full-b.raw']);
    const left = await leftovers(qemu.client);
    expect(left.bitmaps).toEqual({ vda: ['c1'], vdb: ['c1'], vdc: [] });
    expect(left.fleeceNodes).toEqual([]);
  });

  test('abort of a speed-limited backup leaves no job, bitmap, node, target or checkpoint', async () => {
    const { dir, qemu } = fixture;
    await write('vda', 'write -P 0x77 0 16M');
    const vda = await disk('vda');
    await write('vda', 'write -P 0x78 0 64k');
    await runPushBackup({
      vm: 'vm1',
      qmp: qemu.client,
      disks: [{ disk: vda, push: { path: join(dir, 'base.qcow2'), format: 'qcow2', create: true } }],
      checkpointActions: [cp(vda, 'base')],
    });
    await write('vda', 'write -P 0x79 0 8M');
    const target = join(dir, 'slow.qcow2');
    const registry = new BackupRegistry();
    const job = await startPushBackup({
      vm: 'vm1',
      qmp: qemu.client,
      registry,
      speed: 1 * MiB,
      disks: [{ disk: await disk('vda'), incrementalFrom: 'base', push: { path: target, format: 'qcow2', create: true } }],
      checkpointActions: [cp(vda, 'never')],
    });
    const during = await leftovers(qemu.client);
    expect(during.jobs.length).toBe(1);
    expect(during.bitmaps.vda).toEqual(['backup-vda', 'base', 'never']);
    const info = await registry.jobInfo('vm1');
    expect(info).toMatchObject({ mode: 'push', phase: 'running' });
    expect(info.total).toBe(8 * MiB);
    expect(info.remaining).toBeGreaterThan(0);
    await registry.abort('vm1', 'test abort');
    await expect(job.done).rejects.toBeInstanceOf(AbortedError);
    expect(existsSync(target)).toBe(false);
    const left = await leftovers(qemu.client);
    expect(left).toEqual({ fleeceNodes: [], jobs: [], exports: [], bitmaps: { vda: ['base'], vdb: [], vdc: [] } });
    expect(registry.isBusy('vm1')).toBe(false);
  });

  test('an AbortSignal aborts too', async () => {
    const { dir, qemu } = fixture;
    await write('vda', 'write -P 0x71 0 8M');
    const controller = new AbortController();
    const job = await startPushBackup({
      vm: 'vm1',
      qmp: qemu.client,
      speed: 512 * 1024,
      signal: controller.signal,
      disks: [{ disk: await disk('vda'), push: { path: join(dir, 'sig.qcow2'), format: 'qcow2', create: true } }],
    });
    controller.abort(new Error('user pressed ctrl-c'));
    await expect(job.done).rejects.toThrow(/aborted: user pressed ctrl-c/);
    expect(existsSync(join(dir, 'sig.qcow2'))).toBe(false);
    expect((await leftovers(qemu.client)).jobs).toEqual([]);
  });

  test('a read-only target directory fails early and clearly, touching nothing', async () => {
    const { dir, qemu } = fixture;
    const ro = join(dir, 'ro');
    await withTmpfs(ro, 'ro,size=1m', async () => {
    const vda = await disk('vda');
    await expect(
      runPushBackup({
        vm: 'vm1',
        qmp: qemu.client,
        disks: [{ disk: vda, push: { path: join(ro, 't.qcow2'), format: 'qcow2', create: true } }],
        checkpointActions: [cp(vda, 'x')],
      }),
    ).rejects.toThrow(/cannot create the target image .*t\.qcow2 for disk 'vda'.*read-only file system.*writable/i);
    const left = await leftovers(qemu.client);
    expect(left).toEqual({ fleeceNodes: [], jobs: [], exports: [], bitmaps: { vda: [], vdb: [], vdc: [] } });
    });
  });

  test('a target that fills up mid-copy fails the job and is rolled back', async () => {
    const { dir, qemu } = fixture;
    const small = join(dir, 'small');
    await withTmpfs(small, 'size=1m', async () => {
    await write('vda', 'write -P 0x5a 0 8M');
    await write('vdb', 'write -P 0x5b 0 1M');
    const [vda, vdb] = [await disk('vda'), await disk('vdb')];
    const error = await runPushBackup({
      vm: 'vm1',
      qmp: qemu.client,
      speed: 4 * MiB,
      disks: [
        { disk: vda, push: { path: join(small, 'a.qcow2'), format: 'qcow2', create: true } },
        { disk: vdb, push: { path: join(dir, 'b-ok.qcow2'), format: 'qcow2', create: true } },
      ],
      checkpointActions: [cp(vda, 'y'), cp(vdb, 'y')],
    }).catch((e: unknown) => e);
    expect(error).toMatchObject({ code: 'QEMU_JOB', disk: 'vda' });
    expect(String((error as Error).message)).toMatch(/backup job of disk 'vda' failed: No space left/);
    expect(existsSync(join(small, 'a.qcow2'))).toBe(false);
    expect(existsSync(join(dir, 'b-ok.qcow2'))).toBe(false);
    const left = await leftovers(qemu.client);
    expect(left).toEqual({ fleeceNodes: [], jobs: [], exports: [], bitmaps: { vda: [], vdb: [], vdc: [] } });
    });
  });

  test('the checkpoint is recorded only after success; a failing store removes its bitmaps again', async () => {
    const { dir, qemu } = fixture;
    await write('vda', 'write -P 0x13 0 1M');
    const vda = await disk('vda');
    const recorded: string[] = [];
    await runPushBackup({
      vm: 'vm1',
      qmp: qemu.client,
      disks: [{ disk: vda, push: { path: join(dir, 'r1.qcow2'), format: 'qcow2', create: true } }],
      checkpointActions: [cp(vda, 'ok')],
      recordCheckpoint: async () => {
        recorded.push((await leftovers(qemu.client)).jobs.length === 0 ? 'after-jobs' : 'too-early');
      },
    });
    expect(recorded).toEqual(['after-jobs']);
    await expect(
      runPushBackup({
        vm: 'vm1',
        qmp: qemu.client,
        disks: [{ disk: vda, push: { path: join(dir, 'r2.qcow2'), format: 'qcow2', create: true } }],
        checkpointActions: [cp(vda, 'bad')],
        recordCheckpoint: async () => {
          throw new Error('disk full while saving checkpoint XML');
        },
      }),
    ).rejects.toThrow(/saving checkpoint XML/);
    expect((await leftovers(qemu.client)).bitmaps.vda).toEqual(['ok']);
  });

  test('a second backup of the same VM is refused while one runs', async () => {
    const { dir, qemu } = fixture;
    await write('vda', 'write -P 0x61 0 8M');
    const registry = new BackupRegistry();
    const vda = await disk('vda');
    const first = await startPushBackup({
      vm: 'vm1',
      qmp: qemu.client,
      registry,
      speed: 512 * 1024,
      disks: [{ disk: vda, push: { path: join(dir, 'first.qcow2'), format: 'qcow2', create: true } }],
    });
    const second = { vm: 'vm1', qmp: qemu.client, disks: [{ disk: vda, push: { path: join(dir, 'second.qcow2'), format: 'qcow2' as const, create: true } }] };
    await expect(startPushBackup({ ...second, registry })).rejects.toThrow(/another backup job is already running for VM 'vm1'/);
    // without the registry (another fleece process), QEMU's job list refuses it as well
    await expect(startPushBackup(second)).rejects.toBeInstanceOf(ConflictError);
    expect(existsSync(join(dir, 'second.qcow2'))).toBe(false);
    await first.abort();
    await expect(first.done).rejects.toBeInstanceOf(AbortedError);
  });
});
