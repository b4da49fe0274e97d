// The job manager in process against real QEMU: the parallel-job limit queues jobs, records follow every
// transition on disk, a queued job can be aborted, and state events come in order.
import { afterEach, beforeEach, describe, expect, test } from '@jest/globals';
import { existsSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { JobManager, type JobEvent } from '../../../src/app/job-manager.js';
import { JobStore } from '../../../src/app/jobs/job-store.js';
import { useQemuSystem } from '../../harness/jest-qemu.js';
import { createDisk } from '../../harness/qemu.js';
import { makeTempDir, removeTempDir } from '../../harness/temp-dir.js';
import { leftovers } from '../backup/helpers.js';

const MiB = 1024 * 1024;
const vmA = useQemuSystem(async (dir) => {
  await createDisk(join(dir, 'a.qcow2'), { size: 8 * MiB });
  return { extraQmpSockets: 1, disks: [{ path: join(dir, 'a.qcow2'), target: 'vda' }] };
});
const vmB = useQemuSystem(async (dir) => {
  await createDisk(join(dir, 'b.qcow2'), { size: 8 * MiB });
  return { extraQmpSockets: 1, disks: [{ path: join(dir, 'b.qcow2'), target: 'vda' }] };
});

let dir: string;
let manager: JobManager | undefined;

beforeEach(async () => {
  dir = await makeTempDir('jobs');
});
afterEach(async () => {
  await manager?.close();
  manager = undefined;
  await removeTempDir(dir);
});

async function open(maxParallelJobs: number): Promise<JobManager> {
  manager = await JobManager.open({ stateDir: join(dir, 'state'), configDir: join(dir, 'config'), runDir: join(dir, 'run'), maxParallelJobs, progressIntervalMs: 50 });
  await manager.registry.add({ name: 'vm1', qmp: vmA.qemu.extraQmpPaths[0] });
  await manager.registry.add({ name: 'vm2', qmp: vmB.qemu.extraQmpPaths[0] });
  return manager;
}

async function record(id: string): Promise<{ info: { state: string; endedAt?: string }; recovery: { tag?: string } }> {
  return JSON.parse(await readFile(join(dir, 'state', 'jobs', `${id}.json`), 'utf8'));
}

describe('JobManager', () => {
  test('with one slot a second VM waits in starting and runs when the first job ends', async () => {
    const m = await open(1);
    const events: JobEvent[] = [];
    m.subscribe((e) => events.push(e));
    await vmB.qemu.guestWrite('vda', 'write -P 0x5 0 2M');
    const first = await m.beginBackup('vm1', {});
    expect(first.state).toBe('ready');
    expect((await record(first.id)).info.state).toBe('ready');
    const second = await m.beginBackup('vm2', {
      backupXml: `<domainbackup mode='push'><disks><disk name='vda' type='file'><target file='${join(dir, 'b.qcow2')}'/></disk></disks></domainbackup>`,
    });
    expect(second.state).toBe('starting');
    expect(m.list({ active: true }).map((j) => j.vm)).toEqual(['vm1', 'vm2']);

    const finished = await m.finish(first.id);
    expect(finished.state).toBe('completed');
    const done = await m.waitEnded(second.id);
    expect(done).toMatchObject({ state: 'completed', kind: 'push' });
    expect(done.dataProcessed).toBeGreaterThanOrEqual(2 * MiB);
    expect(done.endedAt).toEqual(expect.any(String));
    expect((await record(second.id)).info).toMatchObject({ state: 'completed', endedAt: done.endedAt });

    // vm2's job only ran after vm1's ended.
    const order = events.filter((e) => e.type === 'state').map((e) => `${e.job.vm}:${e.job.state}`);
    expect(order.indexOf('vm2:running')).toBeGreaterThan(order.indexOf('vm1:completed'));
    expect(order.filter((s) => s.startsWith('vm2'))).toEqual(['vm2:starting', 'vm2:running', 'vm2:completed']);
    expect(await leftovers(vmB.qemu.client)).toEqual({ fleeceNodes: [], jobs: [], exports: [], bitmaps: { vda: [] } });
  });

  test('a queued job can be aborted before it starts; finish is refused for push jobs', async () => {
    const m = await open(1);
    const first = await m.beginBackup('vm1', {});
    const queued = await m.beginBackup('vm2', {});
    expect(queued.state).toBe('starting');
    const aborted = await m.abort(queued.id);
    expect(aborted).toMatchObject({ state: 'cancelled', error: 'aborted before it started' });
    expect((await record(queued.id)).info.state).toBe('cancelled');
    await expect(m.abort(queued.id)).rejects.toThrow(/already ended/);
    expect(m.vmJob('vm2')).toBeNull();
    expect(m.vmJob('vm2', true)).toMatchObject({ id: queued.id });
    await m.abort(first.id);

    const push = await m.beginBackup('vm1', {
      backupXml: `<domainbackup mode='push'><disks><disk name='vda' type='file'><target file='${join(dir, 'a.qcow2')}'/></disk></disks></domainbackup>`,
    });
    await expect(m.finish(push.id)).rejects.toThrow(/push job; it ends by itself/);
    expect((await m.waitEnded(push.id)).state).toBe('completed');
  });

  test('a record left running with its QEMU gone is failed on open; its files are removed', async () => {
    const stateDir = join(dir, 'state');
    const scratch = join(dir, 'left.scratch.qcow2');
    await writeFile(scratch, 'x');
    const store = new JobStore(stateDir);
    await store.save({
      version: 1,
      info: { id: 'j1', vm: 'gone', kind: 'pull', state: 'ready', startedAt: new Date().toISOString(), dataTotal: 0, dataProcessed: 0, dataRemaining: 0, elapsedMs: 0, disks: [] },
      recovery: { qmp: join(dir, 'no-such-qmp.sock'), tag: 'abc123', createdFiles: [scratch], nbdServer: true },
    });
    manager = await JobManager.open({ stateDir, configDir: join(dir, 'config'), runDir: join(dir, 'run') });
    const job = manager.get('j1');
    expect(job.state).toBe('failed');
    expect(job.error).toMatch(/interrupted by a daemon restart \(was ready\).*was not reachable/);
    expect(existsSync(scratch)).toBe(false);
    expect((await record('j1')).info.state).toBe('failed');
    expect(manager.activeCount()).toBe(0);
  });
});
