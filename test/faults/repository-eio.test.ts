// Fault suite: the storage under the repository fails every I/O with EIO (test/harness/faulty-fs.ts: nbdkit's error
// filter under an ext4). A backup paused mid-read meets it when it goes on: exit 1, an error naming EIO and the object's
// path, and before the process ends it has removed what it wrote. Once the storage works again: nothing of the failed
// backup is in the repository or in QEMU, the first backup restores byte for byte, the next backup is an incremental
// from it. verify and restore reading while the storage fails: exit 1 naming EIO, and no restored file is left.
import { afterAll, afterEach, beforeAll, describe, expect, test } from '@jest/globals';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { useQemuSystem } from '../harness/jest-qemu.js';
import { createDisk } from '../harness/qemu.js';
import { mountFaultyExt4, type FaultyExt4 } from '../harness/faulty-fs.js';
import { makeTempDir, removeTempDir } from '../harness/temp-dir.js';
import { leftovers, snapshotRaw } from '../integration/backup/helpers.js';
import { runCli, runCliJson, type BackupJson } from '../e2e/helpers.js';
import { injectFault } from './fault-count.js';
import { errorLines, filesUnder, startPausedAt, waitForNewFile, type PausedCli } from './helpers.js';

const MiB = 1024 * 1024;

