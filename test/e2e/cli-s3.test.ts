// `fleece backup | list | restore | verify | delete | gc --repo s3://BUCKET` as a user runs them, against real QEMU and a
// real S3 server (Swift s3api), credentials and endpoint from an AWS profile; and an independent Cinder S3 reader
// (test/compat/cinder_restore.py restore-s3, boto3) restoring what fleece wrote.
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { execFileSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { useQemuSystem } from '../harness/jest-qemu.js';
import { createDisk } from '../harness/qemu.js';
import { createBucket, sharedSwift, swiftAvailability, type SwiftHarness } from '../harness/swift.js';
import { snapshotRaw, sha256File } from '../integration/backup/helpers.js';
import { S3ObjectStore } from '../../src/repository/store/s3-store.js';
import { runCli, runCliJson, type BackupJson } from './helpers.js';

const MiB = 1024 * 1024;
const availability = swiftAvailability();
const describeS3 = availability.ok ? describe : describe.skip;
const title = availability.ok ? 'fleece with --repo s3://' : `fleece with --repo s3:// (skipped: ${availability.why})`;
const PROFILE_VARS = ['AWS_PROFILE', 'AWS_CONFIG_FILE', 'AWS_SHARED_CREDENTIALS_FILE', 'AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY', 'AWS_ENDPOINT_URL_S3', 'AWS_ENDPOINT_URL', 'AWS_REGION', 'AWS_EC2_METADATA_DISABLED'];

describeS3(title, () => {
  const fixture = useQemuSystem(async (dir) => {
    await createDisk(join(dir, 'a.qcow2'), { size: 32 * MiB });
    return { disks: [{ path: join(dir, 'a.qcow2'), target: 'vda' }], extraQmpSockets: 1 };
  }, 'all');
  let h: SwiftHarness;
  const bucket = `fleece-e2e-${randomUUID().slice(0, 8)}`;
  const repo = `s3://${bucket}`;
  const saved: Record<string, string | undefined> = {};

  beforeAll(async () => {
    h = await sharedSwift();
    await createBucket(h, bucket);
    // The CLI (a child process) finds credentials, endpoint and region in a profile, as the AWS tools do.
    const aws = join(fixture.dir, 'aws');
    await mkdir(aws, { recursive: true });
    await writeFile(join(aws, 'config'), `[profile fleece-e2e]\nregion = ${h.region}\nendpoint_url = ${h.endpoint}\n`);
    await writeFile(join(aws, 'credentials'), `[fleece-e2e]\naws_access_key_id = ${h.accessKeyId}\naws_secret_access_key = ${h.secretAccessKey}\n`);
    for (const k of PROFILE_VARS) saved[k] = process.env[k];
    for (const k of PROFILE_VARS) delete process.env[k];
    Object.assign(process.env, {
      AWS_PROFILE: 'fleece-e2e', AWS_CONFIG_FILE: join(aws, 'config'), AWS_SHARED_CREDENTIALS_FILE: join(aws, 'credentials'), AWS_EC2_METADATA_DISABLED: 'true',
    });
  });
  afterAll(() => {
    for (const k of PROFILE_VARS) {
      if (saved[k] === undefined) delete process.env[k];
      else process.env[k] = saved[k];
    }
  });

  test('full + incremental into s3://, both restored byte-identical (by fleece and by a Cinder S3 reader), verify, delete, gc', async () => {
    const { dir, qemu } = fixture;
    const write = async (command: string) => {
      await qemu.guestWrite('vda', command);
      await qemu.guestWrite('vda', 'flush');
    };
    const backup = () => runCliJson<BackupJson>(dir, ['backup', 'vm1', '--qmp', qemu.extraQmpPaths[0]!, '--repo', repo]);

    await write('write -P 0x11 0 4M');
    await write('write -P 0x12 20M 1M');
    await snapshotRaw(join(dir, 'a.qcow2'), join(dir, 'p0.raw'));
    const full = await backup();
    expect(full.level).toBe('full');
    expect(full.disks[0]!.bytesRead).toBe(5 * MiB); // the rest is holes: not read, not stored

    await write('write -P 0x21 1M 64k');
    await write('write -P 0x22 30M 128k');
    await snapshotRaw(join(dir, 'a.qcow2'), join(dir, 'p1.raw'));
    const inc = await backup();
    expect(inc.level).toBe('incremental');
    expect(inc.disks[0]!.parentId).toBe(full.disks[0]!.backupId);
    expect(inc.disks[0]!.bytesRead).toBe(192 * 1024);

    const ids = [full.disks[0]!.backupId, inc.disks[0]!.backupId];
    const listed = await runCliJson<{ backupId: string; parentId: string | null; container: string }[]>(dir, ['list', '--repo', repo]);
    expect(listed.map((r) => [r.backupId, r.parentId])).toEqual([[ids[0], null], [ids[1], ids[0]]]);
    expect(listed.every((r) => /^volume_[^/]+\/\d{14}$/.test(r.container))).toBe(true); // Cinder's S3 naming

    for (const [i, id] of ids.entries()) {
      const out = join(dir, `restored-${i}.raw`);
      const restored = await runCli(dir, ['restore', '--repo', repo, '--backup', id!, '--out', out]);
      expect(restored.exitCode).toBe(0);
      expect(await sha256File(out)).toBe(await sha256File(join(dir, `p${i}.raw`)));
      const verified = await runCli(dir, ['verify', '--repo', repo, '--backup', id!, '--deep']);
      expect(verified.exitCode).toBe(0);
      expect(verified.stdout).toContain('OK');
    }

    // Cinder's reading of the bucket: an independent reader (boto3), keys and _metadata as Cinder's S3 driver has them.
    const cinderOut = join(dir, 'cinder.raw');
    const printed = execFileSync('/usr/bin/python3', [join(process.cwd(), 'test/compat/cinder_restore.py'), 'restore-s3', h.endpoint, bucket, ids[1]!, cinderOut, String(32 * MiB)], {
      encoding: 'utf8', env: { ...process.env, AWS_ACCESS_KEY_ID: h.accessKeyId, AWS_SECRET_ACCESS_KEY: h.secretAccessKey, AWS_REGION: h.region },
    });
    expect(printed).toContain(`restored ${ids[1]} (2 backups)`);
    expect(await sha256File(cinderOut)).toBe(await sha256File(join(dir, 'p1.raw')));

    // delete the incremental; gc then removes only what no backup references (a stray object), never the full's.
    const deleted = await runCliJson<{ deleted: string[] }>(dir, ['delete', '--repo', repo, '--backup', ids[1]!]);
    expect(deleted.deleted).toEqual([ids[1]]);
    const stray = new S3ObjectStore({ bucket, endpoint: h.endpoint, credentials: { accessKeyId: h.accessKeyId, secretAccessKey: h.secretAccessKey } });
    try {
      await stray.put('volume_stray/20260101000000', `az_nova_backup_${randomUUID()}-00001`, Buffer.from('left by a crash'));
    } finally {
      stray.destroy();
    }
    // Swift's s3api lists LastModified rounded UP to the next second (S3Timestamp.s3xmlformat ceil()): until then the
    // stray looks newer than "now", and even --grace 0 leaves an object from the future alone.
    await delay(1100);
    const gc = await runCliJson<{ removed: { name: string }[] }>(dir, ['gc', '--repo', repo, '--grace', '0']);
    expect(gc.removed.map((r) => r.name)).toEqual([expect.stringMatching(/^volume_stray\/20260101000000\/az_nova_backup_.*-00001$/)]);
    expect((await runCliJson<{ backupId: string }[]>(dir, ['list', '--repo', repo])).map((r) => r.backupId)).toEqual([ids[0]]);
    const again = join(dir, 'again.raw');
    expect((await runCli(dir, ['restore', '--repo', repo, '--backup', ids[0]!, '--out', again])).exitCode).toBe(0);
    expect(await sha256File(again)).toBe(await sha256File(join(dir, 'p0.raw')));

    // without the profile, from the environment (AWS_ENDPOINT_URL_S3 …), with a wrong secret: the CLI says which
    // bucket, which endpoint, and what to fix
    delete process.env.AWS_PROFILE;
    Object.assign(process.env, { AWS_ENDPOINT_URL_S3: h.endpoint, AWS_ACCESS_KEY_ID: h.accessKeyId, AWS_SECRET_ACCESS_KEY: 'not-the-secret' });
    try {
      const refused = await runCli(dir, ['list', '--repo', repo]);
      expect(refused.exitCode).not.toBe(0);
      expect(refused.stderr).toContain(`s3://${bucket} at ${h.endpoint}`);
      expect(refused.stderr).toMatch(/secret key does not match.*AWS_SECRET_ACCESS_KEY/);
      process.env.AWS_SECRET_ACCESS_KEY = h.secretAccessKey;
      expect((await runCliJson<unknown[]>(dir, ['list', '--repo', repo])).length).toBe(1);
    } finally {
      for (const k of ['AWS_ENDPOINT_URL_S3', 'AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY']) delete process.env[k];
      process.env.AWS_PROFILE = 'fleece-e2e';
    }
  }, 240_000); // a dozen CLI runs: slow on a loaded 2-core machine
});
