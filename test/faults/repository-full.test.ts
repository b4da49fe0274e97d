// Fault suite: the repository's file system is full (a small tmpfs). A backup that does not fit fails with exit 1 and
// an error naming the repository, ENOSPC and what to do; before the process ends it has removed every object it
// wrote, so the file system's use is what it was before (nothing keeps a full disk full until `gc --grace 0`); QEMU
// holds nothing; the first backup restores byte for byte; once the file system grows, the next backup is an
// incremental from the last committed backup and restores byte for byte.
import { afterAll, afterEach, beforeAll, describe, expect, test } from '@jest/globals';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { useQemuSystem } from '../harness/jest-qemu.js';
import { createDisk } from '../harness/qemu.js';
import { mountTmpfs, type Tmpfs } from '../harness/faulty-fs.js';
import { makeTempDir, removeTempDir } from '../harness/temp-dir.js';
import { leftovers, snapshotRaw } from '../integration/backup/helpers.js';
import { runCli, runCliJson, type BackupJson } from '../e2e/helpers.js';
import { injectFault } from './fault-count.js';
import { errorLines, filesUnder, startPausedAt, waitForNewFile, type PausedCli } from './helpers.js';

const MiB = 1024 * 1024;

describe('fault suite: the repository file system full', () => {
  const fixture = useQemuSystem(async (dir) => {
    await createDisk(join(dir, 'a.qcow2'), { size: 64 * MiB });
    return { disks: [{ path: join(dir, 'a.qcow2'), target: 'vda' }], extraQmpSockets: 1 };
  }, 'all');
  let mountDir: string;
  let tmpfs: Tmpfs;
  beforeAll(async () => {
    mountDir = await makeTempDir('repo-full');
    tmpfs = await mountTmpfs(join(mountDir, 'fs'), 24 * MiB);
  });
  afterAll(async () => {
    try {
      await tmpfs?.teardown();
    } finally {
      await removeTempDir(mountDir);
    }
  });
  const repo = () => join(tmpfs.dir, 'repo');
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
  let first: BackupJson;
  let restores = 0;
  let paused: PausedCli | undefined;
  afterEach(async () => { // a case that failed while fleece was paused leaves no process (nor a busy mount)
    paused?.child.kill('SIGKILL');
    await paused?.child;
    paused = undefined;
  });

  test('a first backup fits', async () => {
    await writeRandom(0, 3 * MiB);
    first = await runCliJson<BackupJson>(fixture.dir, args());
    await snapshotRaw(join(fixture.dir, 'a.qcow2'), join(fixture.dir, 'first.raw'));
    expect(first.level).toBe('full');
  }, 120_000);

  test('ENOSPC: exit 1 naming the repository and the fix; what it wrote is gone before it exits; then it goes on', async () => {
    // 40 MiB of new data for the ~21 MiB left: several 4 MiB objects are stored (and in flight) when the space ends.
    await writeRandom(8 * MiB, 40 * MiB);
    const usedBefore = await tmpfs.usedBytes();
    const filesBefore = await filesUnder(repo());
    // Paused at its first piece until that object is stored: the backup that fails has objects to remove.
    const { child } = paused = await startPausedAt(fixture.dir, args(), 'mid-read');
    await waitForNewFile(repo(), /-00001$/, filesBefore);
    expect(await tmpfs.usedBytes()).toBeGreaterThan(usedBefore + 4 * MiB);
    child.kill('SIGUSR2');
    const fault = injectFault('repository file system full (ENOSPC) mid-backup');
    const result = await child;
    const failed = { exitCode: result.exitCode, signal: result.signal, stderr: String(result.stderr) };
    expect({ code: failed.exitCode, signal: failed.signal }).toEqual({ code: 1, signal: undefined });
    const error = errorLines(failed.stderr);
    expect(error).toHaveLength(1);
    expect(error[0]).toContain(`in the repository at ${repo()}: its file system is full (ENOSPC); free space there (fleece prune`);
    expect(error[0]).toMatch(/or grow the file system, then take the backup again$/);
    expect(failed.stderr).not.toMatch(/could not be removed/); // its removal worked (and was synced)
    // (d) removed, awaited, before the process ended: no gc ran, and the file system holds what it held before.
    expect(await tmpfs.usedBytes()).toBe(usedBefore);
    expect(await filesUnder(repo())).toEqual(filesBefore);
    const listed = await runCliJson<{ backupId: string }[]>(fixture.dir, ['list', '--repo', repo()]);
    expect(listed.map((r) => r.backupId)).toEqual([first.disks[0]!.backupId]);
    // (c) QEMU holds nothing of the failed backup, only the first backup's checkpoint bitmap.
    const after = await leftovers(fixture.qemu.client);
    expect({ jobs: after.jobs, exports: after.exports, nodes: after.fleeceNodes, bitmaps: after.bitmaps.vda })
      .toEqual({ jobs: [], exports: [], nodes: [], bitmaps: [first.checkpoint] });
    expect(await readdir(join(fixture.dir, 'state', 'scratch')).catch(() => [])).toEqual([]);
    expect(existsSync(join(fixture.dir, 'state', 'journal', 'vm1.json'))).toBe(false);
    // (b) the first backup restores byte for byte (into the test directory: the tmpfs is full).
    await restoresAs(first.disks[0]!.backupId, join(fixture.dir, 'first.raw'));

    // (e) the file system grows; the next backup is an incremental from the first and restores byte for byte.
    await tmpfs.resize(96 * MiB);
    const next = await runCliJson<BackupJson>(fixture.dir, args());
    await snapshotRaw(join(fixture.dir, 'a.qcow2'), join(fixture.dir, 'next.raw'));
    expect({ level: next.level, parent: next.disks[0]!.parentId }).toEqual({ level: 'incremental', parent: first.disks[0]!.backupId });
    await restoresAs(next.disks[0]!.backupId, join(fixture.dir, 'next.raw'));
    // Nothing for gc: the failed backup left no object behind.
    const filesNow = await filesUnder(repo());
    expect((await runCli(fixture.dir, ['gc', '--repo', repo(), '--grace', '0'])).exitCode).toBe(0);
    expect(await filesUnder(repo())).toEqual(filesNow);
    expect((await runCliJson<unknown[]>(fixture.dir, ['list', '--repo', repo()])).length).toBe(2);
    fault.held();
  }, 300_000);
});
