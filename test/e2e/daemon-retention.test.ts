// fleeced runs a VM's own retention policy after each successful backup job (`fleece vm add --retention`), through
// the same runBackup as the CLI: old groups pruned by the keep rules, the checkpoints they ended at deleted from QEMU.
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { join } from 'node:path';
import { useQemuSystem } from '../harness/jest-qemu.js';
import { createDisk } from '../harness/qemu.js';
import { makeTempDir, removeTempDir } from '../harness/temp-dir.js';
import { leftovers } from '../integration/backup/helpers.js';
import { daemonDirs, openEvents, startDaemonProcess, type DaemonProcess } from '../integration/daemon/daemon-process.js';
import { runCli, runCliJson } from './helpers.js';

const MiB = 1024 * 1024;

describe('fleeced: a VM\'s retention policy after each backup', () => {
  const vm = useQemuSystem(async (d) => {
    await createDisk(join(d, 'a.qcow2'), { size: 4 * MiB });
    return { extraQmpSockets: 1, disks: [{ path: join(d, 'a.qcow2'), target: 'vda' }] };
  }, 'all');
  let dir: string;
  let daemon: DaemonProcess | undefined;
  beforeAll(async () => {
    dir = await makeTempDir('fleeced-retention');
  });
  afterAll(async () => {
    await daemon?.stop();
    await removeTempDir(dir);
  });

  test('keep-last 2, checkpoints 1: after four full backups two groups and one checkpoint remain', async () => {
    const added = await runCli(dir, ['vm', 'add', 'vm1', '--qmp', vm.qemu.extraQmpPaths[0]!, '--retention', 'last=2,checkpoints=1']);
    expect([added.exitCode, added.stderr]).toEqual([0, expect.stringContaining('registered')]);
    daemon = await startDaemonProcess(daemonDirs(dir));
    const repo = join(dir, 'repo');
    const checkpoints: string[] = [];
    for (let i = 0; i < 4; i++) {
      await vm.qemu.guestWrite('vda', `write -P 0x${(0x21 + i).toString(16)} ${i * 256}k 64k`);
      const reply = await daemon.request('POST', '/v1/vms/vm1/backups', { repo, level: 'full' });
      expect(reply.status).toBe(202);
      const events = await (await openEvents(daemon.target, `/v1/jobs/${reply.body.job.id}/events`)).ended;
      const last = events[events.length - 1]!.data;
      expect({ state: last.state, error: last.error }).toEqual({ state: 'completed', error: undefined });
      checkpoints.push(last.checkpoint as string);
    }
    const listed = await runCliJson<{ checkpoint: string }[]>(dir, ['list', '--repo', repo, '--vm', 'vm1']);
    expect(listed.map((r) => r.checkpoint)).toEqual(checkpoints.slice(-2));
    expect((await leftovers(vm.qemu.client)).bitmaps).toEqual({ vda: [checkpoints[3]] });
  }, 300_000);
});
