// Round trips through the writer and restore on the in-memory store: full, incremental by extents, by comparison.
import { randomBytes } from 'node:crypto';
import { MemoryObjectStore } from '../../../src/repository/store/memory-store.js';
import { openRepository, type Repository } from '../../../src/repository/repository.js';
import { alignRangesToBlocks, type Extent } from '../../../src/repository/extents.js';
import { restoreBackup } from '../../../src/restore/restore.js';
import { MemorySink } from '../../../src/restore/memory-sink.js';
import type { Compression } from '../../../src/repository/format/manifest.js';
import { allocatedExtents, mixedDisk, seeded, sha, wholeDisk } from './disk-images.js';

const BS = 32 * 1024;

async function backup(repo: Repository, extents: Extent[], opts: Parameters<Repository['startBackup']>[0]) {
  const writer = await repo.startBackup({ workers: 2, ...opts });
  for (const e of extents) await writer.write(e);
  return writer.finish();
}

async function restore(repo: Repository, id: string, size: number, initial?: Buffer): Promise<Buffer> {
  const sink = new MemorySink(size, initial);
  const summary = await restoreBackup(repo, id, sink, { workers: 2 });
  expect(summary.verified).toBe(true);
  return sink.data;
}

describe('full backups round trip', () => {
  const sizes = [1, 4095, 32 * 1024, 1024 * 1024 + 333, 5 * 1024 * 1024 + 7];
  it.each(sizes)('mixed disk of %d bytes, allocated extents only', async (size) => {
    const repo = await openRepository(new MemoryObjectStore());
    const disk = mixedDisk(size, size);
    const s = await backup(repo, allocatedExtents(disk), { volumeId: 'vol1', size, chunkSize: 256 * 1024 });
    const out = await restore(repo, s.backupId, size);
    expect(sha(out)).toBe(sha(disk));
  });

  it.each<Compression>(['none', 'zlib', 'zstd', 'bz2'])('compression %s, unaligned extent pieces', async (compression) => {
    const size = 3 * 1024 * 1024 + 1000;
    const disk = mixedDisk(size, 7);
    const rnd = seeded(3);
    const extents: Extent[] = [];
    for (let pos = 0; pos < size;) { // pieces of random length, with random gaps where the disk is zero
      const n = Math.min(size - pos, 1 + (rnd() % 100000));
      if (!disk.subarray(pos, pos + n).equals(Buffer.alloc(n)) || rnd() % 2) extents.push({ offset: pos, length: n, data: disk.subarray(pos, pos + n) });
      pos += n;
    }
    const repo = await openRepository(new MemoryObjectStore());
    const s = await backup(repo, extents, { volumeId: 'v', size, compression, chunkSize: 512 * 1024 });
    const { metadata } = await repo.load(s.backupId);
    if (compression !== 'none') expect(metadata.objects.some((o) => o.compression === compression)).toBe(true);
    else expect(metadata.objects.every((o) => o.compression === 'none')).toBe(true);
    expect(sha(await restore(repo, s.backupId, size))).toBe(sha(disk));
  });

  it('an all-zero disk stores no object, random data stays raw', async () => {
    const repo = await openRepository(new MemoryObjectStore());
    const zeros = await backup(repo, wholeDisk(Buffer.alloc(2 << 20)), { volumeId: 'z', size: 2 << 20 });
    expect(zeros.objects).toBe(0);
    expect(zeros.bytesStored).toBe(0);
    const random = randomBytes(1 << 20);
    const r = await backup(repo, wholeDisk(random), { volumeId: 'r', size: 1 << 20, compression: 'zstd' });
    const { metadata } = await repo.load(r.backupId);
    expect(metadata.objects.every((o) => o.compression === 'none')).toBe(true);
    expect(sha(await restore(repo, r.backupId, 1 << 20, randomBytes(1 << 20)))).toBe(sha(random));
    expect(sha(await restore(repo, zeros.backupId, 2 << 20, randomBytes(2 << 20)))).toBe(sha(Buffer.alloc(2 << 20)));
  });
});

/** Overwrites random block-unaligned ranges; returns the new disk and the ranges written. */
function mutate(disk: Buffer, seed: number, count: number): { disk: Buffer; dirty: { offset: number; length: number }[] } {
  const rnd = seeded(seed);
  const next = Buffer.from(disk);
  const dirty: { offset: number; length: number }[] = [];
  for (let i = 0; i < count; i++) {
    const len = 1 + (rnd() % 20000);
    const offset = rnd() % (disk.length - len);
    if (i % 3 === 0) next.fill(0, offset, offset + len); else randomBytes(len).copy(next, offset);
    dirty.push({ offset, length: len });
  }
  return { disk: next, dirty };
}

function dirtyExtents(disk: Buffer, dirty: { offset: number; length: number }[]): Extent[] {
  return alignRangesToBlocks(dirty, BS, disk.length).map((r) => {
    const data = disk.subarray(r.offset, r.offset + r.length);
    return data.equals(Buffer.alloc(r.length)) ? { offset: r.offset, length: r.length, zero: true as const } : { offset: r.offset, length: r.length, data };
  });
}

