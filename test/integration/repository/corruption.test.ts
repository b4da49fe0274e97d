// Damaged repositories on disk: flipped byte, missing object, truncated _metadata, missing parent; delete and gc.
import { readFile, writeFile, unlink, readdir, utimes } from 'node:fs/promises';
import { join } from 'node:path';
import { makeTempDir, removeTempDir } from '../../harness/temp-dir.js';
import { openRepository, type Repository } from '../../../src/repository/repository.js';
import { restoreBackup } from '../../../src/restore/restore.js';
import { MemorySink } from '../../../src/restore/memory-sink.js';
import { allocatedExtents, mixedDisk } from '../../unit/repository/disk-images.js';
import { injectFault } from '../../faults/fault-count.js';

const size = 2 * 1024 * 1024 + 100;
let dir: string;
let repo: Repository;
let fullId: string;
let incId: string;
let fullContainer: string;

beforeEach(async () => {
  dir = await makeTempDir('corrupt');
  repo = await openRepository(join(dir, 'repo'));
  const disk = mixedDisk(size, 99);
  const w = await repo.startBackup({ volumeId: 'v', size, chunkSize: 256 * 1024, compression: 'zstd', workers: 1 });
  for (const e of allocatedExtents(disk)) await w.write(e);
  const full = await w.finish();
  fullId = full.backupId;
  fullContainer = join(dir, 'repo', full.container);
  const changed = Buffer.from(disk);
  changed.fill(9, 0, 65536);
  const w2 = await repo.startBackup({ volumeId: 'v', size, parent: fullId, mode: 'compare', workers: 1 });
  for (const e of allocatedExtents(changed)) await w2.write(e);
  incId = (await w2.finish()).backupId;
});
afterEach(async () => { await removeTempDir(dir); });

async function dataObjects(): Promise<string[]> {
  return (await readdir(fullContainer)).filter((n) => /-\d{5}$/.test(n)).sort();
}

it('a flipped byte in an object fails verify and restore naming the object', async () => {
  const victim = (await dataObjects())[1]!;
  const data = await readFile(join(fullContainer, victim));
  data[Math.floor(data.length / 2)] ^= 0x40;
  await writeFile(join(fullContainer, victim), data);
  const fault = injectFault('object corrupted (a flipped byte)');
  const report = await repo.verify(incId);
  expect(report.ok).toBe(false);
  expect(report.problems.map((p) => p.object).join(' ')).toContain(victim);
  await expect(restoreBackup(repo, incId, new MemorySink(size), { workers: 1 })).rejects.toThrow(victim);
  fault.held();
});

it('a missing object fails verify and restore naming the object', async () => {
  const victim = (await dataObjects())[0]!;
  await unlink(join(fullContainer, victim));
  const fault = injectFault('object deleted');
  const report = await repo.verify(incId);
  expect(report.ok).toBe(false);
  expect(report.problems[0]!.message).toContain(victim);
  await expect(restoreBackup(repo, incId, new MemorySink(size), { workers: 1 })).rejects.toThrow(victim);
  fault.held();
});

it('a truncated _metadata fails verify and restore naming it', async () => {
  const meta = (await readdir(fullContainer)).find((n) => n.endsWith('_metadata'))!;
  const text = await readFile(join(fullContainer, meta));
  await writeFile(join(fullContainer, meta), text.subarray(0, text.length / 2));
  const fault = injectFault('_metadata truncated');
  const report = await repo.verify(fullId);
  expect(report.ok).toBe(false);
  expect(report.problems[0]!.message).toContain(meta);
  await expect(restoreBackup(repo, incId, new MemorySink(size), { workers: 1 })).rejects.toThrow(meta);
  const scan = await repo.scan();
  expect(scan.problems.map((p) => p.object)).toEqual([meta]);
  fault.held();
});

it('a missing parent fails verify and restore naming the parent; deep verify passes on an intact chain', async () => {
  expect((await repo.verify(incId, { deep: true })).problems).toEqual([]);
  await expect(repo.delete(fullId)).rejects.toThrow(/dependent/);
  const meta = (await readdir(fullContainer)).find((n) => n.endsWith('_metadata'))!;
  await unlink(join(fullContainer, meta));
  const fault = injectFault('parent _metadata deleted');
  const report = await repo.verify(incId);
  expect(report.ok).toBe(false);
  expect(report.problems[0]!.message).toContain(fullId);
  await expect(restoreBackup(repo, incId, new MemorySink(size), { workers: 1 })).rejects.toThrow(new RegExp(`parent backup ${fullId}`));
  // the orphaned objects of the full are garbage once older than the grace period
  const kept = await repo.gc({ gracePeriodMs: 3600_000 });
  expect(kept.removed).toEqual([]);
  const gc = await repo.gc({ gracePeriodMs: 3600_000, now: new Date(Date.now() + 7200_000) });
  expect(gc.removed.length).toBeGreaterThan(0);
  expect(gc.removed.every((r) => r.container.endsWith(fullId))).toBe(true);
  expect((await repo.list()).map((r) => r.backupId)).toEqual([incId]);
  fault.held();
});

it('delete with cascade removes dependants and every object, metadata first', async () => {
  const report = await repo.delete(fullId, { cascade: true });
  expect(report.deleted).toEqual([incId, fullId]);
  expect(await repo.list()).toEqual([]);
  const gc = await repo.gc({ gracePeriodMs: 0, now: new Date(Date.now() + 1000) });
  expect(gc.removed).toEqual([]);
  await utimes(join(dir, 'repo'), new Date(), new Date());
  expect(await readdir(join(dir, 'repo'))).toEqual(['fleece-repository.json']); // the marker stays: it is a repository still
});
