// The fault suite's S3 cases share this: the CLI pointed at a Swift endpoint through an AWS profile, a backup paused
// at a phase (FLEECE_TEST_PAUSE_AT), the bucket's keys, and the checks (b)–(e) after a fault of a bare QEMU's backup.
import { expect } from '@jest/globals';
import { existsSync } from 'node:fs';
import { mkdir, readFile, readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import type { QemuFixture } from '../harness/jest-qemu.js';
import type { SwiftHarness } from '../harness/swift.js';
import { leftovers } from '../integration/backup/helpers.js';
import { runCli, runCliJson, type BackupJson, type CliResult } from '../e2e/helpers.js';
import { S3ObjectStore } from '../../src/repository/store/s3-store.js';
import { belongsToBackup, leaseBackupId } from '../../src/repository/format/naming.js';

const PROFILE_VARS = ['AWS_PROFILE', 'AWS_CONFIG_FILE', 'AWS_SHARED_CREDENTIALS_FILE', 'AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY', 'AWS_ENDPOINT_URL_S3', 'AWS_ENDPOINT_URL', 'AWS_REGION', 'AWS_EC2_METADATA_DISABLED'];

/**
 * Points every CLI this process starts at `endpoint` (an AWS profile in `dir`, as a user sets one up); returns the
 * function that puts the environment back.
 */
export async function useS3Profile(dir: string, h: SwiftHarness, endpoint: string): Promise<() => void> {
  const aws = join(dir, 'aws');
  await mkdir(aws, { recursive: true });
  await writeFile(join(aws, 'config'), `[profile fleece-faults]\nregion = ${h.region}\nendpoint_url = ${endpoint}\n`);
  await writeFile(join(aws, 'credentials'), `[fleece-faults]\naws_access_key_id = ${h.accessKeyId}\naws_secret_access_key = ${h.secretAccessKey}\n`);
  const saved = Object.fromEntries(PROFILE_VARS.map((k) => [k, process.env[k]]));
  for (const k of PROFILE_VARS) delete process.env[k];
  Object.assign(process.env, {
    AWS_PROFILE: 'fleece-faults', AWS_CONFIG_FILE: join(aws, 'config'), AWS_SHARED_CREDENTIALS_FILE: join(aws, 'credentials'), AWS_EC2_METADATA_DISABLED: 'true',
  });
  return () => {
    for (const k of PROFILE_VARS) {
      if (saved[k] === undefined) delete process.env[k];
      else process.env[k] = saved[k];
    }
  };
}

export { pausedAt } from './helpers.js';

/** Every key of the bucket (`<container>/<name>`; root objects such as the marker aside), read through `endpoint`. */
export async function bucketKeys(h: SwiftHarness, bucket: string): Promise<string[]> {
  const store = new S3ObjectStore({ bucket, endpoint: h.endpoint, credentials: { accessKeyId: h.accessKeyId, secretAccessKey: h.secretAccessKey } });
  try {
    const keys: string[] = [];
    for await (const o of store.listAll()) keys.push(`${o.container}/${o.name}`);
    return keys.sort();
  } finally {
    store.destroy();
  }
}

/** The keys that belong to none of `backupIds` (data objects, manifests, sha256files and leases of other backups). */
export function strayKeys(keys: readonly string[], backupIds: readonly string[]): string[] {
  return keys.filter((k) => !backupIds.some((id) => belongsToBackup(k, id) || leaseBackupId(k) === id));
}

/**
 * Waits until the backup being written has stored a data object (one that belongs to no listed backup), so that
 * the fault lands with something of it in the bucket; returns the key. Polls a condition, times nothing.
 */
export async function firstStrayDataObject(h: SwiftHarness, bucket: string, committed: readonly string[]): Promise<string> {
  for (let i = 0; i < 600; i++) {
    const stray = strayKeys(await bucketKeys(h, bucket), committed).find((k) => /_backup_[A-Za-z0-9-]+-\d{5}$/.test(k));
    if (stray !== undefined) return stray;
    await delay(100);
  }
  throw new Error(`no data object of the running backup appeared in bucket ${bucket}`);
}

export interface S3FaultCase {
  fixture: QemuFixture;
  h: SwiftHarness;
  bucket: string;
  /** The arguments of `fleece backup …` for the case. */
  args: () => string[];
  repo: string;
  /** The first backup and the raw image it was taken of. */
  first: () => BackupJson;
  firstRaw: () => string;
}

/**
 * (b)–(e) after a fault: `next` (the next backup's result) succeeded incrementally; QEMU holds no job, export, node
 * or temporary bitmap; the bucket holds only the listed backups' objects (no lease, no object of the failed one),
 * without any gc; no scratch file, no journal; the first backup and the next (taken of `nextRaw`) restore byte for byte.
 */
export async function holdsAfterS3Fault(c: S3FaultCase, next: CliResult, nextRaw: string): Promise<void> {
  const { fixture } = c;
  const { dir } = fixture;
  expect({ code: next.exitCode, stderr: next.exitCode === 0 ? '' : next.stderr }).toEqual({ code: 0, stderr: '' });
  const nextJson = JSON.parse(next.stdout) as BackupJson;
  expect(nextJson.level).toBe('incremental');
  const after = await leftovers(fixture.qemu.client);
  expect({ jobs: after.jobs, exports: after.exports, nodes: after.fleeceNodes }).toEqual({ jobs: [], exports: [], nodes: [] });
  const listed = await runCliJson<{ backupId: string; checkpoint?: string }[]>(dir, ['list', '--repo', c.repo]);
  expect(after.bitmaps.vda!.sort()).toEqual(listed.map((r) => r.checkpoint!).sort().slice(-3));
  expect(strayKeys(await bucketKeys(c.h, c.bucket), listed.map((r) => r.backupId))).toEqual([]);
  expect(await readdir(join(dir, 'state', 'scratch')).catch(() => [])).toEqual([]);
  expect(existsSync(join(dir, 'state', 'journal', 'vm1.json'))).toBe(false);
  for (const [backup, raw] of [[c.first(), c.firstRaw()], [nextJson, nextRaw]] as const) {
    const out = join(dir, `restored-${backup.disks[0]!.backupId}-${nextJson.disks[0]!.backupId}.raw`);
    expect((await runCli(dir, ['restore', '--repo', c.repo, '--backup', backup.disks[0]!.backupId, '--out', out])).exitCode).toBe(0);
    expect((await readFile(out)).equals(await readFile(raw))).toBe(true);
  }
  const verified = await runCli(dir, ['verify', '--repo', c.repo, '--backup', nextJson.disks[0]!.backupId]);
  expect(verified.exitCode).toBe(0);
}
