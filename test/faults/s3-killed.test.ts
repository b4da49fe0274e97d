// Fault suite: `fleece backup` of a bare QEMU into s3:// SIGKILLed mid-read, one data object of it in the bucket.
// The journal recorded the backup's container (s3 layout: `volume_<volume>/<timestamp>`, which does not follow from
// the backup id) before its first object, so the next backup removes the killed writer's objects and lease itself,
// and says so: no gc, no lease to wait out. Then (b)–(e) as in cli-phases.test.ts.
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { randomUUID } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { useQemuSystem } from '../harness/jest-qemu.js';
import { createDisk } from '../harness/qemu.js';
import { createBucket, sharedSwift, swiftAvailability, type SwiftHarness } from '../harness/swift.js';
import { snapshotRaw } from '../integration/backup/helpers.js';
import { runCli, runCliJson, type BackupJson } from '../e2e/helpers.js';
import { injectFault } from './fault-count.js';
import { bucketKeys, firstStrayDataObject, holdsAfterS3Fault, pausedAt, useS3Profile, type S3FaultCase } from './s3-cli.js';

const MiB = 1024 * 1024;
const availability = swiftAvailability();
const describeS3 = availability.ok ? describe : describe.skip;
const title = availability.ok ? 'fault suite: a backup to s3:// SIGKILLed mid-read' : `fault suite: a backup to s3:// SIGKILLed mid-read (skipped: ${availability.why})`;

describeS3(title, () => {
  const fixture = useQemuSystem(async (dir) => {
    await createDisk(join(dir, 'a.qcow2'), { size: 64 * MiB });
    return { disks: [{ path: join(dir, 'a.qcow2'), target: 'vda' }], extraQmpSockets: 1 };
  }, 'all');
  const bucket = `fleece-killed-${randomUUID().slice(0, 8)}`;
  const repo = `s3://${bucket}`;
  let h: SwiftHarness;
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
    restoreEnv = await useS3Profile(fixture.dir, h, h.endpoint);
  }, 180_000); // the shared Swift may take a minute to start on a loaded machine
  afterAll(() => restoreEnv());

  test('a full backup to start the chain', async () => {
    await write('write -P 0x11 0 4M');
    first = await runCliJson<BackupJson>(fixture.dir, args());
    await snapshotRaw(join(fixture.dir, 'a.qcow2'), join(fixture.dir, 'first.raw'));
    expect(first.level).toBe('full');
  }, 180_000);

  test('SIGKILL mid-read: the next backup removes the killed writer\'s objects and lease (journal), says so, goes on incrementally', async () => {
    // 20 MiB dirty: the first piece read is a whole 16 MiB object, stored while the backup is paused.
    await write('write -P 0x22 0 20M');
    const { child } = await pausedAt(fixture.dir, args(), 'mid-read');
    const stray = await firstStrayDataObject(h, bucket, [first.disks[0]!.backupId]);
    const fault = injectFault('SIGKILL of the CLI mid-read, s3 layout');
    child.kill('SIGKILL');
    expect((await child).signal).toBe('SIGKILL');

    // The journal names the killed backup and its container (recorded before its first object).
    const journal = JSON.parse(await readFile(join(fixture.dir, 'state', 'journal', 'vm1.json'), 'utf8')) as { effects: { effect: { kind: string; backupId?: string; container?: string } }[] };
    const killed = journal.effects.map((e) => e.effect).find((e) => e.kind === 'repository-backup')!;
    expect(stray.startsWith(`${killed.container}/`)).toBe(true);
    expect(stray).toContain(`_backup_${killed.backupId}-`);
    const before = (await bucketKeys(h, bucket)).filter((k) => k.includes(killed.backupId!));
    expect(before).toContain(`${killed.container}/fleece_lease_${killed.backupId}`);

    await snapshotRaw(join(fixture.dir, 'a.qcow2'), join(fixture.dir, 'next.raw'));
    const next = await runCli(fixture.dir, [...args(), '--json']);
    const warnings = next.exitCode === 0 ? (JSON.parse(next.stdout) as { warnings: string[] }).warnings : [next.stderr];
    expect(warnings.join('\n')).toMatch(new RegExp(`cleaned up after an interrupted backup of VM 'vm1' \\(fleece process ${child.pid}\\): .*${before.length} objects of backup ${killed.backupId}, never committed, removed from ${repo}`));
    expect((await bucketKeys(h, bucket)).filter((k) => k.includes(killed.backupId!))).toEqual([]);
    await holdsAfterS3Fault(c(), next, join(fixture.dir, 'next.raw'));
    fault.held();
  }, 300_000);
});
