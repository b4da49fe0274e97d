// Fault suite: libvirtd restarted while `fleece backup` of a libvirt domain reads its disks or commits (a libvirtd of
// this file's own: restarting the shared one would break other files' calls). The domain, its QEMU, QEMU's NBD export
// and (libvirt 9.0) libvirt's backup job survive the restart; only fleece's connection dies. fleece connects again
// to the same URI, ends the job and completes, saying so; interrupted instead, it connects again to end the job and
// remove the new checkpoint. Then (b)–(e): the earlier backups restore byte for byte, libvirt holds no job and QEMU no
// export or block job, no checkpoint of a failed backup, nothing in the scratch, run or journal directory, and the
// next backup is incremental.
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

  /** (c), (d): libvirt holds no job, QEMU no export or block job; the checkpoints are the committed backups'; no stray file. */
  async function nothingLeft(): Promise<{ backupId: string; checkpoint?: string }[]> {
    expect(await libvirtLeftovers(h, dom.name)).toEqual({ job: 'None', exports: [], jobs: [] });
    const all = await listed();
    expect(await checkpointNames(h, dom.name)).toEqual(all.map((r) => r.checkpoint!).sort().slice(-3));
    expect(await filesUnder(join(dir, 'state', 'scratch'))).toEqual([]);
    expect(await filesUnder(join(dir, 'state', 'journal'))).toEqual([]);
    expect(await filesUnder(join(dir, 'run'))).toEqual([]);
    expect(await containers(repo())).toEqual(all.map((r) => r.backupId).sort());
    return all;
  }

  /** The newest committed backup and a raw copy of the disk as it backed it up. */
  let latest: { backupId: string; checkpoint: string; raw: string };
  let pattern = 0x20;

  test('a full backup starts the chain', async () => {
    await write(0, 2 * MiB, 0x11);
    const first = await runCliJson<BackupJson>(dir, args());
    expect(first.level).toBe('full');
    latest = { backupId: first.disks[0]!.backupId, checkpoint: first.checkpoint!, raw: join(dir, 'first.raw') };
    await snapshotRaw(image(), latest.raw);
  }, 120_000);

  for (const phase of ['mid-read', 'commit']) {
    test(`restarted ${phase}: QEMU's export and libvirt's job survive; fleece connects again, completes and ends the job`, async () => {
      const before = latest;
      await write(4 * MiB, 12 * MiB, ++pattern);
      const raw = join(dir, `${phase}.raw`);
      await snapshotRaw(image(), raw);
      const paused = await pausedAt(dir, [...args(), '--bandwidth', '4M'], phase);
      const fault = injectFault(`libvirtd restarted ${phase}`);
      await h.restart();
      // libvirt 9.0 picks the running backup job up again from its status XML; QEMU's NBD export never stopped.
      expect((await libvirtLeftovers(h, dom.name)).job).toBe('Unbounded');
      paused.child.kill('SIGUSR2');
      const result = await paused.child;
      const stderr = String(result.stderr);
      // (a) the backup completes, incrementally, and says that the connection died and was opened again.
      expect({ code: result.exitCode, stderr: result.exitCode === 0 ? '' : stderr }).toEqual({ code: 0, stderr: '' });
      expect(stderr).toMatch(/warning: the connection to libvirtd at \S+ died \(.*libvirtd restarted\?\); fleece connected again and went on/);
      expect(stderr).toMatch(new RegExp(`incremental backup of VM '${dom.name}': incremental since checkpoint ${before.checkpoint}`));
      const all = await nothingLeft();
      const made = all[all.length - 1]!;
      expect(made.backupId).not.toBe(before.backupId);
      // (b) the earlier backup and the one read across the restart restore byte for byte.
      await restoresAs(before.backupId, before.raw);
      await restoresAs(made.backupId, raw);
      latest = { backupId: made.backupId, checkpoint: made.checkpoint!, raw };
      fault.held();
    }, 300_000);
  }

  test('restarted mid-read, then SIGINT: exit 130; fleece connects again to end the job and remove the checkpoint', async () => {
    await write(20 * MiB, 4 * MiB, ++pattern);
    const committed = await listed();
    const paused = await pausedAt(dir, [...args(), '--bandwidth', '4M'], 'mid-read');
    const fault = injectFault('libvirtd restarted mid-read, then SIGINT');
    await h.restart();
    paused.child.kill('SIGINT');
    const result = await paused.child;
    expect({ code: result.exitCode, stderr: String(result.stderr) }).toEqual({ code: 130, stderr: expect.stringMatching(/interrupted/) });
    // Nothing of it stays, before any other fleece runs: no job, no checkpoint, no object, no journal.
    expect(await nothingLeft()).toEqual(committed);
    await restoresAs(latest.backupId, latest.raw);
    // (e) the next backup goes on incrementally from the last committed checkpoint.
    await write(24 * MiB, MiB, ++pattern);
    const raw = join(dir, 'next.raw');
    await snapshotRaw(image(), raw);
    const next = await runCliJson<BackupJson>(dir, args());
    expect({ level: next.level, from: next.incrementalFrom }).toEqual({ level: 'incremental', from: latest.checkpoint });
    await nothingLeft();
    await restoresAs(next.disks[0]!.backupId, raw);
    fault.held();
  }, 300_000);

  test('down for longer than fleece waits for it: the backup fails naming libvirtd; the next fleece ends the job and removes the checkpoint, saying so', async () => {
    await write(26 * MiB, 2 * MiB, ++pattern);
    const committed = await listed();
    const paused = await pausedAt(dir, [...args(), '--bandwidth', '4M'], 'mid-read');
    const fault = injectFault('libvirtd stopped mid-read (started again after fleece gave up)');
    let result: Awaited<typeof paused.child> | undefined;
    await h.restart({
      whileDown: async () => {
        paused.child.kill('SIGUSR2');
        result = await paused.child; // fleece tries to connect again for a minute, then gives up
      },
    });
    // (a) exit 1, naming libvirtd and what to do; what it wrote to the repository is gone before it exited.
    expect({ code: result!.exitCode, stderr: String(result!.stderr) }).toEqual({
      code: 1,
      stderr: expect.stringMatching(new RegExp(`fleece: the backup of VM '${dom.name}' failed: libvirtd at \\S+ cannot be reached .*; start libvirtd again: the next fleece command for VM '${dom.name}' \\(or \`fleece recover ${dom.name}\`\\) then ends libvirt's backup job and removes the new checkpoint`)),
    });
    expect(await containers(repo())).toEqual(committed.map((r) => r.backupId).sort());
    // libvirt picked its job up again; the journal lists the job and the checkpoint, for the next fleece.
    expect((await libvirtLeftovers(h, dom.name)).job).toBe('Unbounded');
    const recovered = await runCli(dir, ['recover', dom.name]);
    expect(recovered.exitCode).toBe(0);
    expect(recovered.stderr + recovered.stdout).toMatch(new RegExp(`libvirt backup job of domain ${dom.name}; checkpoint fleece-\\S+ \\(its backup never completed\\)`));
    expect(await nothingLeft()).toEqual(committed);
    await restoresAs(latest.backupId, latest.raw);
    fault.held();
  }, 300_000);
});
