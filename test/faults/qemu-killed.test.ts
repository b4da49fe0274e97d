// Fault suite: QEMU killed (SIGKILL) while `fleece backup` reads its disk. The backup fails at once naming the VM and
// that QEMU went away (exit 1), and before it exits removes what it wrote to the repository (no gc needed), its
// scratch files, sockets and journal. The earlier backup still restores byte for byte. QEMU started again on the same
// image finds the chain's persistent bitmap missing (QEMU writes it into the image only when it closes it) or, when
// an earlier QEMU had saved it, in use and so inconsistent: the next backup must not build an incremental on it, so
// it takes a full and says why; that backup restores as the disk is. A libvirt domain destroyed mid-read (virsh
// destroy, the shared harness libvirtd): the same, naming the domain.
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { createImage, defineTestDomain, libvirtAvailability, sharedLibvirt, type LibvirtHarness, type TestDomain } from '../harness/libvirt.js';
import { createDisk, qemuImg, startQemuSystem, type QemuInstance } from '../harness/qemu.js';
import { makeTempDir, removeTempDir } from '../harness/temp-dir.js';
import { queryDisks } from '../../src/qemu/block-graph.js';
import { leftovers, snapshotRaw } from '../integration/backup/helpers.js';
import { runCli, runCliJson, type BackupJson } from '../e2e/helpers.js';
import { injectFault } from './fault-count.js';
import { checkpointNames, containers, filesUnder, libvirtLeftovers, pausedAt } from './helpers.js';

const MiB = 1024 * 1024;

/** The persistent bitmaps in a qcow2 image's header. */
async function imageBitmaps(path: string): Promise<string[]> {
  const info = JSON.parse(await qemuImg(['info', '--output=json', '-U', path])) as { 'format-specific'?: { data?: { bitmaps?: { name: string }[] } } };
  return (info['format-specific']?.data?.bitmaps ?? []).map((b) => b.name).sort();
}

