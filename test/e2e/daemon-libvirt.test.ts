// fleeced serving a libvirt domain through the same API and request as a bare QEMU: registered with its libvirt URI,
// a repository backup job (full, then incremental), restored byte for byte; unknown fields refused.
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { join } from 'node:path';
import { createImage, defineTestDomain, libvirtAvailability, sharedLibvirt, type LibvirtHarness, type TestDomain } from '../harness/libvirt.js';
import { makeTempDir, removeTempDir } from '../harness/temp-dir.js';
import { sha256File, snapshotRaw } from '../integration/backup/helpers.js';
import { daemonDirs, openEvents, startDaemonProcess, type DaemonProcess } from '../integration/daemon/daemon-process.js';
import { runCli } from './helpers.js';

const MiB = 1024 * 1024;
const available = libvirtAvailability();
const describeLibvirt = available.ok ? describe : describe.skip;

describeLibvirt('fleeced with a libvirt domain', () => {
  let dir: string;
  let h: LibvirtHarness;
  let dom: TestDomain;
  let daemon: DaemonProcess | undefined;
  beforeAll(async () => {
    dir = await makeTempDir('fleeced-libvirt');
    h = await sharedLibvirt();
    await createImage(join(dir, 'vda.qcow2'), 'qcow2', 16 * MiB);
    dom = await defineTestDomain(h, { name: `fleece-test-daemon-${process.pid}`, disks: [{ target: 'vda', path: join(dir, 'vda.qcow2'), format: 'qcow2' }] });
    daemon = await startDaemonProcess(daemonDirs(dir));
  }, 120_000);
  afterAll(async () => {
    await daemon?.stop();
    await dom?.remove();
    if (dir) await removeTempDir(dir);
  }, 60_000);

  async function finished(d: DaemonProcess, id: string): Promise<Record<string, unknown>> {
    const stream = await openEvents(d.target, `/v1/jobs/${id}/events`);
    await stream.ended;
    return (await d.request('GET', `/v1/jobs/${id}`)).body.job as Record<string, unknown>;
  }

  test('registered with its URI; full and incremental repository jobs; the restore matches; bad bodies refused', async () => {
    const d = daemon!;
    const repo = join(dir, 'repo');
    expect((await d.request('POST', '/v1/vms', { name: dom.name, connect: h.uri })).status).toBe(201);
    const listed = await d.request('GET', '/v1/vms');
    expect(listed.body.vms).toEqual([{ name: dom.name, connect: h.uri }]);

    expect((await d.request('POST', `/v1/vms/${dom.name}/backups`, { repo, bogus: 1 })).status).toBe(400);
    const relative = await d.request('POST', `/v1/vms/${dom.name}/backups`, { repo: 'relative/repo' });
    expect(relative.status).toBe(400);
    expect(relative.text).toMatch(/repo/);

    await dom.write('vda', 0, 2 * MiB, 0x61);
    await dom.qemuIo('vda', 'flush');
    const first = await d.request('POST', `/v1/vms/${dom.name}/backups`, { repo, compression: 'none' });
    expect(first.status).toBe(202);
    const full = await finished(d, first.body.job.id);
    expect(full.state).toBe('completed');
    expect(full.checkpoint).toBeDefined();
    expect((await h.virsh(['checkpoint-list', dom.name, '--name'])).trim()).toBe(full.checkpoint);

    await dom.write('vda', 4 * MiB, 64 * 1024, 0x62);
    await dom.qemuIo('vda', 'flush');
    await snapshotRaw(join(dir, 'vda.qcow2'), join(dir, 'ref.raw'));
    const second = await d.request('POST', `/v1/vms/${dom.name}/backups`, { repo, quiesce: 'try' });
    const inc = await finished(d, second.body.job.id);
    expect(inc.state).toBe('completed');
    expect(inc.incrementalFrom).toBe(full.checkpoint);
    expect(inc.dataTotal).toBe(64 * 1024);
    expect((await h.virsh(['domjobinfo', dom.name])).split('\n')[0]).toMatch(/None/);

    // `fleece backup` of a VM the running fleeced owns becomes that daemon's job (one process owns each VM).
    const viaCli = await runCli(dir, ['--daemon-socket', d.socket, 'backup', dom.name, '--repo', repo, '--json']);
    expect(viaCli.exitCode).toBe(0);
    const summary = JSON.parse(viaCli.stdout) as { level: string; controlPlane: string; incrementalFrom: string };
    expect(summary).toMatchObject({ level: 'incremental', controlPlane: 'libvirt', incrementalFrom: inc.checkpoint });
    const jobs = (await d.request('GET', '/v1/jobs')).body.jobs as { kind: string }[];
    expect(jobs.filter((j) => j.kind === 'repository')).toHaveLength(3);

    const list = await runCli(dir, ['list', '--repo', repo, '--json']);
    const records = JSON.parse(list.stdout) as { backupId: string; parentId: string | null }[];
    const newest = records.find((r) => r.parentId !== null && r.backupId !== (summary as unknown as { disks: { backupId: string }[] }).disks[0]!.backupId)!;
    const restored = await runCli(dir, ['restore', '--repo', repo, '--backup', newest.backupId, '--out', join(dir, 'r.raw'), '--format', 'raw']);
    expect(restored.exitCode).toBe(0);
    expect(await sha256File(join(dir, 'r.raw'))).toBe(await sha256File(join(dir, 'ref.raw')));
  }, 180_000);
});
