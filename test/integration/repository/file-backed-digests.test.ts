// Full + incremental + restore with the digest tables forced into their temporary files (threshold lowered), byte-identical.
import { readdir, readlink, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { makeTempDir, removeTempDir } from '../../harness/temp-dir.js';
import { openRepository, type Repository } from '../../../src/repository/repository.js';
import { MemoryObjectStore } from '../../../src/repository/store/memory-store.js';
import { alignRangesToBlocks, type Extent } from '../../../src/repository/extents.js';
import { restoreBackup } from '../../../src/restore/restore.js';
import { createSparseFileSink } from '../../../src/restore/file-sink.js';
import { MemorySink } from '../../../src/restore/memory-sink.js';
import { allocatedExtents, seeded, sha } from '../../unit/repository/disk-images.js';

const BS = 4096; // small sha blocks: 16 Ki digests (512 KiB) for the 64 MiB disk
const SIZE = 64 * 1024 * 1024 + 1536; // a short last block too
const LIMITS = { memoryLimit: 16 << 10, cacheBytes: 64 << 10 }; // far below the table: file-backed from the start

/** A sparse disk: a few random runs scattered over 64 MiB. */
function sparseDisk(seed: number): Buffer {
  const rnd = seeded(seed);
  const disk = Buffer.alloc(SIZE);
  for (let i = 0; i < 24; i++) {
    const len = 1 + (rnd() % (200 * 1024));
    randomBytes(len).copy(disk, rnd() % (SIZE - len));
  }
  randomBytes(700).copy(disk, SIZE - 700);
  return disk;
}

function mutate(disk: Buffer, seed: number): { disk: Buffer; dirty: { offset: number; length: number }[] } {
  const rnd = seeded(seed);
  const next = Buffer.from(disk);
  const dirty: { offset: number; length: number }[] = [];
  for (let i = 0; i < 12; i++) {
    const len = 1 + (rnd() % 50000);
    const offset = rnd() % (SIZE - len);
    if (i % 3 === 0) next.fill(0, offset, offset + len); else randomBytes(len).copy(next, offset);
    dirty.push({ offset, length: len });
  }
  return { disk: next, dirty };
}

function dirtyExtents(disk: Buffer, dirty: { offset: number; length: number }[]): Extent[] {
  return alignRangesToBlocks(dirty, BS, SIZE).map((r) => {
    const data = disk.subarray(r.offset, r.offset + r.length);
    return data.equals(Buffer.alloc(r.length)) ? { offset: r.offset, length: r.length, zero: true as const } : { offset: r.offset, length: r.length, data };
  });
}

/** Open files of this process that are unlinked digest tables (proves the file-backed path ran). */
async function openDigestFiles(): Promise<number> {
  let n = 0;
  for (const fd of await readdir('/proc/self/fd')) {
    const target = await readlink(`/proc/self/fd/${fd}`).catch(() => '');
    if (target.includes('.fleece-digests-') && target.endsWith('(deleted)')) n++;
  }
  return n;
}

async function backup(repo: Repository, extents: Extent[], opts: Parameters<Repository['startBackup']>[0]) {
  const writer = await repo.startBackup({ workers: 2, shaBlockSize: BS, chunkSize: 256 * 1024, ...opts });
  for (const e of extents) await writer.write(e);
  const during = await openDigestFiles();
  const summary = await writer.finish();
  expect(during).toBeGreaterThanOrEqual(1);
  return summary;
}

let dir: string;
beforeEach(async () => { dir = await makeTempDir('digests'); });
afterEach(async () => { await removeTempDir(dir); });

it('posix store: full, changed-extents and compare incrementals restore byte-identically into sparse files', async () => {
  const repo = await openRepository(join(dir, 'repo'), { digestTable: { ...LIMITS, tempDir: dir } });
  const d0 = sparseDisk(1);
  const full = await backup(repo, allocatedExtents(d0), { volumeId: 'vol', size: SIZE });
  const m1 = mutate(d0, 2);
  const inc1 = await backup(repo, dirtyExtents(m1.disk, m1.dirty), { volumeId: 'vol', size: SIZE, parent: full.backupId, mode: 'changed-extents' });
  const m2 = mutate(m1.disk, 3);
  const inc2 = await backup(repo, allocatedExtents(m2.disk), { volumeId: 'vol', size: SIZE, parent: inc1.backupId, mode: 'compare' });
  expect(inc1.bytesChanged).toBeLessThanOrEqual(alignRangesToBlocks(m1.dirty, BS, SIZE).reduce((n, r) => n + r.length, 0));

  for (const [id, want] of [[full.backupId, d0], [inc1.backupId, m1.disk], [inc2.backupId, m2.disk]] as const) {
    const path = join(dir, `${id}.raw`);
    const sink = await createSparseFileSink(path, SIZE);
    const r = await restoreBackup(repo, id, sink, { workers: 2 });
    await sink.close();
    expect(r.verified).toBe(true);
    expect(r.bytesZeroed).toBe(0);
    const { readFile } = await import('node:fs/promises');
    expect(sha(await readFile(path))).toBe(sha(want));
    // sparse: the chain stores a few MiB, the restore allocates about that, not 64 MiB of zeros
    expect((await stat(path)).blocks * 512).toBeLessThan(r.bytesWritten + (1 << 20));
  }
  expect(await openDigestFiles()).toBe(0); // every table closed
  const report = await repo.verify(inc2.backupId, { deep: true });
  expect(report.problems).toEqual([]);
  expect(await openDigestFiles()).toBe(0);
});

it('memory store with tiny stream pieces: restore into a garbage-filled target, and a damaged sha256file fails naming it', async () => {
  const store = new MemoryObjectStore('tiny', 777); // every parse crosses many piece boundaries
  const repo = await openRepository(store, { digestTable: { ...LIMITS, tempDir: dir } });
  const d0 = sparseDisk(4);
  const full = await backup(repo, allocatedExtents(d0), { volumeId: 'vol', size: SIZE });
  const m1 = mutate(d0, 5);
  const inc = await backup(repo, dirtyExtents(m1.disk, m1.dirty), { volumeId: 'vol', size: SIZE, parent: full.backupId, mode: 'changed-extents' });
  const sink = new MemorySink(SIZE, randomBytes(SIZE));
  const r = await restoreBackup(repo, inc.backupId, sink, { workers: 2 });
  expect(r.verified).toBe(true);
  expect(sha(sink.data)).toBe(sha(m1.disk));

  // flip one hex digit of the full backup's sha256file: an incremental from it and a restore refuse, naming it
  const { record } = await repo.load(full.backupId);
  const name = `${record.prefix}_sha256file`;
  const text = (await store.get(record.container, name)).toString('latin1');
  const at = text.indexOf('"sha256s": [') + 20;
  await store.put(record.container, name, Buffer.from(`${text.slice(0, at)}g${text.slice(at + 1)}`, 'latin1'));
  await expect(repo.startBackup({ volumeId: 'vol', size: SIZE, parent: full.backupId, mode: 'changed-extents', shaBlockSize: BS }))
    .rejects.toThrow(new RegExp(`sha256file ${record.container}/${name} is not valid: sha256s\\[0\\] is not a hex sha256`));
  await expect(restoreBackup(repo, full.backupId, new MemorySink(SIZE), { workers: 2 })).rejects.toThrow(name);
  const report = await repo.verify(full.backupId);
  expect(report.problems.map((p) => p.object)).toEqual([`${record.container}/${name}`]);
  expect(await openDigestFiles()).toBe(0);
});

it('the final check on a zeroed sink still catches a sha256file that expects data where no object was written', async () => {
  const store = new MemoryObjectStore('swap');
  const repo = await openRepository(store, { digestTable: { ...LIMITS, tempDir: dir } });
  const a = await backup(repo, allocatedExtents(sparseDisk(6)), { volumeId: 'vol', size: SIZE });
  const b = await backup(repo, allocatedExtents(sparseDisk(7)), { volumeId: 'vol', size: SIZE });
  const ra = (await repo.load(a.backupId)).record;
  const rb = (await repo.load(b.backupId)).record;
  await store.put(ra.container, `${ra.prefix}_sha256file`, await store.get(rb.container, `${rb.prefix}_sha256file`));
  const error = await restoreBackup(repo, a.backupId, new MemorySink(SIZE), { workers: 2 }).catch((e: unknown) => e);
  expect((error as Error).message).toMatch(new RegExp(`differs from ${ra.container}/${ra.prefix}_sha256file at block \\d+`));
  expect((error as Error).message).toContain("no object of the chain covers it");
});
