// `fleece vm`, `list`, `restore` (by id, by VM + disk + time, raw and qcow2), `verify`, `delete`, `gc` as a user runs
// them (node dist/src/cli/main.js), on backups of a real QEMU VM.
import { describe, expect, test } from '@jest/globals';
import { execa } from 'execa';
import { readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { useQemuSystem } from '../harness/jest-qemu.js';
import { createDisk } from '../harness/qemu.js';
import { sha256File, snapshotRaw } from '../integration/backup/helpers.js';
import { openRepository } from '../../src/repository/index.js';
import { runCli, runCliJson, type BackupJson } from './helpers.js';

const MiB = 1024 * 1024;

describe('fleece repository commands', () => {
  const fixture = useQemuSystem(async (dir) => {
    await createDisk(join(dir, 'a.qcow2'), { size: 8 * MiB });
    return { disks: [{ path: join(dir, 'a.qcow2'), target: 'vda' }], extraQmpSockets: 1 };
  }, 'all');

  test('vm add/list/remove, backups by name, list, restore by time and as qcow2, verify, delete, gc', async () => {
    const { dir, qemu } = fixture;
    const repo = join(dir, 'repo');
    const write = async (command: string) => {
      await qemu.guestWrite('vda', command);
      await qemu.guestWrite('vda', 'flush');
    };

    // The registry: add, list, a duplicate refused, backups by name.
    expect((await runCli(dir, ['vm', 'add', 'web', '--qmp', qemu.extraQmpPaths[0]!])).exitCode).toBe(0);
    const dup = await runCli(dir, ['vm', 'add', 'web', '--qmp', '/x']);
    expect(dup.exitCode).toBe(1);
    expect(dup.stderr).toContain("VM 'web' is already registered; remove it first with `fleece vm remove web`");
    expect(await runCliJson(dir, ['vm', 'list'])).toEqual([{ name: 'web', qmp: qemu.extraQmpPaths[0] }]);

    await write('write -P 0x71 0 1M');
    const full = await runCliJson<BackupJson>(dir, ['backup', 'web', '--repo', repo]);
    await snapshotRaw(join(dir, 'a.qcow2'), join(dir, 'p0.raw'));
    await new Promise((r) => setTimeout(r, 1100));
    const between = new Date().toISOString();
    await new Promise((r) => setTimeout(r, 1100));
    await write('write -P 0x72 4M 64k');
    const inc = await runCliJson<BackupJson>(dir, ['backup', 'web', '--repo', repo, '--compression', 'zlib']);
    await snapshotRaw(join(dir, 'a.qcow2'), join(dir, 'p1.raw'));
    expect(inc.level).toBe('incremental');

    // list: both, oldest first, with the fleece fields.
    const listed = await runCliJson<{ backupId: string; parentId: string | null; vm: string; disk: string; groupId: string }[]>(dir, ['list', '--repo', repo]);
    expect(listed.map((r) => [r.backupId, r.parentId, r.vm, r.disk])).toEqual([
      [full.disks[0]!.backupId, null, 'web', 'vda'],
      [inc.disks[0]!.backupId, full.disks[0]!.backupId, 'web', 'vda'],
    ]);
    const table = await runCli(dir, ['list', '--repo', repo]);
    expect(table.stdout).toContain('incremental');
    expect(await runCliJson(dir, ['list', '--repo', repo, '--vm', 'other'])).toEqual([]);

    // restore by VM + disk + time (the full), by VM alone (the newest), and as qcow2.
    const atFull = await runCli(dir, ['restore', '--repo', repo, '--vm', 'web', '--disk', 'vda', '--at', between, '--out', join(dir, 'at.raw')]);
    expect(atFull.exitCode).toBe(0);
    expect(await sha256File(join(dir, 'at.raw'))).toBe(await sha256File(join(dir, 'p0.raw')));
    const newest = await runCli(dir, ['restore', '--repo', repo, '--vm', 'web', '--out', join(dir, 'new.raw')]);
    expect(newest.exitCode).toBe(0);
    expect(await sha256File(join(dir, 'new.raw'))).toBe(await sha256File(join(dir, 'p1.raw')));
    const exists = await runCli(dir, ['restore', '--repo', repo, '--vm', 'web', '--out', join(dir, 'new.raw')]);
    expect(exists.exitCode).toBe(1);
    expect(exists.stderr).toContain('already exists; choose a new path, or pass --force');
    expect((await runCli(dir, ['restore', '--repo', repo, '--vm', 'web', '--out', join(dir, 'new.raw'), '--force'])).exitCode).toBe(0);
    const q = await runCli(dir, ['restore', '--repo', repo, '--backup', inc.disks[0]!.backupId, '--out', join(dir, 'r.qcow2'), '--format', 'qcow2']);
    expect(q.exitCode).toBe(0);
    const compare = await execa('qemu-img', ['compare', '-f', 'raw', '-F', 'qcow2', join(dir, 'p1.raw'), join(dir, 'r.qcow2')], { reject: false });
    expect(compare.exitCode).toBe(0);
    const tooEarly = await runCli(dir, ['restore', '--repo', repo, '--vm', 'web', '--at', '2000-01-01T00:00:00Z', '--out', join(dir, 'x.raw')]);
    expect(tooEarly.exitCode).toBe(1);
    expect(tooEarly.stderr).toContain("has no backup of VM 'web' at or before 2000-01-01T00:00:00.000Z");

    // verify: OK, then a damaged object of the full makes the incremental's chain fail (exit 1).
    expect((await runCli(dir, ['verify', '--repo', repo, '--backup', inc.disks[0]!.backupId])).exitCode).toBe(0);
    const record = await (await openRepository(repo)).get(full.disks[0]!.backupId);
    const containerDir = join(repo, record.container);
    const object = (await readdir(containerDir)).find((n) => /_backup_.*-\d{5}$/.test(n))!;
    const original = await readFile(join(containerDir, object));
    const damaged = Buffer.from(original);
    damaged[damaged.length - 1]! ^= 0xff;
    await writeFile(join(containerDir, object), damaged);
    const bad = await runCli(dir, ['verify', '--repo', repo, '--backup', inc.disks[0]!.backupId]);
    expect(bad.exitCode).toBe(1);
    expect(bad.stdout).toContain('DAMAGED');
    expect(bad.stderr).toContain(`backup ${inc.disks[0]!.backupId} failed verification`);
    await writeFile(join(containerDir, object), original);

    // delete: refused while an incremental depends on it; --cascade takes both. gc removes a stray object.
    const refused = await runCli(dir, ['delete', '--repo', repo, '--backup', full.disks[0]!.backupId]);
    expect(refused.exitCode).toBe(1);
    expect(refused.stderr).toContain(inc.disks[0]!.backupId);
    // (a leftover of that backup, as a killed run leaves one; a file not named as the layout names objects stays)
    await writeFile(join(containerDir, `${record.prefix}-00099`), 'stray');
    await writeFile(join(containerDir, 'notes.txt'), 'not an object');
    const gc = await runCliJson<{ removed: { name: string }[] }>(dir, ['gc', '--repo', repo, '--grace', '0']);
    expect(gc.removed.map((r) => r.name)).toEqual([`${record.prefix}-00099`]);
    expect(await readFile(join(containerDir, 'notes.txt'), 'utf8')).toBe('not an object');
    const deleted = await runCliJson<{ deleted: string[] }>(dir, ['delete', '--repo', repo, '--backup', full.disks[0]!.backupId, '--cascade']);
    expect(deleted.deleted.sort()).toEqual([full.disks[0]!.backupId, inc.disks[0]!.backupId].sort());
    expect(await runCliJson(dir, ['list', '--repo', repo])).toEqual([]);

    // The next backup after the repository was emptied is full, and says why.
    const again = await runCliJson<BackupJson>(dir, ['backup', 'web', '--repo', repo]);
    expect(again.level).toBe('full');
    expect(again.reason).toBe("this repository has no backup of VM 'web' yet");

    expect((await runCli(dir, ['vm', 'remove', 'web'])).exitCode).toBe(0);
    const gone = await runCli(dir, ['backup', 'web', '--repo', repo]);
    expect(gone.exitCode).toBe(1);
    expect(gone.stderr).toContain("VM 'web' is not registered");
  });
});
