// `fleece backup` as a user runs it (node dist/src/cli/main.js) against real QEMU and a real repository: full then
// auto-incrementals restored byte for byte, a two-disk VM, Ctrl-C mid-backup, a deleted checkpoint, bad input.
import { describe, expect, test } from '@jest/globals';
import { mkdir, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { useQemuSystem } from '../harness/jest-qemu.js';
import { createDisk } from '../harness/qemu.js';
import { leftovers, snapshotRaw, sha256File } from '../integration/backup/helpers.js';
import { CheckpointManager } from '../../src/checkpoint/manager.js';
import { CheckpointStore } from '../../src/checkpoint/store.js';
import { openRepository } from '../../src/repository/index.js';
import { runCli, runCliJson, startCli, type BackupJson } from './helpers.js';

const MiB = 1024 * 1024;
const KiB = 1024;

describe('fleece backup: one disk', () => {
  const fixture = useQemuSystem(async (dir) => {
    await createDisk(join(dir, 'a.qcow2'), { size: 32 * MiB });
    return { disks: [{ path: join(dir, 'a.qcow2'), target: 'vda' }], extraQmpSockets: 1 };
  });
  const write = async (command: string) => {
    await fixture.qemu.guestWrite('vda', command);
    await fixture.qemu.guestWrite('vda', 'flush');
  };
  const backup = (extra: string[] = []) =>
    runCliJson<BackupJson>(fixture.dir, ['backup', 'vm1', '--qmp', fixture.qemu.extraQmpPaths[0]!, '--repo', join(fixture.dir, 'repo'), ...extra]);

  test('full, then two auto-incrementals: each point restores byte-identical and incrementals store what changed', async () => {
    const { dir } = fixture;
    const points: { json: BackupJson; sha: string }[] = [];
    await write('write -P 0x11 0 4M');
    await write('write -P 0x12 20M 1M');
    await snapshotRaw(join(dir, 'a.qcow2'), join(dir, 'p0.raw'));
    points.push({ json: await backup(), sha: await sha256File(join(dir, 'p0.raw')) });
    expect(points[0]!.json.level).toBe('full');
    expect(points[0]!.json.reason).toMatch(/no backup of VM 'vm1'/);
    expect(points[0]!.json.disks[0]!.bytesRead).toBe(5 * MiB);

    await write('write -P 0x21 1M 64k');
    await write('write -P 0x22 30M 128k');
    await snapshotRaw(join(dir, 'a.qcow2'), join(dir, 'p1.raw'));
    points.push({ json: await backup(), sha: await sha256File(join(dir, 'p1.raw')) });

    await write('write -P 0x31 2M 64k');
    await snapshotRaw(join(dir, 'a.qcow2'), join(dir, 'p2.raw'));
    points.push({ json: await backup(), sha: await sha256File(join(dir, 'p2.raw')) });

    const [full, inc1, inc2] = points.map((p) => p.json) as [BackupJson, BackupJson, BackupJson];
    expect(inc1.level).toBe('incremental');
    expect(inc1.incrementalFrom).toBe(full.checkpoint);
    expect(inc1.reason).toContain(`checkpoint ${full.checkpoint}`);
    expect(inc1.disks[0]!.parentId).toBe(full.disks[0]!.backupId);
    expect(inc1.disks[0]!.bytesRead).toBe(192 * KiB); // exactly the dirty clusters (64 KiB granularity)
    expect(inc2.incrementalFrom).toBe(inc1.checkpoint);
    expect(inc2.disks[0]!.parentId).toBe(inc1.disks[0]!.backupId);
    expect(inc2.disks[0]!.bytesRead).toBe(64 * KiB);
    expect(inc2.groupId).not.toBe(inc1.groupId);

    for (const [i, point] of points.entries()) {
      const out = join(dir, `restored-${i}.raw`);
      const restored = await runCli(dir, ['restore', '--repo', join(dir, 'repo'), '--backup', point.json.disks[0]!.backupId, '--out', out]);
      expect(restored.exitCode).toBe(0);
      expect(await sha256File(out)).toBe(point.sha);
      const verified = await runCli(dir, ['verify', '--repo', join(dir, 'repo'), '--backup', point.json.disks[0]!.backupId]);
      expect(verified.exitCode).toBe(0);
      expect(verified.stdout).toContain('OK');
    }
    // The checkpoint chain as recorded: three checkpoints, each the parent of the next.
    const cps = await new CheckpointStore(join(dir, 'state')).list('vm1');
    expect(cps.map((c) => c.name)).toEqual([full.checkpoint, inc1.checkpoint, inc2.checkpoint]);
  });

  test('SIGINT mid-backup: exit 130, nothing left in QEMU or the repository, the next backup continues the chain', async () => {
    const { dir, qemu } = fixture;
    await write('write -P 0x41 0 1M');
    const full = await backup();
    const before = await leftovers(qemu.client);
    await write('write -P 0x42 4M 16M');
    const child = startCli(dir, ['backup', 'vm1', '--qmp', qemu.extraQmpPaths[0]!, '--repo', join(dir, 'repo'), '--bandwidth', '2M']);
    let stderr = '';
    await new Promise<void>((resolve, reject) => {
      child.stderr!.on('data', (chunk: Buffer) => {
        stderr += chunk.toString();
        if (/to process/.test(stderr)) resolve();
      });
      void child.then(() => reject(new Error(`fleece ended before showing progress: ${stderr}`)));
    });
    await new Promise((r) => setTimeout(r, 1000));
    child.kill('SIGINT');
    const result = await child;
    expect(result.exitCode).toBe(130);
    expect(String(result.stderr)).toContain("fleece: the backup of VM 'vm1' was interrupted; nothing of it was kept");
    expect(String(result.stderr)).not.toMatch(/\n\s+at /);

    const after = await leftovers(qemu.client);
    expect(after).toEqual(before); // same bitmaps (only real checkpoints), no jobs, exports or fleece nodes
    expect(after.bitmaps.vda).toEqual([full.checkpoint]);
    expect(await readdir(join(dir, 'state', 'scratch'))).toEqual([]);
    expect((await readdir(join(dir, 'run'))).filter((f) => f.endsWith('.sock'))).toEqual([]);
    const listed = await runCliJson<{ backupId: string }[]>(dir, ['list', '--repo', join(dir, 'repo')]);
    expect(listed.map((r) => r.backupId)).toEqual([full.disks[0]!.backupId]);

    const next = await backup();
    expect(next.level).toBe('incremental');
    expect(next.incrementalFrom).toBe(full.checkpoint);
    expect(next.disks[0]!.bytesRead).toBe(16 * MiB);
    await snapshotRaw(join(dir, 'a.qcow2'), join(dir, 'now.raw'));
    const out = join(dir, 'next.raw');
    expect((await runCli(dir, ['restore', '--repo', join(dir, 'repo'), '--backup', next.disks[0]!.backupId, '--out', out])).exitCode).toBe(0);
    expect(await sha256File(out)).toBe(await sha256File(join(dir, 'now.raw')));
  });

  test('a deleted checkpoint makes the next auto backup full and says why; --incremental then fails with the reason', async () => {
    const { dir, qemu } = fixture;
    await write('write -P 0x51 0 1M');
    const first = await backup();
    const manager = new CheckpointManager({ qmp: qemu.client, store: new CheckpointStore(join(dir, 'state')), vm: 'vm1' });
    await manager.delete(first.checkpoint!);

    const forced = await runCli(dir, ['backup', 'vm1', '--qmp', qemu.extraQmpPaths[0]!, '--repo', join(dir, 'repo'), '--incremental']);
    expect(forced.exitCode).toBe(1);
    expect(forced.stderr).toContain(`cannot take an incremental backup of VM 'vm1': checkpoint ${first.checkpoint}`);
    expect(forced.stderr).toContain('no longer exists');
    expect(forced.stderr).not.toMatch(/\n\s+at /);

    const second = await backup();
    expect(second.level).toBe('full');
    expect(second.reason).toContain(`checkpoint ${first.checkpoint}`);
    expect(second.reason).toContain('no longer exists');
    expect(second.disks[0]!.parentId).toBeNull();
    // A checkpoint whose bitmap vanished (deleted behind fleece's back) is invalid: full again, with the state named.
    await qemu.client.execute('block-dirty-bitmap-remove', { node: 'disk-vda', name: second.checkpoint });
    const third = await backup();
    expect(third.level).toBe('full');
    expect(third.reason).toContain(`checkpoint ${second.checkpoint} is not valid (disk vda: bitmap ${second.checkpoint} missing)`);
  });

  test('bad input: unknown VM, missing --repo, unknown backup id, unknown disk, conflicting levels', async () => {
    const { dir, qemu } = fixture;
    const noStack = (r: { stderr: string }) => expect(r.stderr).not.toMatch(/\n\s+at /);
    const unknownVm = await runCli(dir, ['backup', 'ghost', '--repo', join(dir, 'repo')]);
    expect(unknownVm.exitCode).toBe(1);
    expect(unknownVm.stderr).toMatch(/^fleece: VM 'ghost' is not registered; register it with `fleece vm add ghost --qmp/);
    noStack(unknownVm);

    const noRepo = await runCli(dir, ['backup', 'vm1', '--qmp', qemu.extraQmpPaths[0]!]);
    expect(noRepo.exitCode).toBe(2);
    expect(noRepo.stderr).toContain("required option '--repo <dir>' not specified");

    await mkdir(join(dir, 'repo'), { recursive: true });
    const unknownId = await runCli(dir, ['restore', '--repo', join(dir, 'repo'), '--backup', '00000000-0000-4000-8000-000000000000', '--out', join(dir, 'x.raw')]);
    expect(unknownId.exitCode).toBe(1);
    expect(unknownId.stderr).toContain("backup '00000000-0000-4000-8000-000000000000' is not in the repository");
    expect(unknownId.stderr).toContain('fleece list --repo');
    noStack(unknownId);

    const badDisk = await runCli(dir, ['backup', 'vm1', '--qmp', qemu.extraQmpPaths[0]!, '--repo', join(dir, 'repo'), '--disk', 'vdz']);
    expect(badDisk.exitCode).toBe(2);
    expect(badDisk.stderr).toContain("VM 'vm1' has no disk 'vdz'; use --disk with one of: vda");

    const both = await runCli(dir, ['backup', 'vm1', '--qmp', qemu.extraQmpPaths[0]!, '--repo', join(dir, 'repo'), '--full', '--incremental']);
    expect(both.exitCode).toBe(2);

    const noQemu = await runCli(dir, ['backup', 'vm1', '--qmp', join(dir, 'nothing.sock'), '--repo', join(dir, 'repo')]);
    expect(noQemu.exitCode).toBe(1);
    expect(noQemu.stderr).toContain(join(dir, 'nothing.sock'));
    noStack(noQemu);
    expect(await leftovers(qemu.client)).toEqual({ fleeceNodes: [], jobs: [], exports: [], bitmaps: { vda: [] } });
  });
});

describe('fleece backup: two disks', () => {
  const fixture = useQemuSystem(async (dir) => {
    await createDisk(join(dir, 'a.qcow2'), { size: 16 * MiB });
    await createDisk(join(dir, 'b.qcow2'), { size: 24 * MiB });
    return {
      disks: [{ path: join(dir, 'a.qcow2'), target: 'vda' }, { path: join(dir, 'b.qcow2'), target: 'vdb' }],
      extraQmpSockets: 1,
    };
  });

  test('one grouped VM backup of both disks, full then incremental; each disk restores identically', async () => {
    const { dir, qemu } = fixture;
    const write = async (target: string, command: string) => {
      await qemu.guestWrite(target, command);
      await qemu.guestWrite(target, 'flush');
    };
    const backup = () => runCliJson<BackupJson>(dir, ['backup', 'vm2', '--qmp', qemu.extraQmpPaths[0]!, '--repo', join(dir, 'repo'), '--parallel', '2']);
    await write('vda', 'write -P 0x61 0 2M');
    await write('vdb', 'write -P 0x62 8M 3M');
    const full = await backup();
    await snapshotRaw(join(dir, 'a.qcow2'), join(dir, 'a0.raw'));
    await snapshotRaw(join(dir, 'b.qcow2'), join(dir, 'b0.raw'));
    await write('vdb', 'write -P 0x63 20M 64k');
    const inc = await backup();
    await snapshotRaw(join(dir, 'a.qcow2'), join(dir, 'a1.raw'));
    await snapshotRaw(join(dir, 'b.qcow2'), join(dir, 'b1.raw'));

    expect(full.disks.map((d) => d.disk)).toEqual(['vda', 'vdb']);
    expect(full.disks.map((d) => d.size)).toEqual([16 * MiB, 24 * MiB]);
    expect(inc.level).toBe('incremental');
    expect(inc.disks.map((d) => d.bytesRead)).toEqual([0, 64 * KiB]);
    const repo = await openRepository(join(dir, 'repo'));
    for (const json of [full, inc]) {
      const group = await repo.list({ groupId: json.groupId });
      expect(group.map((r) => r.disk).sort()).toEqual(['vda', 'vdb']);
      expect(new Set(group.map((r) => r.volumeId)).size).toBe(2);
      expect(group.every((r) => r.checkpoint === json.checkpoint)).toBe(true);
    }
    for (const [json, suffix] of [[full, '0'], [inc, '1']] as const) {
      for (const d of json.disks) {
        const out = join(dir, `r-${d.disk}-${suffix}.raw`);
        expect((await runCli(dir, ['restore', '--repo', join(dir, 'repo'), '--backup', d.backupId, '--out', out])).exitCode).toBe(0);
        const reference = join(dir, `${d.disk === 'vda' ? 'a' : 'b'}${suffix}.raw`);
        expect(await sha256File(out)).toBe(await sha256File(reference));
      }
    }
  });
});