describe('fault suite: QEMU killed mid-read (bare QEMU)', () => {
  let dir: string;
  let qemu: QemuInstance;
  const disk = () => join(dir, 'a.qcow2');
  const repo = () => join(dir, 'repo');
  const start = () => startQemuSystem({ disks: [{ path: disk(), target: 'vda' }], dir, extraQmpSockets: 1 });
  const args = () => ['backup', 'vm1', '--qmp', qemu.extraQmpPaths[0]!, '--repo', repo()];
  const write = async (command: string) => {
    await qemu.guestWrite('vda', command);
    await qemu.guestWrite('vda', 'flush');
  };
  const listed = () => runCliJson<{ backupId: string; checkpoint?: string }[]>(dir, ['list', '--repo', repo()]);

  beforeAll(async () => {
    dir = await makeTempDir('qemu-killed');
    await createDisk(disk(), { size: 32 * MiB });
    qemu = await start();
  }, 60_000);
  afterAll(async () => {
    await qemu?.stop();
    if (dir) await removeTempDir(dir);
  });

  /**
   * Kills QEMU while the next backup reads, then checks (a) exit 1 naming the VM and that QEMU went away, (d) nothing
   * of it in the repository (no gc), scratch, run or journal directory, (b) `earlier` restores byte for byte. Leaves
   * QEMU started again on the same image.
   */
  async function killMidRead(name: string, earlier: BackupJson, earlierRaw: string) {
    const paused = await pausedAt(dir, [...args(), '--bandwidth', '4M'], 'mid-read');
    const committed = (await listed()).map((r) => r.backupId).sort();
    expect((await containers(repo())).length).toBe(committed.length + 1); // the paused backup's, with its first object
    const fault = injectFault(name);
    await qemu.kill();
    paused.child.kill('SIGUSR2');
    const result = await paused.child;
    expect({ code: result.exitCode, stderr: String(result.stderr) }).toEqual({
      code: 1, stderr: expect.stringMatching(/fleece: the backup of VM 'vm1' failed: QEMU went away \(its QMP connection .* closed/),
    });
    expect(await containers(repo())).toEqual((await listed()).map((r) => r.backupId).sort());
    expect(await filesUnder(join(dir, 'state', 'scratch'))).toEqual([]);
    expect(await filesUnder(join(dir, 'state', 'journal'))).toEqual([]);
    expect(await filesUnder(join(dir, 'run'))).toEqual([]);
    const out = join(dir, `restored-${Date.now()}.raw`);
    expect((await runCli(dir, ['restore', '--repo', repo(), '--backup', earlier.disks[0]!.backupId, '--out', out])).exitCode).toBe(0);
    expect((await readFile(out)).equals(await readFile(earlierRaw))).toBe(true);
    await qemu.stop();
    qemu = await start();
    return fault;
  }

  /** (c), (e): the next backup succeeds, never incremental on `checkpoint`, says why; it restores as the disk is. */
  async function nextBackupReadsWhole(checkpoint: string, why: RegExp): Promise<BackupJson> {
    const kept = [...(await leftovers(qemu.client)).bitmaps.vda!];
    const next = await runCli(dir, [...args(), '--json']);
    expect({ code: next.exitCode, stderr: next.exitCode === 0 ? '' : next.stderr }).toEqual({ code: 0, stderr: '' });
    const backup = JSON.parse(next.stdout) as BackupJson;
    expect(backup.incrementalFrom).toBeNull();
    expect(backup.level).not.toBe('incremental');
    expect(backup.reason).toMatch(new RegExp(`checkpoint ${checkpoint}.*(${why.source})`));
    const after = await leftovers(qemu.client);
    expect({ jobs: after.jobs, exports: after.exports, nodes: after.fleeceNodes }).toEqual({ jobs: [], exports: [], nodes: [] });
    // The new checkpoint's bitmap and the chain's (an untrustworthy one stays, unused, until checkpoint pruning).
    expect(after.bitmaps.vda).toEqual([...kept, backup.checkpoint].sort());
    expect(await containers(repo())).toEqual((await listed()).map((r) => r.backupId).sort());
    const raw = join(dir, `${backup.checkpoint}.raw`);
    await snapshotRaw(disk(), raw);
    const out = join(dir, `restored-${Date.now()}.raw`);
    expect((await runCli(dir, ['restore', '--repo', repo(), '--backup', backup.disks[0]!.backupId, '--out', out])).exitCode).toBe(0);
    expect((await readFile(out)).equals(await readFile(raw))).toBe(true);
    return backup;
  }

  let first: BackupJson;
  let second: BackupJson;

  test('killed before QEMU ever saved the chain\'s bitmap: after a restart the checkpoint is missing, the next backup reads whole', async () => {
    await write('write -P 0x11 0 2M');
    first = await runCliJson<BackupJson>(dir, args());
    expect(first.level).toBe('full');
    await snapshotRaw(disk(), join(dir, 'first.raw'));
    await write('write -P 0x12 4M 12M');
    const fault = await killMidRead('QEMU killed mid-read (bitmap never saved)', first, join(dir, 'first.raw'));
    // A persistent bitmap reaches the image only when QEMU closes it: this QEMU died with it in memory.
    expect((await leftovers(qemu.client)).bitmaps.vda).toEqual([]);
    second = await nextBackupReadsWhole(first.checkpoint!, /missing|does not exist/);
    fault.held();
  }, 300_000);

  test('killed with the chain\'s bitmap saved in the image: after a restart it is inconsistent, the next backup reads whole', async () => {
    // A clean stop saves the bitmap; the QEMU started after it marks it in use in the image until it closes it.
    await qemu.stop();
    qemu = await start();
    await write('write -P 0x13 20M 8M');
    const fault = await killMidRead('QEMU killed mid-read (bitmap in use in the image)', second, join(dir, `${second.checkpoint}.raw`));
    const disks = await queryDisks(qemu.client);
    expect(disks[0]!.bitmaps.map((b) => ({ name: b.name, inconsistent: b.inconsistent }))).toEqual([{ name: second.checkpoint, inconsistent: true }]);
    const third = await nextBackupReadsWhole(second.checkpoint!, /inconsistent \(QEMU stopped without saving it, so it may have missed writes\)/);
    // And the chain goes on from the new checkpoint.
    await write('write -P 0x14 2M 1M');
    const fourth = await runCliJson<BackupJson>(dir, args());
    expect({ level: fourth.level, from: fourth.incrementalFrom }).toEqual({ level: 'incremental', from: third.checkpoint });
    fault.held();
  }, 300_000);
});

const available = libvirtAvailability();
(available.ok ? describe : describe.skip)('fault suite: QEMU killed mid-read (libvirt domain destroyed)', () => {
  let dir: string;
  let h: LibvirtHarness;
  let dom: TestDomain;
  const image = () => join(dir, 'vda.qcow2');
  const repo = () => join(dir, 'repo');
  const args = () => ['backup', dom.name, '--connect', h.uri, '--repo', repo()];
  const listed = () => runCliJson<{ backupId: string; checkpoint?: string }[]>(dir, ['list', '--repo', repo()]);
  const write = async (offset: number, length: number, pattern: number) => {
    await dom.write('vda', offset, length, pattern);
    await dom.qemuIo('vda', 'flush');
  };
  const restoresAs = async (backupId: string, raw: string) => {
    const out = join(dir, `restored-${Date.now()}.raw`);
    expect((await runCli(dir, ['restore', '--repo', repo(), '--backup', backupId, '--out', out])).exitCode).toBe(0);
    expect((await readFile(out)).equals(await readFile(raw))).toBe(true);
  };
  beforeAll(async () => {
    dir = await makeTempDir('qemu-killed-libvirt');
    h = await sharedLibvirt();
    await createImage(image(), 'qcow2', 32 * MiB);
    dom = await defineTestDomain(h, { name: `fleece-test-destroyed-${process.pid}`, disks: [{ target: 'vda', path: image(), format: 'qcow2' }] });
  }, 180_000);
  afterAll(async () => {
    await dom?.remove();
    if (dir) await removeTempDir(dir);
  }, 120_000);

  test('virsh destroy mid-read: the backup fails naming the domain, leaves nothing; after a start the chain goes on where its bitmap allows', async () => {
    await write(0, 2 * MiB, 0x11);
    const first = await runCliJson<BackupJson>(dir, args());
    await snapshotRaw(image(), join(dir, 'first.raw'));
    await write(4 * MiB, 12 * MiB, 0x12);
    const paused = await pausedAt(dir, [...args(), '--bandwidth', '4M'], 'mid-read');
    expect((await containers(repo())).length).toBe(2); // the first backup's and the paused one's, with its first object
    const fault = injectFault('QEMU killed mid-read (virsh destroy)');
    await h.virsh(['destroy', dom.name]);
    paused.child.kill('SIGUSR2');
    const result = await paused.child;
    // (a) exit 1 naming the domain and that it stopped.
    expect({ code: result.exitCode, stderr: String(result.stderr) }).toEqual({
      code: 1, stderr: expect.stringMatching(new RegExp(`fleece: the backup of VM '${dom.name}' failed: domain '${dom.name}' stopped \\(libvirt reports it shutoff\\)`)),
    });
    // (d) nothing of it in the repository (no gc), no scratch file, socket directory or journal; its checkpoint is gone
    // from libvirt and its bitmap from the image (libvirt deletes no checkpoint of a shut-off domain: fleece does).
    expect(await containers(repo())).toEqual((await listed()).map((r) => r.backupId).sort());
    expect(await filesUnder(join(dir, 'state', 'scratch'))).toEqual([]);
    expect(await filesUnder(join(dir, 'run'))).toEqual([]);
    expect(await filesUnder(join(dir, 'state', 'journal'))).toEqual([]);
    expect(await checkpointNames(h, dom.name)).toEqual([first.checkpoint]);
    expect((await imageBitmaps(image())).filter((b) => b !== first.checkpoint)).toEqual([]);
    // (b) the first backup restores byte for byte.
    await restoresAs(first.disks[0]!.backupId, join(dir, 'first.raw'));

    await h.virsh(['start', dom.name]);
    await snapshotRaw(image(), join(dir, 'now.raw'));
    const next = await runCli(dir, [...args(), '--json']);
    expect({ code: next.exitCode, stderr: next.exitCode === 0 ? '' : next.stderr }).toEqual({ code: 0, stderr: '' });
    const backup = JSON.parse(next.stdout) as BackupJson;
    // (e) virsh destroy sends SIGTERM first: a QEMU that quits on it saves its bitmaps, and the chain goes on from the
    // first checkpoint; one SIGKILLed after libvirt's grace leaves it missing, and the backup reads whole, saying so.
    // Never an incremental on the failed backup's checkpoint.
    if (backup.level === 'incremental') expect(backup.incrementalFrom).toBe(first.checkpoint);
    else expect(backup.reason).toMatch(new RegExp(`checkpoint ${first.checkpoint} is not valid \\(disk vda: bitmap \\S+ (missing|inconsistent)`));
    // (c) libvirt holds no job, QEMU no export or block job; the checkpoints are those of the two committed backups.
    expect(await libvirtLeftovers(h, dom.name)).toEqual({ job: 'None', exports: [], jobs: [] });
    const all = await listed();
    expect(all).toHaveLength(2);
    expect(await checkpointNames(h, dom.name)).toEqual(all.map((r) => r.checkpoint!).sort());
    expect(await filesUnder(join(dir, 'state', 'journal'))).toEqual([]);
    expect(await containers(repo())).toEqual(all.map((r) => r.backupId).sort());
    await restoresAs(backup.disks[0]!.backupId, join(dir, 'now.raw'));
    fault.held();
  }, 300_000);

  test('virsh destroy mid-read, then the CLI SIGKILLed: the next backup of the shut-off domain cleans up, says so, and backs it up', async () => {
    const before = await listed();
    await write(8 * MiB, 4 * MiB, 0x21);
    const paused = await pausedAt(dir, [...args(), '--bandwidth', '4M'], 'mid-read');
    const fault = injectFault('QEMU killed mid-read (virsh destroy), then the CLI SIGKILLed');
    await h.virsh(['destroy', dom.name]);
    paused.child.kill('SIGKILL');
    expect((await paused.child).signal).toBe('SIGKILL');
    const killedCheckpoint = (await checkpointNames(h, dom.name)).find((cp) => !before.some((r) => r.checkpoint === cp));
    expect(killedCheckpoint).toBeDefined();
    await snapshotRaw(image(), join(dir, 'off.raw'));
    // The domain stays shut off: libvirt has no job to end and deletes no checkpoint; fleece removes its bitmaps.
    const next = await runCli(dir, args());
    expect({ code: next.exitCode, stderr: next.exitCode === 0 ? '' : next.stderr }).toEqual({ code: 0, stderr: '' });
    expect(next.stderr).toMatch(new RegExp(`cleaned up after an interrupted backup of VM '${dom.name}' \\(fleece process \\d+\\): .*checkpoint ${killedCheckpoint} \\(its backup never completed; the domain is shut off: its bitmaps removed from the images\\)`));
    expect(await checkpointNames(h, dom.name)).toEqual(before.map((r) => r.checkpoint!).sort().slice(-3));
    expect(await imageBitmaps(image())).not.toContain(killedCheckpoint);
    expect(await filesUnder(join(dir, 'state', 'scratch'))).toEqual([]);
    expect(await filesUnder(join(dir, 'state', 'journal'))).toEqual([]);
    expect(await filesUnder(join(dir, 'run'))).toEqual([]);
    const all = await listed();
    expect(all).toHaveLength(before.length + 1);
    expect(await containers(repo())).toEqual(all.map((r) => r.backupId).sort());
    await restoresAs(all[all.length - 1]!.backupId, join(dir, 'off.raw'));
    await h.virsh(['start', dom.name]);
    expect(await libvirtLeftovers(h, dom.name)).toEqual({ job: 'None', exports: [], jobs: [] });
    fault.held();
  }, 300_000);
});
