// Fault suite: a repository's objects damaged on disk after the commit (a truncated data object, a truncated
// _sha256file), through the built CLI. Each case: verify and restore fail (exit 1) naming the object, restore leaves
// no partial file, the repository's other backups still restore byte for byte, and a new backup of the disk works.
// (A flipped byte, a deleted object and a truncated _metadata: test/integration/repository/corruption.test.ts.)
import { afterAll, beforeAll, expect, test } from '@jest/globals';
import { existsSync } from 'node:fs';
import { readFile, readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { makeTempDir, removeTempDir } from '../harness/temp-dir.js';
import { openRepository, type Repository } from '../../src/repository/index.js';
import { allocatedExtents, mixedDisk } from '../unit/repository/disk-images.js';
import { runCli } from '../e2e/helpers.js';
import { injectFault } from './fault-count.js';

const size = 2 * 1024 * 1024 + 4096;
let dir: string;
let repoDir: string;
let repo: Repository;

beforeAll(async () => {
  dir = await makeTempDir('faults-objects');
  repoDir = join(dir, 'repo');
  repo = await openRepository(repoDir);
});
afterAll(async () => { await removeTempDir(dir); });

/** A full backup of `disk` (256 KiB objects, zstd), and the directory of its container. */
async function fullBackup(volumeId: string, disk: Buffer): Promise<{ backupId: string; container: string; key: (name: string) => string }> {
  const w = await repo.startBackup({ volumeId, size, chunkSize: 256 * 1024, compression: 'zstd', workers: 1 });
  for (const e of allocatedExtents(disk)) await w.write(e);
  const s = await w.finish();
  return { backupId: s.backupId, container: join(repoDir, s.container), key: (name) => `${s.container}/${name}` };
}

/** (b): `backupId` restores byte for byte to `disk` through the CLI. */
async function restoresAs(backupId: string, disk: Buffer): Promise<void> {
  const out = join(dir, `ok-${backupId}.raw`);
  const result = await runCli(dir, ['restore', '--repo', repoDir, '--backup', backupId, '--out', out]);
  expect({ code: result.exitCode, stderr: result.exitCode === 0 ? '' : result.stderr }).toEqual({ code: 0, stderr: '' });
  expect((await readFile(out)).equals(disk)).toBe(true);
}

async function truncate(path: string): Promise<void> {
  const data = await readFile(path);
  await writeFile(path, data.subarray(0, Math.floor(data.length / 2)));
}

test('a truncated data object: verify and restore fail naming it, no partial file; other backups restore; a new full backup works', async () => {
  const disk = mixedDisk(size, 31);
  const other = mixedDisk(size, 32);
  const damaged = await fullBackup('v1', disk);
  const intact = await fullBackup('v2', other);
  const victim = (await readdir(damaged.container)).filter((n) => /-\d{5}$/.test(n)).sort()[1]!;
  await truncate(join(damaged.container, victim));
  const fault = injectFault('data object truncated');

  const verified = await runCli(dir, ['verify', '--repo', repoDir, '--backup', damaged.backupId]);
  expect(verified.exitCode).toBe(1);
  expect(verified.stdout).toContain(`problem: backup ${damaged.backupId}: ${damaged.key(victim)}: object ${damaged.key(victim)}: cannot decompress`);
  expect(verified.stderr).toContain(`backup ${damaged.backupId} failed verification with 1 problem(s)`);
  const out = join(dir, 'damaged.raw');
  const restored = await runCli(dir, ['restore', '--repo', repoDir, '--backup', damaged.backupId, '--out', out]);
  expect(restored.exitCode).toBe(1);
  expect(restored.stderr).toContain(victim);
  expect(existsSync(out)).toBe(false);

  await restoresAs(intact.backupId, other);
  const again = await fullBackup('v1', disk);
  expect((await runCli(dir, ['verify', '--repo', repoDir, '--backup', again.backupId, '--deep'])).exitCode).toBe(0);
  await restoresAs(again.backupId, disk);
  fault.held();
});

test('a truncated _sha256file: verify fails naming it, no incremental is built on it; other backups restore; a new full backup works', async () => {
  const disk = mixedDisk(size, 41);
  const other = mixedDisk(size, 42);
  const damaged = await fullBackup('v3', disk);
  const intact = await fullBackup('v4', other);
  const victim = (await readdir(damaged.container)).find((n) => n.endsWith('_sha256file'))!;
  await truncate(join(damaged.container, victim));
  const fault = injectFault('_sha256file truncated');

  const verified = await runCli(dir, ['verify', '--repo', repoDir, '--backup', damaged.backupId]);
  expect(verified.exitCode).toBe(1);
  expect(verified.stdout).toContain(`problem: backup ${damaged.backupId}: ${damaged.key(victim)}: sha256file ${damaged.key(victim)} is not valid`);
  const changed = Buffer.from(disk);
  changed.fill(7, 0, 65536);
  const refused = await repo.startBackup({ volumeId: 'v3', size, parent: damaged.backupId, mode: 'compare', workers: 1 }).catch((e: unknown) => e);
  expect(refused).toBeInstanceOf(Error);
  expect((refused as Error).message).toContain(victim);

  await restoresAs(intact.backupId, other);
  const again = await fullBackup('v3', changed);
  expect((await runCli(dir, ['verify', '--repo', repoDir, '--backup', again.backupId, '--deep'])).exitCode).toBe(0);
  await restoresAs(again.backupId, changed);
  fault.held();
});
