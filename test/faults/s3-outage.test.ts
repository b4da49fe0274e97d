// Fault suite: the S3 server stopped in the middle of `fleece backup` of a bare QEMU into s3://. The CLI talks to a
// private Swift proxy (the shared one serves the other tests); the backup pauses mid-read once a data object of it
// is stored, the proxy is killed, the backup goes on: after its retries it fails (exit 1) naming the endpoint, and
// says that what it wrote could not be removed. Its journal keeps that backup (and its container): once the server is
// back, the next backup removes those objects and its lease itself, and says so (no gc), then (b)–(e).
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { randomUUID } from 'node:crypto';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { useQemuSystem } from '../harness/jest-qemu.js';
import { createDisk } from '../harness/qemu.js';
import { createBucket, privateProxy, sharedSwift, swiftAvailability, type PrivateProxy, type SwiftHarness } from '../harness/swift.js';
import { snapshotRaw } from '../integration/backup/helpers.js';
import { runCli, runCliJson, type BackupJson } from '../e2e/helpers.js';
import { injectFault } from './fault-count.js';
import { bucketKeys, firstStrayDataObject, holdsAfterS3Fault, pausedAt, useS3Profile, type S3FaultCase } from './s3-cli.js';

const MiB = 1024 * 1024;
const availability = swiftAvailability();
const describeS3 = availability.ok ? describe : describe.skip;
const title = availability.ok ? 'fault suite: the S3 server stopped mid-backup' : `fault suite: the S3 server stopped mid-backup (skipped: ${availability.why})`;

