// Checkpoint pruning against a real QEMU (fleece over QMP), as a user runs fleece: after N+3 backups QEMU holds at
// most N checkpoint bitmaps per disk and the next incremental still works and restores byte-identically; a prune that
// removes a chain removes the checkpoints its backups ended at; a protected backup cannot be deleted.
import { describe, expect, test } from '@jest/globals';
import { join } from 'node:path';
import { useQemuSystem } from '../harness/jest-qemu.js';
import { createDisk } from '../harness/qemu.js';
import { leftovers, snapshotRaw, sha256File } from '../integration/backup/helpers.js';
import { CheckpointStore } from '../../src/checkpoint/store.js';
import { runCli, runCliJson, type BackupJson } from './helpers.js';

const MiB = 1024 * 1024;
const KEEP = 2;

describe('checkpoint pruning over QMP', () => {
  const fixture = useQemuSystem(async (dir) => {
    await createDisk(join(dir, 'a.qcow2'), { size: 8 * MiB });
    await createDisk(join(dir, 'b.qcow2'), { size: 4 * MiB });
    return { disks: [{ path: join(dir, 'a.qcow2'), target: 'vda' }, { path: join(dir, 'b.qcow2'), target: 'vdb' }], extraQmpSockets: 1 };
  }, 'all');
  const repo = () => join(fixture.dir, 'repo');
  const qmp = () => fixture.qemu.extraQmpPaths[0]!;
  const write = async (disk: string, command: string) => {
    await fixture.qemu.guestWrite(disk, command);
    await fixture.qemu.guestWrite(disk, 'flush');
  };
  const backup = (extra: string[] = []) =>
    runCliJson<BackupJson & { checkpointsDeleted?: string[] }>(fixture.dir, ['backup', 'vm1', '--qmp', qmp(), '--repo', repo(), '--keep-checkpoints', String(KEEP), ...extra]);
  const bitmaps = async () => (await leftovers(fixture.qemu.client)).bitmaps;

  test(`after ${KEEP + 3} backups QEMU holds ${KEEP} checkpoint bitmaps per disk; the next incremental restores byte-identically`, async () => {
    const { dir } = fixture;
    const made: string[] = [];
    for (let i = 0; i < KEEP + 3; i++) {
      await write('vda', `write -P 0x${(0x10 + i).toString(16)} ${i}M 64k`);
      await write('vdb', `write -P 0x${(0x40 + i).toString(16)} ${i * 128}k 64k`);
      const json = await backup();
      expect(json.level).toBe(i === 0 ? 'full' : 'incremental');
      made.push(json.checkpoint!);
      const now = await bitmaps();
      for (const disk of ['vda', 'vdb']) expect(now[disk]!.length).toBeLessThanOrEqual(KEEP);
      expect(json.checkpointsDeleted ?? []).toEqual(i >= KEEP ? [made[i - KEEP]] : []);
    }
    const kept = made.slice(-KEEP);
    expect(await bitmaps()).toEqual({ vda: [...kept].sort(), vdb: [...kept].sort() });
    expect((await new CheckpointStore(join(dir, 'state')).list('vm1')).map((c) => c.name)).toEqual(kept);

    await write('vda', 'write -P 0x77 7M 64k');
    await snapshotRaw(join(dir, 'a.qcow2'), join(dir, 'a-last.raw'));
    await snapshotRaw(join(dir, 'b.qcow2'), join(dir, 'b-last.raw'));
    const last = await backup();
    expect(last.level).toBe('incremental');
    expect(last.incrementalFrom).toBe(made.at(-1));
    expect(last.disks.find((d) => d.disk === 'vda')!.bytesRead).toBe(64 * 1024);
    for (const [disk, image] of [['vda', 'a-last.raw'], ['vdb', 'b-last.raw']] as const) {
      const out = join(dir, `restored-${disk}.raw`);
      const id = last.disks.find((d) => d.disk === disk)!.backupId;
      const restored = await runCli(dir, ['restore', '--repo', repo(), '--backup', id, '--out', out, '--format', 'raw', '--force']);
      expect([restored.exitCode, restored.stderr]).toEqual([0, expect.anything()]);
      expect(await sha256File(out)).toBe(await sha256File(join(dir, image)));
    }
    const listed = await runCli(dir, ['checkpoint-list', 'vm1', '--qmp', qmp(), '--repo', repo()]);
    expect([listed.exitCode, listed.stderr]).toEqual([0, '']);
    const vda = last.disks.find((d) => d.disk === 'vda')!.backupId;
    expect(listed.stdout).toMatch(new RegExp(`${last.checkpoint}\\s.*vda:${vda}`));
  }, 400_000);

  test('a prune that removes the old chain removes its checkpoints; a protected backup cannot be deleted', async () => {
    const { dir } = fixture;
    await write('vda', 'write -P 0x88 1M 64k');
    const full = await backup(['--full']);
    expect((await bitmaps()).vda).toHaveLength(KEEP);
    const pruned = await runCli(dir, ['prune', '--repo', repo(), '--vm', 'vm1', '--qmp', qmp(), '--keep-last', '1']);
    expect([pruned.exitCode, pruned.stderr]).toEqual([0, expect.stringMatching(/checkpoint fleece-\S+ of VM 'vm1': deleted \(the backups that ended at it were pruned\)/)]);
    expect(await bitmaps()).toEqual({ vda: [full.checkpoint], vdb: [full.checkpoint] });
    const listed = await runCliJson<{ backupId: string }[]>(dir, ['list', '--repo', repo(), '--vm', 'vm1']);
    expect(listed.map((b) => b.backupId).sort()).toEqual(full.disks.map((d) => d.backupId).sort());

    const id = full.disks[0]!.backupId;
    expect((await runCli(dir, ['protect', '--repo', repo(), '--backup', id])).exitCode).toBe(0);
    const refused = await runCli(dir, ['delete', '--repo', repo(), '--backup', id]);
    expect(refused.exitCode).not.toBe(0);
    expect(refused.stderr).toMatch(/protected/);
    expect(refused.stderr).toMatch(/fleece unprotect/);
    const shown = await runCli(dir, ['list', '--repo', repo(), '--vm', 'vm1']);
    expect(shown.stdout).toMatch(new RegExp(`${id}.*protected`));
    expect((await runCli(dir, ['unprotect', '--repo', repo(), '--backup', id])).exitCode).toBe(0);
    expect((await runCli(dir, ['delete', '--repo', repo(), '--backup', id])).exitCode).toBe(0);
  }, 200_000);
});