describe('fault suite: EIO from the storage under the repository', () => {
  const fixture = useQemuSystem(async (dir) => {
    await createDisk(join(dir, 'a.qcow2'), { size: 32 * MiB });
    return { disks: [{ path: join(dir, 'a.qcow2'), target: 'vda' }], extraQmpSockets: 1 };
  }, 'all');
  let mountDir: string;
  let storage: FaultyExt4;
  beforeAll(async () => {
    mountDir = await makeTempDir('repo-eio');
    storage = await mountFaultyExt4(join(mountDir, 'fs'), 96 * MiB);
  });
  afterAll(async () => {
    try {
      await storage?.teardown();
    } finally {
      await removeTempDir(mountDir);
    }
  });
  const repo = () => join(storage.dir, 'repo');
  const args = () => ['backup', 'vm1', '--qmp', fixture.qemu.extraQmpPaths[0]!, '--repo', repo()];
  /** Writes `length` random (incompressible) bytes at `offset` of the guest's disk. */
  const writeRandom = async (offset: number, length: number) => {
    const source = join(fixture.dir, `random-${offset}`);
    await writeFile(source, randomBytes(length));
    await fixture.qemu.guestWrite('vda', `write -s ${source} ${offset} ${length}`);
    await fixture.qemu.guestWrite('vda', 'flush');
  };
  const restoresAs = async (backupId: string, reference: string) => {
    const out = join(fixture.dir, `restore-${backupId}-${++restores}.raw`);
    const restored = await runCli(fixture.dir, ['restore', '--repo', repo(), '--backup', backupId, '--out', out]);
    expect({ code: restored.exitCode, stderr: restored.exitCode === 0 ? '' : restored.stderr }).toEqual({ code: 0, stderr: '' });
    expect((await readFile(out)).equals(await readFile(reference))).toBe(true);
  };
  /** The one `fleece: …` line of a failed command. */
  const errorLine = (stderr: string) => {
    const lines = errorLines(stderr);
    expect(lines).toHaveLength(1);
    return lines[0]!;
  };
  let first: BackupJson;
  let restores = 0;
  let paused: PausedCli | undefined;
  afterEach(async () => { // a case that failed while fleece was paused leaves no process (nor a busy mount)
    paused?.child.kill('SIGKILL');
    await paused?.child;
    paused = undefined;
  });

  test('a first backup', async () => {
    await writeRandom(0, 3 * MiB);
    first = await runCliJson<BackupJson>(fixture.dir, args());
    await snapshotRaw(join(fixture.dir, 'a.qcow2'), join(fixture.dir, 'first.raw'));
    expect(first.level).toBe('full');
  }, 120_000);

  test('EIO mid-read: exit 1 naming EIO and the object; what it stored is removed; the next backup is incremental', async () => {
    await writeRandom(8 * MiB, 16 * MiB);
    const filesBefore = await filesUnder(repo());
    const { child } = paused = await startPausedAt(fixture.dir, args(), 'mid-read');
    // Its first object is stored (the pause holds the reads, not the puts): the fault lands on a backup with objects.
    await waitForNewFile(repo(), /-00001$/, filesBefore);
    await storage.fail(true);
    const fault = injectFault('EIO from the repository storage mid-backup');
    child.kill('SIGUSR2');
    const failed = await child;
    await storage.fail(false);
    expect({ code: failed.exitCode, signal: failed.signal }).toEqual({ code: 1, signal: undefined });
    const stderr = String(failed.stderr);
    expect(errorLine(stderr)).toMatch(new RegExp(`^fleece: cannot write \\S+-\\d{5} in the repository at ${repo()}: the storage under it reported an I/O error \\(EIO\\); check the disk`));
    // The removal of what it wrote could not be made durable (the sync failed too): it says so, and the journal keeps
    // the backup for the next fleece.
    expect(stderr).toMatch(new RegExp(`warning: up to \\d+ object\\(s\\) the failed backup \\S+ wrote could not be removed for sure from ${repo()} \\(.*EIO.*\\): the next backup of VM 'vm1' \\(or \`fleece recover vm1\`\\) removes them`));
    expect(existsSync(join(fixture.dir, 'state', 'journal', 'vm1.json'))).toBe(true);
    // The operator repairs the file system: what was only in memory is gone, the files are what reached the device.
    await storage.repair();
    expect(await runCliJson<{ backupId: string }[]>(fixture.dir, ['list', '--repo', repo()])).toMatchObject([{ backupId: first.disks[0]!.backupId }]);
    expect(await readdir(join(fixture.dir, 'state', 'scratch')).catch(() => [])).toEqual([]);
    // (c) QEMU holds nothing of it, only the first backup's checkpoint bitmap.
    const after = await leftovers(fixture.qemu.client);
    expect({ jobs: after.jobs, exports: after.exports, nodes: after.fleeceNodes, bitmaps: after.bitmaps.vda })
      .toEqual({ jobs: [], exports: [], nodes: [], bitmaps: [first.checkpoint] });
    // (b) the first backup restores byte for byte.
    await restoresAs(first.disks[0]!.backupId, join(fixture.dir, 'first.raw'));
    // (e) the next backup cleans up after the failed one (the journal) and is an incremental from the first; it
    // restores byte for byte; (d) the repository then holds the two backups' files only, no journal stays.
    const next = await runCli(fixture.dir, args());
    expect({ code: next.exitCode, stderr: next.exitCode === 0 ? '' : next.stderr }).toEqual({ code: 0, stderr: '' });
    expect(next.stderr).toMatch(/cleaned up after an interrupted backup of VM 'vm1' \(fleece process \d+\)/);
    expect(next.stderr).toMatch(/incremental backup of VM 'vm1'/);
    await snapshotRaw(join(fixture.dir, 'a.qcow2'), join(fixture.dir, 'next.raw'));
    const listed = await runCliJson<{ backupId: string; parentId: string | null }[]>(fixture.dir, ['list', '--repo', repo()]);
    expect(listed).toHaveLength(2);
    const { backupId: id, parentId } = listed.find((r) => r.backupId !== first.disks[0]!.backupId)!;
    expect(parentId).toBe(first.disks[0]!.backupId);
    await restoresAs(id, join(fixture.dir, 'next.raw'));
    const container = `${id.slice(0, 2)}/${id.slice(2, 4)}/${id}/`;
    expect((await filesUnder(repo())).filter((f) => !f.startsWith(container))).toEqual(filesBefore);
    expect(existsSync(join(fixture.dir, 'state', 'journal', 'vm1.json'))).toBe(false);
    fault.held();
  }, 300_000);

  test('EIO under verify and restore: exit 1 naming EIO; no restored file is left behind', async () => {
    const backupId = first.disks[0]!.backupId;
    const out = join(fixture.dir, 'under-eio.raw');
    await storage.fail(true);
    const fault = injectFault('EIO from the repository storage under verify and restore');
    const verify = await runCli(fixture.dir, ['verify', '--repo', repo(), '--backup', backupId]);
    const restore = await runCli(fixture.dir, ['restore', '--repo', repo(), '--backup', backupId, '--out', out]);
    await storage.fail(false);
    for (const result of [verify, restore]) {
      expect(result.exitCode).toBe(1);
      expect(errorLine(result.stderr)).toMatch(/\(EIO\); check the disk/);
    }
    expect(verify.stdout).not.toMatch(/\bOK\b/);
    expect(existsSync(out)).toBe(false);
    // Nothing was harmed: the storage works again, verify passes and the backup restores byte for byte.
    const healed = await runCli(fixture.dir, ['verify', '--repo', repo(), '--backup', backupId]);
    expect({ code: healed.exitCode, stderr: healed.exitCode === 0 ? '' : healed.stderr }).toEqual({ code: 0, stderr: '' });
    await restoresAs(backupId, join(fixture.dir, 'first.raw'));
    fault.held();
  }, 300_000);
});