describeS3(title, () => {
  const fixture = useQemuSystem(async (dir) => {
    await createDisk(join(dir, 'a.qcow2'), { size: 64 * MiB });
    return { disks: [{ path: join(dir, 'a.qcow2'), target: 'vda' }], extraQmpSockets: 1 };
  }, 'all');
  const bucket = `fleece-outage-${randomUUID().slice(0, 8)}`;
  const repo = `s3://${bucket}`;
  let h: SwiftHarness;
  let proxy: PrivateProxy | undefined;
  let restoreEnv: () => void = () => undefined;
  let first: BackupJson;
  const args = () => ['backup', 'vm1', '--qmp', fixture.qemu.extraQmpPaths[0]!, '--repo', repo];
  const write = async (command: string) => {
    await fixture.qemu.guestWrite('vda', command);
    await fixture.qemu.guestWrite('vda', 'flush');
  };
  const c = (): S3FaultCase => ({ fixture, h, bucket, repo, args, first: () => first, firstRaw: () => join(fixture.dir, 'first.raw') });

  beforeAll(async () => {
    h = await sharedSwift();
    await createBucket(h, bucket);
    proxy = await privateProxy(h);
    restoreEnv = await useS3Profile(fixture.dir, h, proxy.endpoint);
  }, 180_000); // the shared Swift may take a minute to start on a loaded machine
  afterAll(async () => {
    restoreEnv();
    await proxy?.stop();
  });

  test('a full backup to start the chain', async () => {
    await write('write -P 0x11 0 4M');
    first = await runCliJson<BackupJson>(fixture.dir, args());
    await snapshotRaw(join(fixture.dir, 'a.qcow2'), join(fixture.dir, 'first.raw'));
    expect(first.level).toBe('full');
  }, 180_000);

  test('the server stopped mid-read: exit 1 naming the endpoint; nothing listed; the next backup removes what it left, goes on incrementally', async () => {
    // 20 MiB dirty: the first piece read is a whole 16 MiB object, stored while the backup is paused.
    await write('write -P 0x33 0 20M');
    const { child } = await pausedAt(fixture.dir, args(), 'mid-read');
    const stray = await firstStrayDataObject(h, bucket, [first.disks[0]!.backupId]);
    const failedId = /_backup_([A-Za-z0-9-]+)-\d{5}$/.exec(stray)![1]!;
    const fault = injectFault('S3 server stopped mid-backup');
    await proxy!.stop();
    child.kill('SIGUSR2');
    const result = await child;
    const stderr = String(result.stderr);
    expect(result.exitCode).toBe(1);
    expect(stderr).toMatch(new RegExp(`s3://${bucket} at ${proxy!.endpoint}: cannot reach the S3 endpoint ${proxy!.endpoint}`));
    // Its abort could not remove what it wrote (the server is away): it says so, and who removes it.
    expect(stderr).toMatch(new RegExp(`up to \\d+ object\\(s\\) the failed backup ${failedId} wrote could not be removed for sure from s3://${bucket} \\(.*\\): the next backup of VM 'vm1'`));

    await proxy!.start();
    expect((await runCliJson<{ backupId: string }[]>(fixture.dir, ['list', '--repo', repo])).map((r) => r.backupId)).toEqual([first.disks[0]!.backupId]);
    const left = (await bucketKeys(h, bucket)).filter((k) => k.includes(failedId));
    expect(left).toContain(stray);

    await snapshotRaw(join(fixture.dir, 'a.qcow2'), join(fixture.dir, 'next.raw'));
    const next = await runCli(fixture.dir, [...args(), '--json']);
    const warnings = next.exitCode === 0 ? (JSON.parse(next.stdout) as { warnings: string[] }).warnings : [next.stderr];
    expect(warnings.join('\n')).toMatch(new RegExp(`cleaned up after an interrupted backup of VM 'vm1' \\(fleece process ${child.pid}\\): ${left.length} objects of backup ${failedId}, never committed, removed from ${repo}`));
    expect((await bucketKeys(h, bucket)).filter((k) => k.includes(failedId))).toEqual([]);
    await holdsAfterS3Fault(c(), next, join(fixture.dir, 'next.raw'));
    fault.held();
  }, 300_000);

  test('the server still away when the next fleece cleans up: it says what stays, the VM is free, gc removes it once the server is back', async () => {
    await write('write -P 0x44 0 20M');
    const committed = (await runCliJson<{ backupId: string }[]>(fixture.dir, ['list', '--repo', repo])).map((r) => r.backupId);
    const { child } = await pausedAt(fixture.dir, args(), 'mid-read');
    const stray = await firstStrayDataObject(h, bucket, committed);
    const failedId = /_backup_([A-Za-z0-9-]+)-\d{5}$/.exec(stray)![1]!;
    const fault = injectFault('S3 server stopped mid-backup, still away at the cleanup');
    await proxy!.stop();
    child.kill('SIGUSR2');
    expect((await child).exitCode).toBe(1);

    // A writer that aborted committed nothing: an unreachable server does not keep its journal (and the VM) blocked.
    const recovered = await runCli(fixture.dir, ['recover', 'vm1']);
    expect({ code: recovered.exitCode, stderr: recovered.stderr }).toEqual({ code: 0, stderr: '' });
    expect(recovered.stdout).toMatch(new RegExp(`the objects the failed backup ${failedId} left in ${repo} could not be removed \\(.*cannot reach the S3 endpoint ${proxy!.endpoint}.*\\): \`fleece gc\` removes them`));
    expect(existsSync(join(fixture.dir, 'state', 'journal', 'vm1.json'))).toBe(false);

    await proxy!.start();
    const left = (await bucketKeys(h, bucket)).filter((k) => k.includes(failedId));
    expect(left).toContain(stray);
    // Swift lists LastModified rounded up to the next second: until then --grace 0 takes the objects for newer than now.
    await delay(1100);
    // Its lease names this host and a process that is gone: it protects nothing.
    const gc = await runCliJson<{ removed: { name: string }[] }>(fixture.dir, ['gc', '--repo', repo, '--grace', '0']);
    expect(gc.removed.map((r) => r.name).sort()).toEqual(left);
    await snapshotRaw(join(fixture.dir, 'a.qcow2'), join(fixture.dir, 'next2.raw'));
    await holdsAfterS3Fault(c(), await runCli(fixture.dir, [...args(), '--json']), join(fixture.dir, 'next2.raw'));
    fault.held();
  }, 300_000);
});
