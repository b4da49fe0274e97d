// fleeced as a user runs it: the compiled daemon as a process, driven over its unix socket, with real QEMU behind it.
import { afterEach, beforeEach, describe, expect, test } from '@jest/globals';
import { execa } from 'execa';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { useQemuSystem } from '../harness/jest-qemu.js';
import { createDisk } from '../harness/qemu.js';
import { makeTempDir, removeTempDir } from '../harness/temp-dir.js';
import { leftovers, sameContent, sha256File, snapshotRaw } from '../integration/backup/helpers.js';
import { daemonDirs, openEvents, startDaemonProcess, type DaemonProcess, type SseEvent } from '../integration/daemon/daemon-process.js';

const MiB = 1024 * 1024;

const vmA = useQemuSystem(async (dir) => {
  await createDisk(join(dir, 'a.qcow2'), { size: 16 * MiB });
  return { extraQmpSockets: 1, disks: [{ path: join(dir, 'a.qcow2'), target: 'vda' }] };
});
const vmB = useQemuSystem(async (dir) => {
  await createDisk(join(dir, 'b.qcow2'), { size: 16 * MiB });
  return { extraQmpSockets: 1, disks: [{ path: join(dir, 'b.qcow2'), target: 'vda' }] };
});

let dir: string;
let daemon: DaemonProcess | undefined;

beforeEach(async () => {
  dir = await makeTempDir('fleeced');
});

afterEach(async () => {
  await daemon?.stop();
  daemon = undefined;
  await removeTempDir(dir);
});

async function start(extra: string[] = []): Promise<DaemonProcess> {
  daemon = await startDaemonProcess(daemonDirs(dir), extra);
  return daemon;
}

/** Registers both VMs with the daemon on their second QMP socket (the test keeps the first). */
async function register(d: DaemonProcess): Promise<void> {
  for (const [name, vm] of [['vm1', vmA], ['vm2', vmB]] as const) {
    const reply = await d.request('POST', '/v1/vms', { name, qmp: vm.qemu.extraQmpPaths[0] });
    expect(reply.status).toBe(201);
  }
}

async function write(fixture: typeof vmA, command: string): Promise<void> {
  await fixture.qemu.guestWrite('vda', command);
  await fixture.qemu.guestWrite('vda', 'flush');
}

function statesOf(events: SseEvent[], id: string): string[] {
  return events.filter((e) => e.event === 'state' && e.data.id === id).map((e) => e.data.state as string);
}

const ORDER = ['starting', 'running', 'ready', 'cancelling', 'completed', 'failed', 'cancelled'];

async function nbdServerRunning(fixture: typeof vmA): Promise<boolean> {
  return fixture.qemu.client.execute('nbd-server-stop').then(
    () => true,
    () => false,
  );
}

