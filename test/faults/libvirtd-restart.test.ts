// Fault suite: libvirtd restarted while `fleece backup` of a libvirt domain reads its disks (a libvirtd of this file's
// own: restarting the shared one would break other files' calls). The domain and its QEMU keep running over the
// restart; then (a)–(e): what fleece says and exits with, the first backup still restores byte for byte, libvirt
// holds no job and QEMU no export or block job, no checkpoint of a failed backup, nothing in the scratch, run or
// journal directory, and the next backup is incremental.
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { createImage, dedicatedLibvirt, defineTestDomain, libvirtAvailability, type LibvirtHarness, type TestDomain } from '../harness/libvirt.js';
import { makeTempDir, removeTempDir } from '../harness/temp-dir.js';
import { snapshotRaw } from '../integration/backup/helpers.js';
import { runCli, runCliJson, type BackupJson } from '../e2e/helpers.js';
import { injectFault } from './fault-count.js';
import { checkpointNames, containers, filesUnder, libvirtLeftovers, pausedAt } from './helpers.js';

const MiB = 1024 * 1024;
const available = libvirtAvailability();
if (!available.ok) console.warn(`libvirtd fault cases skipped: ${available.why}`);

(available.ok ? describe : describe.skip)('fault suite: libvirtd restarted mid-backup', () => {
  let dir: string;
  let h: LibvirtHarness & { stop(): Promise<void> };
  let dom: TestDomain;
  const image = () => join(dir, 'vda.qcow2');
  const repo = () => join(dir, 'repo');
  const args = () => ['backup', dom.name, '--connect', h.uri, '--repo', repo()];
  const listed = () => runCliJson<{ backupId: string; checkpoint?: string }[]>(dir, ['list', '--repo', repo()]);
  const write = async (offset: number, length: number, pattern: number) => {
    await dom.write('vda', offset, length, pattern);
    await dom.qemuIo('vda', 'flush');
  };
  beforeAll(async () => {
    dir = await makeTempDir('libvirtd-restart');
    h = await dedicatedLibvirt('faults');
    await createImage(image(), 'qcow2', 32 * MiB);
    dom = await defineTestDomain(h, { name: `fleece-test-restart-${process.pid}`, disks: [{ target: 'vda', path: image(), format: 'qcow2' }] });
  }, 180_000);
  afterAll(async () => {
    await dom?.remove();
    await h?.stop();
    if (dir) await removeTempDir(dir);
  }, 120_000);

  const restoresAs = async (backupId: string, raw: string) => {
    const out = join(dir, `restored-${Date.now()}.raw`);
    expect((await runCli(dir, ['restore', '--repo', repo(), '--backup', backupId, '--out', out])).exitCode).toBe(0);
    expect((await readFile(out)).equals(await readFile(raw))).toBe(true);
  };

  test('restarted mid-read: QEMU\'s export and libvirt\'s job survive; fleece connects again, completes and ends the job', async () => {
    await write(0, 2 * MiB, 0x11);
    const first = await runCliJson<BackupJson>(dir, args());
    expect(first.level).toBe('full');
    await snapshotRaw(image(), join(dir, 'first.raw'));
    await write(4 * MiB, 12 * MiB, 0x12);
    await snapshotRaw(image(), join(dir, 'second.raw'));

    const paused = await pausedAt(dir, [...args(), '--bandwidth', '4M'], 'mid-read');
    const fault = injectFault('libvirtd restarted mid-read');
    await h.restart();
    // libvirt 9.0 picks the running backup job up again from its status XML; QEMU's NBD export never stopped.
    expect((await libvirtLeftovers(h, dom.name)).job).toBe('Unbounded');
    paused.child.kill('SIGUSR2');
    const result = await paused.child;
    const stderr = String(result.stderr);
    // (a) the backup completes, and says that the connection died and was opened again.
    expect({ code: result.exitCode, stderr: result.exitCode === 0 ? '' : stderr }).toEqual({ code: 0, stderr: '' });
    expect(stderr).toMatch(new RegExp(`warning: the connection to libvirtd at \\S+ died \\(.*libvirtd restarted\\?\\); fleece connected again and went on`));
    expect(stderr).toMatch(new RegExp(`incremental backup of VM '${dom.name}' done`));
    // (c) libvirt holds no job, QEMU no export or block job; the checkpoints are the two backups'.
    expect(await libvirtLeftovers(h, dom.name)).toEqual({ job: 'None', exports: [], jobs: [] });
    const all = await listed();
    expect(all).toHaveLength(2);
    expect(await checkpointNames(h, dom.name)).toEqual(all.map((r) => r.checkpoint!).sort());
    // (d) nothing stray: scratch, socket directory, journal; the repository holds exactly the listed backups.
    expect(await filesUnder(join(dir, 'state', 'scratch'))).toEqual([]);
    expect(await filesUnder(join(dir, 'state', 'journal'))).toEqual([]);
    expect(await filesUnder(join(dir, 'run'))).toEqual([]);
    expect(await containers(repo())).toEqual(all.map((r) => r.backupId).sort());
    // (b) both backups restore byte for byte: the one read across the restart too.
    await restoresAs(first.disks[0]!.backupId, join(dir, 'first.raw'));
    await restoresAs(all[1]!.backupId, join(dir, 'second.raw'));
    // (e) the next backup is incremental from the checkpoint made across the restart.
    await write(20 * MiB, MiB, 0x13);
    await snapshotRaw(image(), join(dir, 'third.raw'));
    const third = await runCliJson<BackupJson>(dir, args());
    expect({ level: third.level, from: third.incrementalFrom }).toEqual({ level: 'incremental', from: all[1]!.checkpoint });
    await restoresAs(third.disks[0]!.backupId, join(dir, 'third.raw'));
    expect(await libvirtLeftovers(h, dom.name)).toEqual({ job: 'None', exports: [], jobs: [] });
    fault.held();
  }, 300_000);
});
