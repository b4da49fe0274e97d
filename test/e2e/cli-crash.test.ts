// A `fleece backup` killed with SIGKILL mid-read, for a bare QEMU and for a libvirt domain: QEMU (or libvirt) still
// holds the backup's job, export, nodes, bitmaps and files; the next `fleece backup` finds the dead process's
// journal, undoes exactly that, says so, and goes on incrementally from the chain as it was. Two CLIs at once on one VM:
// the loser says another backup runs.
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { existsSync } from 'node:fs';
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { useQemuSystem } from '../harness/jest-qemu.js';
import { createDisk } from '../harness/qemu.js';
import { createImage, defineTestDomain, libvirtAvailability, sharedLibvirt, type LibvirtHarness, type TestDomain } from '../harness/libvirt.js';
import { makeTempDir, removeTempDir } from '../harness/temp-dir.js';
import { leftovers, sha256File, snapshotRaw } from '../integration/backup/helpers.js';
import { runCli, runCliJson, startCli, type BackupJson } from './helpers.js';
import { injectFault } from '../faults/fault-count.js';

const MiB = 1024 * 1024;

async function until(what: string, check: () => Promise<boolean>, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await delay(100);
  }
}

describe('SIGKILL of fleece backup (bare QEMU)', () => {
  const fixture = useQemuSystem(async (dir) => {
    await createDisk(join(dir, 'a.qcow2'), { size: 32 * MiB });
    return { disks: [{ path: join(dir, 'a.qcow2'), target: 'vda' }], extraQmpSockets: 1 };
  });
  const args = () => ['backup', 'vm1', '--qmp', fixture.qemu.extraQmpPaths[0]!, '--repo', join(fixture.dir, 'repo')];
  const write = async (command: string) => {
    await fixture.qemu.guestWrite('vda', command);
    await fixture.qemu.guestWrite('vda', 'flush');
  };

  test('killed mid-read: the next backup cleans up what the journal lists and continues the chain', async () => {
    const { dir, qemu } = fixture;
    await write('write -P 0x11 0 1M');
    const full = await runCliJson<BackupJson>(dir, args());
    const before = await leftovers(qemu.client);
    await write('write -P 0x12 4M 16M');
    const child = startCli(dir, [...args(), '--bandwidth', '1M']);
    await until('the backup job', async () => (await qemu.client.execute<{ id: string }[]>('query-jobs')).length > 0);
    await delay(700);
    child.kill('SIGKILL');
    await child;
    const dirty = await leftovers(qemu.client);
    expect(dirty.jobs.length).toBeGreaterThan(0);
    expect(dirty.exports.length).toBeGreaterThan(0);
    expect(existsSync(join(dir, 'state', 'journal', 'vm1.json'))).toBe(true);

    // Another fleece touching the VM (here: the next backup) undoes what the journal lists, and says so.
    const next = await runCli(dir, args());
    expect(next.exitCode).toBe(0);
    expect(next.stderr).toMatch(/cleaned up after an interrupted backup of VM 'vm1' \(fleece process \d+\): .*export fleece-nbd-vda-/);
    expect(next.stderr).toMatch(/incremental backup of VM 'vm1'/);
    const after = await leftovers(qemu.client);
    expect(after.jobs).toEqual([]);
    expect(after.exports).toEqual([]);
    expect(after.fleeceNodes).toEqual([]);
    expect(after.bitmaps.vda!.length).toBe(before.bitmaps.vda!.length + 1); // the chain plus this backup's checkpoint
    expect(after.bitmaps.vda).toContain(full.checkpoint);
    expect(await readdir(join(dir, 'state', 'scratch'))).toEqual([]);
    expect(existsSync(join(dir, 'state', 'journal', 'vm1.json'))).toBe(false);

    await snapshotRaw(join(dir, 'a.qcow2'), join(dir, 'now.raw'));
    const listed = await runCliJson<{ backupId: string; createdAt: string }[]>(dir, ['list', '--repo', join(dir, 'repo')]);
    expect(listed).toHaveLength(2);
    const newest = listed[listed.length - 1]!;
    expect((await runCli(dir, ['restore', '--repo', join(dir, 'repo'), '--backup', newest.backupId, '--out', join(dir, 'r.raw')])).exitCode).toBe(0);
    expect(await sha256File(join(dir, 'r.raw'))).toBe(await sha256File(join(dir, 'now.raw')));
  }, 120_000);

  test('two backups of one VM started at once: one runs, the other says another backup job is running', async () => {
    const { dir } = fixture;
    await write('write -P 0x21 0 8M');
    // Both limited to 2 MB/s: the winner holds the VM for about 4 s, so the two always overlap.
    const slow = [...args(), '--full', '--bandwidth', '2M'];
    const fault = injectFault('two backups of one VM racing');
    const [a, b] = await Promise.all([startCli(dir, slow), startCli(dir, slow)]);
    const codes = [a.exitCode, b.exitCode].sort();
    expect(codes).toEqual([0, 1]);
    const loser = a.exitCode === 0 ? b : a;
    expect(String(loser.stderr)).toMatch(/another backup job is already running for VM 'vm1'/);
    fault.held();
  }, 120_000);
});

const available = libvirtAvailability();
(available.ok ? describe : describe.skip)('SIGKILL of fleece backup (libvirt domain)', () => {
  let dir: string;
  let h: LibvirtHarness;
  let dom: TestDomain;
  beforeAll(async () => {
    dir = await makeTempDir('crash-libvirt');
    h = await sharedLibvirt();
    await createImage(join(dir, 'vda.qcow2'), 'qcow2', 32 * MiB);
    dom = await defineTestDomain(h, { name: `fleece-test-crash-${process.pid}`, disks: [{ target: 'vda', path: join(dir, 'vda.qcow2'), format: 'qcow2' }] });
  }, 120_000);
  afterAll(async () => {
    await dom?.remove();
    if (dir) await removeTempDir(dir);
  });

  test('killed mid-read: libvirt keeps the job until the next backup ends it and removes its checkpoint', async () => {
    const args = ['backup', dom.name, '--connect', h.uri, '--repo', join(dir, 'repo')];
    await dom.write('vda', 0, MiB, 0x31);
    const full = await runCliJson<BackupJson>(dir, args);
    await dom.write('vda', 4 * MiB, 16 * MiB, 0x32);
    await dom.qemuIo('vda', 'flush');
    const child = startCli(dir, [...args, '--bandwidth', '1M']);
    const running = async () => !/Job type:\s*None/.test(await h.virsh(['domjobinfo', dom.name]).catch((e: unknown) => String(e)));
    await until('the libvirt job', running);
    await delay(700);
    child.kill('SIGKILL');
    await child;
    expect(await running()).toBe(true);
    const names = async () => (await h.virsh(['checkpoint-list', dom.name, '--name'])).split('\n').map((l) => l.trim()).filter(Boolean);
    expect((await names()).length).toBe(2);

    const next = await runCli(dir, args);
    expect(next.exitCode).toBe(0);
    expect(next.stderr).toMatch(/cleaned up after an interrupted backup .*libvirt backup job of domain .*checkpoint fleece-/);
    expect(next.stderr).toMatch(new RegExp(`incremental backup of VM '${dom.name}'.*checkpoint ${full.checkpoint}`));
    expect(await running()).toBe(false);
    expect((await names()).length).toBe(2); // the first backup's and this one's
    expect(await names()).toContain(full.checkpoint);
  }, 120_000);
});
