// Fault suite: `fleece backup` of a bare QEMU killed with SIGKILL at each phase (before the transaction, after it,
// mid-read, during the commit), and interrupted with SIGINT during the commit. FLEECE_TEST_PAUSE_AT (test only,
// src/util/test-pause.ts) stops the CLI at the phase, so the fault lands there without timing. After each: (a) the
// next fleece says what it cleaned, (b) the first backup still restores byte for byte, (c) QEMU holds no job, export,
// node or temporary bitmap, (d) no scratch file, journal or uncommitted object, (e) the next backup is incremental.
import { describe, expect, test } from '@jest/globals';
import { existsSync } from 'node:fs';
import { readdir, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { useQemuSystem } from '../harness/jest-qemu.js';
import { createDisk } from '../harness/qemu.js';
import { leftovers, snapshotRaw } from '../integration/backup/helpers.js';
import { runCli, runCliJson, type BackupJson } from '../e2e/helpers.js';
import { injectFault } from './fault-count.js';
import { startPausedAt } from './helpers.js';

const MiB = 1024 * 1024;

/** The backup containers (`xx/yy/<id>`) in a posix repository. */
async function containers(repo: string): Promise<string[]> {
  const out: string[] = [];
  for (const a of await readdir(repo).catch(() => [])) {
    for (const b of await readdir(join(repo, a)).catch(() => [])) {
      for (const id of await readdir(join(repo, a, b)).catch(() => [])) out.push(id);
    }
  }
  return out.sort();
}

describe('fault suite: the CLI killed at each phase of a backup', () => {
  const fixture = useQemuSystem(async (dir) => {
    await createDisk(join(dir, 'a.qcow2'), { size: 16 * MiB });
    return { disks: [{ path: join(dir, 'a.qcow2'), target: 'vda' }], extraQmpSockets: 1 };
  }, 'all');
  const repo = () => join(fixture.dir, 'repo');
  const args = () => ['backup', 'vm1', '--qmp', fixture.qemu.extraQmpPaths[0]!, '--repo', repo()];
  const write = async (command: string) => {
    await fixture.qemu.guestWrite('vda', command);
    await fixture.qemu.guestWrite('vda', 'flush');
  };
  let first: BackupJson;

  /** Starts the backup paused at `phase`; resolves once it says so. */
  const pausedAt = (phase: string) => startPausedAt(fixture.dir, [...args(), '--bandwidth', '4M'], phase);

  /** (b)–(e) after a fault: the next backup cleans and goes on incrementally; nothing stray; the first restores. */
  async function holds(expectCleanup: boolean): Promise<void> {
    const next = await runCli(fixture.dir, args());
    expect({ code: next.exitCode, stderr: next.exitCode === 0 ? '' : next.stderr }).toEqual({ code: 0, stderr: '' });
    if (expectCleanup) expect(next.stderr).toMatch(/cleaned up after an interrupted backup of VM 'vm1' \(fleece process \d+\)/);
    expect(next.stderr).toMatch(/incremental backup of VM 'vm1'/);
    const after = await leftovers(fixture.qemu.client);
    expect({ jobs: after.jobs, exports: after.exports, nodes: after.fleeceNodes }).toEqual({ jobs: [], exports: [], nodes: [] });
    const listed = await runCliJson<{ backupId: string; checkpoint?: string }[]>(fixture.dir, ['list', '--repo', repo()]);
    // Only the chain's bitmaps: those of the newest committed backups that checkpoint pruning keeps (3 per disk by
    // default) — no temporary one, no killed backup's checkpoint.
    const kept = listed.map((r) => r.checkpoint!).sort().slice(-3);
    expect(after.bitmaps.vda!.sort()).toEqual(kept);
    // The journal's cleanup removed a killed writer's objects; gc --grace 0 then finds nothing of a committed backup to take.
    expect(await containers(repo())).toEqual(listed.map((r) => r.backupId).sort());
    const gc = await runCli(fixture.dir, ['gc', '--repo', repo(), '--grace', '0', '--json']);
    expect(gc.exitCode).toBe(0);
    expect(await containers(repo())).toEqual(listed.map((r) => r.backupId).sort());
    expect(await readdir(join(fixture.dir, 'state', 'scratch')).catch(() => [])).toEqual([]);
    expect(existsSync(join(fixture.dir, 'state', 'journal', 'vm1.json'))).toBe(false);
    const out = join(fixture.dir, `first-${Date.now()}.raw`);
    expect((await runCli(fixture.dir, ['restore', '--repo', repo(), '--backup', first.disks[0]!.backupId, '--out', out])).exitCode).toBe(0);
    expect((await readFile(out)).equals(await readFile(join(fixture.dir, 'first.raw')))).toBe(true);
  }

  test('a full backup to start the chain', async () => {
    await write('write -P 0x11 0 2M');
    first = await runCliJson<BackupJson>(fixture.dir, args());
    await snapshotRaw(join(fixture.dir, 'a.qcow2'), join(fixture.dir, 'first.raw'));
    expect(first.level).toBe('full');
  }, 120_000);

  for (const [i, phase] of ['before-transaction', 'after-transaction', 'mid-read', 'commit'].entries()) {
    test(`SIGKILL ${phase}: the next backup cleans up and continues the chain`, async () => {
      await write(`write -P 0x${(0x21 + i).toString(16)} ${4 + i}M 1M`);
      const { child } = await pausedAt(phase);
      const fault = injectFault(`SIGKILL of the CLI ${phase}`);
      child.kill('SIGKILL');
      expect((await child).signal).toBe('SIGKILL');
      await holds(phase !== 'before-transaction');
      fault.held();
    }, 180_000);
  }

  test('gc --grace 0 racing a backup: the backup\'s objects are leased; it commits and verifies', async () => {
    await write('write -P 0x41 10M 1M');
    const { child } = await pausedAt('mid-read');
    const fault = injectFault('gc --grace 0 racing a backup');
    const gc = await runCli(fixture.dir, ['gc', '--repo', repo(), '--grace', '0']);
    expect(gc.exitCode).toBe(0);
    child.kill('SIGUSR2');
    const result = await child;
    expect({ code: result.exitCode, stderr: result.exitCode === 0 ? '' : String(result.stderr) }).toEqual({ code: 0, stderr: '' });
    const listed = await runCliJson<{ backupId: string }[]>(fixture.dir, ['list', '--repo', repo()]);
    expect((await runCli(fixture.dir, ['verify', '--repo', repo(), '--backup', listed[listed.length - 1]!.backupId])).exitCode).toBe(0);
    await holds(false);
    fault.held();
  }, 180_000);

  test('an object deleted before the commit: the backup fails naming it, nothing is committed', async () => {
    await write('write -P 0x42 11M 1M');
    const before = await runCliJson<{ backupId: string }[]>(fixture.dir, ['list', '--repo', repo()]);
    const { child } = await pausedAt('commit');
    const fault = injectFault('object deleted during the commit');
    const fresh = (await containers(repo())).find((id) => !before.some((r) => r.backupId === id))!;
    const dir = join(repo(), fresh.slice(0, 2), fresh.slice(2, 4), fresh);
    const victim = (await readdir(dir)).find((n) => /-\d{5}$/.test(n))!;
    await rm(join(dir, victim));
    child.kill('SIGUSR2');
    const result = await child;
    expect(result.exitCode).toBe(1);
    expect(String(result.stderr)).toMatch(new RegExp(`objects it wrote vanished .*${victim}`));
    expect(await runCliJson<unknown[]>(fixture.dir, ['list', '--repo', repo()])).toHaveLength(before.length);
    await holds(false);
    fault.held();
  }, 180_000);

  test('SIGINT during the commit: exit 130, and what it wrote is gone before it exits', async () => {
    await write('write -P 0x31 9M 1M');
    const before = await containers(repo());
    const { child } = await pausedAt('commit');
    const fault = injectFault('SIGINT of the CLI during the commit');
    child.kill('SIGINT');
    const result = await child;
    expect(result.exitCode).toBe(130);
    expect(String(result.stderr)).toMatch(/interrupted|aborted/);
    expect(await containers(repo())).toEqual(before); // removed, awaited, before the process ended (no gc yet)
    await holds(false);
    fault.held();
  }, 180_000);
});