describe('incremental backups round trip', () => {
  const size = 6 * 1024 * 1024 + 4321;

  it('from dirty extents: a chain of three, each restore byte-identical, stored bytes close to changed bytes', async () => {
    const repo = await openRepository(new MemoryObjectStore());
    const d0 = mixedDisk(size, 11);
    const full = await backup(repo, allocatedExtents(d0), { volumeId: 'vol', size, compression: 'none' });
    const m1 = mutate(d0, 5, 20);
    const inc1 = await backup(repo, dirtyExtents(m1.disk, m1.dirty), { volumeId: 'vol', size, parent: full.backupId, mode: 'changed-extents', compression: 'none' });
    const m2 = mutate(m1.disk, 6, 10);
    const inc2 = await backup(repo, dirtyExtents(m2.disk, m2.dirty), { volumeId: 'vol', size, parent: inc1.backupId, mode: 'changed-extents', compression: 'none' });
    const alignedDirty = alignRangesToBlocks(m1.dirty, BS, size).reduce((n, r) => n + r.length, 0);
    expect(inc1.bytesStored).toBeLessThanOrEqual(alignedDirty);
    expect(inc1.bytesStored).toBeGreaterThan(0);
    expect(sha(await restore(repo, full.backupId, size))).toBe(sha(d0));
    expect(sha(await restore(repo, inc1.backupId, size, randomBytes(size)))).toBe(sha(m1.disk));
    expect(sha(await restore(repo, inc2.backupId, size))).toBe(sha(m2.disk));
    expect((await repo.chain(inc2.backupId)).map((b) => b.record.backupId)).toEqual([full.backupId, inc1.backupId, inc2.backupId]);
  });

  it('by hash comparison (Cinder\'s way): reads everything, stores only changed blocks', async () => {
    const repo = await openRepository(new MemoryObjectStore());
    const d0 = mixedDisk(size, 12);
    const full = await backup(repo, allocatedExtents(d0), { volumeId: 'vol', size });
    const m1 = mutate(d0, 8, 15);
    const inc = await backup(repo, allocatedExtents(m1.disk), { volumeId: 'vol', size, parent: full.backupId, mode: 'compare', compression: 'none' });
    const changedBlocks = alignRangesToBlocks(m1.dirty, BS, size).reduce((n, r) => n + r.length, 0);
    expect(inc.bytesChanged).toBeLessThanOrEqual(changedBlocks);
    expect(inc.bytesRead).toBeGreaterThan(size / 4);
    expect(sha(await restore(repo, inc.backupId, size))).toBe(sha(m1.disk));
  });

  it('an incremental turned compare before its first write (a bitmap proved wrong): parent digests, then only what differs', async () => {
    const repo = await openRepository(new MemoryObjectStore());
    const d0 = mixedDisk(size, 21);
    const full = await backup(repo, allocatedExtents(d0), { volumeId: 'vol', size });
    const parentDigests = (await repo.readSha256(full.backupId)).digests;
    const m1 = mutate(d0, 4, 16);
    const writer = await repo.startBackup({ volumeId: 'vol', size, parent: full.backupId, mode: 'changed-extents', workers: 2, compression: 'none' });
    const blocks = Math.ceil(size / BS);
    for (const b of [0, 7, blocks - 1]) expect(writer.parentDigest(b)).toEqual(parentDigests.subarray(b * 32, b * 32 + 32));
    expect(() => writer.parentDigest(blocks)).toThrow(/outside the disk/);
    writer.switchToCompare();
    for (const e of allocatedExtents(m1.disk)) await writer.write(e);
    expect(() => writer.parentDigest(0)).toThrow(/once data was written/);
    expect(() => writer.switchToCompare()).not.toThrow(); // already compare
    const inc = await writer.finish();
    expect(inc.bytesChanged).toBeLessThanOrEqual(alignRangesToBlocks(m1.dirty, BS, size).reduce((n, r) => n + r.length, 0));
    expect(sha(await restore(repo, inc.backupId, size))).toBe(sha(m1.disk));
    expect((await repo.get(inc.backupId)).parentId).toBe(full.backupId);

    const late = await repo.startBackup({ volumeId: 'vol', size, parent: inc.backupId, mode: 'changed-extents', workers: 1 });
    await late.write({ offset: 0, length: BS, data: Buffer.alloc(BS, 1) });
    expect(() => late.switchToCompare()).toThrow(/once data was written/);
    await late.abort();
  });

  it('refuses a different sha block size and a missing mode', async () => {
    const repo = await openRepository(new MemoryObjectStore());
    const full = await backup(repo, [], { volumeId: 'vol', size: 1 << 20 });
    await expect(repo.startBackup({ volumeId: 'vol', size: 1 << 20, parent: full.backupId, mode: 'compare', shaBlockSize: 65536 }))
      .rejects.toThrow(/sha blocks of 32768 bytes, this backup 65536/);
    await expect(repo.startBackup({ volumeId: 'vol', size: 1 << 20, parent: full.backupId })).rejects.toThrow(/needs a mode/);
  });

  it('refuses unaligned extents in changed-extents mode', async () => {
    const repo = await openRepository(new MemoryObjectStore());
    const full = await backup(repo, [], { volumeId: 'vol', size: 1 << 20 });
    const w = await repo.startBackup({ volumeId: 'vol', size: 1 << 20, parent: full.backupId, mode: 'changed-extents' });
    await expect(w.write({ offset: 100, length: 10, data: Buffer.alloc(10, 1) })).rejects.toThrow(/not aligned to sha blocks/);
    await w.abort();
  });
});
