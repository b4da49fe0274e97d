// fleeced running backups through an external provider: the same request as `fleece backup VM --provider NAME`
// (POST /v1/vms/:vm/backups with `provider`), as a job with its events, through the daemon's own QMP connection —
// full, incremental reusing the bitmap (the provider's older checkpoint deleted), restore byte-identical, a provider
// hanging in backup-vm cancelled with abort (nothing left in QEMU, the bitmap not consumed), and `fleece backup
// --provider` of the daemon's VM run as its job.
import { afterEach, beforeEach, describe, expect, test } from '@jest/globals';
import { chmod, readFile, readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { useQemuSystem } from '../harness/jest-qemu.js';
import { createDisk } from '../harness/qemu.js';
import { makeTempDir, removeTempDir } from '../harness/temp-dir.js';
import { leftovers, sha256File, snapshotRaw } from '../integration/backup/helpers.js';
import { daemonDirs, openEvents, startDaemonProcess, type DaemonProcess } from '../integration/daemon/daemon-process.js';
import { runCli } from './helpers.js';

const MiB = 1024 * 1024;
const FIXTURES = join(process.cwd(), 'fixtures', 'providers');

const vm = useQemuSystem(async (dir) => {
  await createDisk(join(dir, 'a.qcow2'), { size: 8 * MiB });
  return { extraQmpSockets: 1, disks: [{ path: join(dir, 'a.qcow2'), target: 'vda' }] };
});

let dir: string;
let daemon: DaemonProcess | undefined;

beforeEach(async () => {
  dir = await makeTempDir('fleeced-provider');
});

afterEach(async () => {
  await daemon?.stop();
  daemon = undefined;
  await removeTempDir(dir);
});

async function write(command: string): Promise<void> {
  await vm.qemu.guestWrite('vda', command);
  await vm.qemu.guestWrite('vda', 'flush');
}

/** Pids of processes carrying this test's marker in their environment (the hanging provider, until stopped). */
async function markedProcesses(marker: string): Promise<number[]> {
  const pids: number[] = [];
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const environ = await readFile(`/proc/${entry}/environ`, 'utf8').catch(() => '');
    if (environ.split('\0').includes(`FLEECE_TEST_MARK=${marker}`)) pids.push(Number(entry));
  }
  return pids;
}

describe('fleeced with a backup provider', () => {
  test('provider jobs: full, incremental (older checkpoint deleted), restore byte-identical; abort of a hanging provider cleans up', async () => {
    daemon = await startDaemonProcess(daemonDirs(dir));
    const d = daemon;
    expect((await d.request('POST', '/v1/vms', { name: 'vm1', qmp: vm.qemu.extraQmpPaths[0] })).status).toBe(201);
    await writeFile(join(dir, 'nbdcopy.json'), JSON.stringify({ directory: join(dir, 'store') }));
    expect((await runCli(dir, ['provider', 'add', 'nc1', '--exec', join(FIXTURES, 'nbdcopy-provider'), '--config', join(dir, 'nbdcopy.json')])).exitCode).toBe(0);
    // The same provider hanging in backup-vm (the fixture's knob, set by a wrapper).
    const hanging = join(dir, 'hanging-provider');
    await writeFile(hanging, `#!/bin/sh\nFLEECE_TEST_MARK=${dir} FLEECE_FIXTURE_FAIL=backup-vm:hang exec ${join(FIXTURES, 'nbdcopy-provider')} "$@"\n`);
    await chmod(hanging, 0o755);
    expect((await runCli(dir, ['provider', 'add', 'hang1', '--exec', hanging, '--config', join(dir, 'nbdcopy.json')])).exitCode).toBe(0);

    const backup = async (provider: string) => {
      const reply = await d.request('POST', '/v1/vms/vm1/backups', { provider });
      expect(reply.status).toBe(202);
      expect(reply.body.job).toMatchObject({ vm: 'vm1', kind: 'provider' });
      const events = await (await openEvents(d.target, `/v1/jobs/${reply.body.job.id}/events`)).ended;
      return events[events.length - 1]!.data as { state: string; error?: string; dataTotal: number; dataProcessed: number; checkpoint?: string; incrementalFrom?: string; result: { backupId: string; checkpoint: string; checkpointsDeleted: string[]; disks: { bitmapMode: string; dirtyBytes: number }[] } };
    };

    await write('write -P 0x41 0 1M');
    const full = await backup('nc1');
    expect({ state: full.state, error: full.error }).toEqual({ state: 'completed', error: undefined });
    expect(full.result.disks[0]).toMatchObject({ bitmapMode: 'new', dirtyBytes: 8 * MiB });
    expect(full.dataProcessed).toBe(full.dataTotal);

    await write('write -P 0x42 2M 64k');
    await snapshotRaw(join(vm.dir, 'a.qcow2'), join(dir, 'p1.raw'));
    const inc = await backup('nc1');
    expect(inc.state).toBe('completed');
    expect(inc.result.disks[0]).toMatchObject({ bitmapMode: 'reuse', dirtyBytes: 64 * 1024 });
    expect(inc.incrementalFrom).toBe(full.result.checkpoint);
    // The provider's chain starts from the new checkpoint only: the one before is gone from QEMU.
    expect(inc.result.checkpointsDeleted).toEqual([full.result.checkpoint]);
    const clean = await leftovers(vm.qemu.client);
    expect(clean).toMatchObject({ fleeceNodes: [], jobs: [], exports: [], bitmaps: { vda: [inc.result.checkpoint] } });

    const restored = await runCli(dir, ['restore', '--provider', 'nc1', '--backup', inc.result.backupId, '--out', join(dir, 'r1.raw')]);
    expect(restored.exitCode).toBe(0);
    expect(await sha256File(join(dir, 'r1.raw'))).toBe(await sha256File(join(dir, 'p1.raw')));

    // Abort while the provider hangs in backup-vm: cancelled, the provider stopped, QEMU as before.
    await write('write -P 0x43 4M 64k');
    const started = await d.request('POST', '/v1/vms/vm1/backups', { provider: 'hang1' });
    expect(started.status).toBe(202);
    expect(started.body.job.state).toBe('running');
    const aborted = await d.request('POST', `/v1/jobs/${started.body.job.id}/abort`);
    expect(aborted.status).toBe(200);
    expect(aborted.body.job.state).toBe('cancelled');
    expect(await leftovers(vm.qemu.client)).toEqual(clean);
    expect(await markedProcesses(dir)).toEqual([]);
    // `fleece backup --provider` of a VM the daemon owns is the daemon's job (the same request), summary and all.
    const viaCli = await runCli(dir, ['--daemon-socket', daemonDirs(dir).socket, 'backup', 'vm1', '--provider', 'nc1', '--json']);
    expect(viaCli.exitCode).toBe(0);
    const next = JSON.parse(viaCli.stdout) as typeof inc.result;
    expect(next.disks[0]).toMatchObject({ bitmapMode: 'reuse', dirtyBytes: 64 * 1024 });
    expect(next.checkpointsDeleted).toEqual([inc.result.checkpoint]);
    const jobs = (await d.request('GET', '/v1/jobs?vm=vm1')).body.jobs as { kind: string; state: string; result?: { backupId: string } }[];
    expect(jobs.map((j) => `${j.kind} ${j.state}`)).toEqual(['provider completed', 'provider completed', 'provider cancelled', 'provider completed']);
    expect(jobs[3]!.result?.backupId).toBe(next.backupId);
  }, 120_000);
});