describe('fleeced', () => {
  test('two VMs back up concurrently; a second job on a VM is refused with 409; SSE events arrive in order', async () => {
    const d = await start();
    await register(d);
    await write(vmA, 'write -P 0x11 0 4M');
    await write(vmB, 'write -P 0x22 1M 6M');
    await snapshotRaw(join(vmA.dir, 'a.qcow2'), join(dir, 'a-ref.raw'));
    await snapshotRaw(join(vmB.dir, 'b.qcow2'), join(dir, 'b-ref.raw'));
    const all = await openEvents(d.target, '/v1/events');

    // vm1: a pull backup (stays ready); vm2: a push backup into a target of our choosing, both at once.
    const pull = await d.request('POST', '/v1/vms/vm1/backup-begin', { checkpointXml: '<domaincheckpoint><name>cp1</name></domaincheckpoint>' });
    expect(pull.status).toBe(202);
    expect(pull.body.job).toMatchObject({ vm: 'vm1', kind: 'pull', state: 'ready', checkpoint: 'cp1' });
    const pullJob = pull.body.job;
    const target = join(dir, 'vm2-vda.qcow2');
    const push = await d.request('POST', '/v1/vms/vm2/backup-begin', {
      backupXml: `<domainbackup mode='push'><disks><disk name='vda' type='file'><target file='${target}'/><driver type='qcow2'/></disk></disks></domainbackup>`,
    });
    expect(push.status).toBe(202);
    const pushJob = push.body.job;
    expect(pushJob).toMatchObject({ vm: 'vm2', kind: 'push' });
    const perJob = await openEvents(d.target, `/v1/jobs/${pushJob.id}/events`);

    const busy = await d.request('POST', '/v1/vms/vm1/backup-begin', {});
    expect(busy.status).toBe(409);
    expect(busy.body.error.message).toMatch(/another backup job is already running for VM 'vm1'/);

    // The push job of vm2 ends by itself while vm1's pull job is still ready: the two ran side by side.
    const pushEvents = await perJob.ended;
    const pushStates = statesOf(pushEvents, pushJob.id);
    expect(pushStates[pushStates.length - 1]).toBe('completed');
    expect(pushEvents[0].event).toBe('state');
    expect((await d.request('GET', '/v1/vms/vm1/job')).body.job).toMatchObject({ id: pullJob.id, state: 'ready' });
    expect((await sameContent(join(dir, 'b-ref.raw'), target)).same).toBe(true);

    // The pull export shows vm1's disk as it was when the job began, though the guest writes now.
    await write(vmA, 'write -P 0x99 1M 1M');
    const exp = pullJob.disks[0].export;
    expect(exp).toMatchObject({ name: 'vda', context: 'base:allocation' });
    await execa('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', exp.uri, join(dir, 'a-export.raw')]);
    expect(await sha256File(join(dir, 'a-export.raw'))).toBe(await sha256File(join(dir, 'a-ref.raw')));
    const xml = await d.request('GET', '/v1/vms/vm1/backup-xml');
    expect(xml.body.xml).toContain("<domainbackup mode='pull'>");

    const finished = await d.request('POST', `/v1/jobs/${pullJob.id}/finish`);
    expect(finished.status).toBe(200);
    expect(finished.body.job).toMatchObject({ state: 'completed', checkpoint: 'cp1' });
    const cps = await d.request('GET', '/v1/vms/vm1/checkpoints');
    expect(cps.body).toMatchObject({ current: 'cp1', checkpoints: [{ name: 'cp1', parent: null }] });
    expect(await leftovers(vmA.qemu.client)).toEqual({ fleeceNodes: [], jobs: [], exports: [], bitmaps: { vda: ['cp1'] } });

    // Every job's state events came in order and ended in a final state.
    await all.waitFor((e) => e.event === 'state' && e.data.id === pullJob.id && e.data.state === 'completed');
    for (const id of [pullJob.id, pushJob.id]) {
      const states = statesOf(all.events, id);
      expect(states.map((s) => ORDER.indexOf(s))).toEqual([...states.map((s) => ORDER.indexOf(s))].sort((a, b) => a - b));
      expect(states[0]).toBe('starting');
      expect(states[states.length - 1]).toBe('completed');
    }
    all.close();

    const history = await d.request('GET', '/v1/jobs?active=false');
    expect(history.body.jobs.map((j: { id: string }) => j.id)).toEqual(expect.arrayContaining([pullJob.id, pushJob.id]));
    expect((await d.request('GET', '/v1/vms/vm2/job?completed=true')).body.job).toMatchObject({ id: pushJob.id, state: 'completed' });
  });

  test('a daemon killed during a pull backup: the restart fails the job and leaves nothing behind in QEMU', async () => {
    let d = await start();
    await register(d);
    await write(vmA, 'write -P 0x33 0 2M');
    const begun = await d.request('POST', '/v1/vms/vm1/backup-begin', { checkpointXml: '<domaincheckpoint><name>cp1</name></domaincheckpoint>' });
    expect(begun.status).toBe(202);
    const job = begun.body.job;
    const before = await leftovers(vmA.qemu.client);
    expect(before.exports.length).toBe(1);
    expect(before.fleeceNodes.length).toBeGreaterThan(0);
    const scratch = (await d.request('GET', '/v1/vms/vm1/backup-xml')).body.xml.match(/<scratch file='([^']+)'/)[1] as string;
    expect(existsSync(scratch)).toBe(true);

    await d.kill();
    d = await start();
    const after = await d.request('GET', `/v1/jobs/${job.id}`);
    expect(after.body.job).toMatchObject({ id: job.id, state: 'failed' });
    expect(after.body.job.error).toMatch(/interrupted by a daemon restart/);
    expect(await leftovers(vmA.qemu.client)).toEqual({ fleeceNodes: [], jobs: [], exports: [], bitmaps: { vda: [] } });
    expect(await nbdServerRunning(vmA)).toBe(false);
    expect(existsSync(scratch)).toBe(false);
    expect((await d.request('GET', '/v1/vms/vm1/checkpoints')).body).toEqual({ current: null, checkpoints: [] });

    // The next backup works.
    const again = await d.request('POST', '/v1/vms/vm1/backup-begin', { checkpointXml: '<domaincheckpoint><name>cp1</name></domaincheckpoint>' });
    expect(again.status).toBe(202);
    const done = await d.request('POST', `/v1/jobs/${again.body.job.id}/finish`);
    expect(done.body.job.state).toBe('completed');
    expect(await leftovers(vmA.qemu.client)).toEqual({ fleeceNodes: [], jobs: [], exports: [], bitmaps: { vda: ['cp1'] } });
  });

  test('abort of a pull job cancels it and drops its checkpoint', async () => {
    const d = await start();
    await register(d);
    const begun = await d.request('POST', '/v1/vms/vm2/backup-begin', { checkpointXml: '<domaincheckpoint><name>cp9</name></domaincheckpoint>' });
    expect(begun.status).toBe(202);
    const aborted = await d.request('POST', '/v1/vms/vm2/job/abort');
    expect(aborted.status).toBe(200);
    expect(aborted.body.job).toMatchObject({ id: begun.body.job.id, state: 'cancelled' });
    expect(await leftovers(vmB.qemu.client)).toEqual({ fleeceNodes: [], jobs: [], exports: [], bitmaps: { vda: [] } });
    expect((await d.request('POST', `/v1/jobs/${begun.body.job.id}/abort`)).status).toBe(409);
  });

  test('repository backups of two VMs run concurrently, then list, restore (byte for byte) and verify', async () => {
    const d = await start();
    await register(d);
    await write(vmA, 'write -P 0x41 0 3M');
    await write(vmB, 'write -P 0x42 5M 2M');
    await snapshotRaw(join(vmA.dir, 'a.qcow2'), join(dir, 'a-ref.raw'));
    const repo = join(dir, 'repo');
    const jobs = [];
    for (const vm of ['vm1', 'vm2']) {
      const reply = await d.request('POST', `/v1/vms/${vm}/backups`, { repo, level: 'full', compression: 'zstd' });
      expect(reply.status).toBe(202);
      expect(reply.body.job).toMatchObject({ vm, kind: 'repository' });
      jobs.push(reply.body.job);
    }
    // A second job on vm1 is refused while the first runs; the first may already be done on a fast
    // machine, and then the second is a legitimate incremental backup that is waited for below.
    const busy = await d.request('POST', '/v1/vms/vm1/backups', { repo });
    let extra: { id: string } | undefined;
    if (busy.status === 409) expect(busy.body.error.message).toMatch(/already running for VM 'vm1'/);
    else {
      expect(busy.status).toBe(202);
      expect((await d.request('GET', `/v1/jobs/${jobs[0].id}`)).body.job.state).toBe('completed');
      extra = busy.body.job;
    }
    for (const job of jobs) {
      const stream = await openEvents(d.target, `/v1/jobs/${job.id}/events`);
      const events = await stream.ended;
      const last = events[events.length - 1].data;
      expect({ state: last.state, error: last.error }).toEqual({ state: 'completed', error: undefined });
      // Full backups read the allocated data: 3 MiB on vm1, 2 MiB on vm2.
      expect(last.dataTotal).toBe(job.vm === 'vm1' ? 3 * MiB : 2 * MiB);
      expect(last.dataProcessed).toBe(last.dataTotal);
      expect(last.checkpoint).toEqual(expect.any(String));
    }
    if (extra) {
      const events = await (await openEvents(d.target, `/v1/jobs/${extra.id}/events`)).ended;
      expect(events[events.length - 1].data.state).toBe('completed');
    }
    const listed = await d.request('GET', `/v1/repository/backups?repo=${encodeURIComponent(repo)}&vm=vm1`);
    expect(listed.status).toBe(200);
    const backups = listed.body.backups as Array<{ backupId: string; mode: string }>;
    expect(backups.map((b) => b.mode)).toEqual(extra ? ['full', 'changed-extents'] : ['full']);
    const backupId = backups[0]!.backupId;
    const restored = await d.request('POST', '/v1/repository/restore', { repo, backupId, out: join(dir, 'restored.raw') });
    expect(restored.status).toBe(200);
    expect(await sha256File(join(dir, 'restored.raw'))).toBe(await sha256File(join(dir, 'a-ref.raw')));
    const verified = await d.request('POST', '/v1/repository/verify', { repo, backupId, deep: true });
    expect(verified.status).toBe(200);
    expect(verified.body.report).toMatchObject({ ok: true });
  });
});
