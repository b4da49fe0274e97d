// The writer's zero-copy path: data read into bufferForRead() buffers and handed over, reused buffers, gaps as zeros.
import { MemoryObjectStore } from '../../../src/repository/store/memory-store.js';
import { openRepository, type Repository } from '../../../src/repository/repository.js';
import type { BackupWriter } from '../../../src/repository/writer.js';
import { restoreBackup } from '../../../src/restore/restore.js';
import { MemorySink } from '../../../src/restore/memory-sink.js';
import { mixedDisk, seeded, sha } from './disk-images.js';

const BS = 32 * 1024;
const CHUNK = 256 * 1024;

/** Writes `pieces` of `disk` the way backup-to-repository does: each read into a writer buffer full of garbage, handed over. */
async function handOver(writer: BackupWriter, disk: Buffer, pieces: { offset: number; length: number }[]): Promise<void> {
  for (const p of pieces) {
    const buf = writer.bufferForRead();
    expect(buf.length).toBe(CHUNK);
    buf.fill(0xa5); // whatever a reused buffer held before must never reach an object
    disk.copy(buf, 0, p.offset, p.offset + p.length);
    await writer.write({ offset: p.offset, length: p.length, data: buf.subarray(0, p.length) }, { handOver: true });
  }
}

async function restore(repo: Repository, id: string, size: number, initial?: Buffer): Promise<Buffer> {
  const sink = new MemorySink(size, initial);
  expect((await restoreBackup(repo, id, sink, { workers: 2 })).verified).toBe(true);
  return sink.data;
}

/** Pieces of at most CHUNK bytes: whole aligned chunks, odd lengths at odd offsets, and gaps. */
function pieces(size: number, seed: number, aligned: boolean): { offset: number; length: number }[] {
  const rnd = seeded(seed);
  const out: { offset: number; length: number }[] = [];
  for (let pos = 0; pos < size;) {
    let n = rnd() % 3 === 0 ? CHUNK : 1 + (rnd() % CHUNK);
    if (aligned) n = Math.ceil(n / BS) * BS;
    n = Math.min(n, size - pos);
    if (rnd() % 4 !== 0) out.push({ offset: pos, length: n });
    pos += n;
  }
  return out;
}

describe('handing read buffers over to the writer', () => {
  it.each(['none', 'zstd'] as const)('a full backup (%s) restores exactly what was written, gaps as zeros', async (compression) => {
    const size = 3 * 1024 * 1024 + 1000;
    const disk = mixedDisk(size, 11);
    const repo = await openRepository(new MemoryObjectStore());
    const writer = await repo.startBackup({ volumeId: 'v', size, mode: 'full', compression, chunkSize: CHUNK, workers: 2 });
    const ps = pieces(size, 5, false);
    await handOver(writer, disk, ps);
    const s = await writer.finish();
    const expected = Buffer.alloc(size);
    for (const p of ps) disk.copy(expected, p.offset, p.offset, p.offset + p.length);
    expect(sha(await restore(repo, s.backupId, size))).toBe(sha(expected));
  });

  it('an incremental from block-aligned dirty pieces applies on its parent', async () => {
    const size = 2 * 1024 * 1024 + 5 * BS;
    const base = mixedDisk(size, 21);
    const repo = await openRepository(new MemoryObjectStore());
    const full = await repo.startBackup({ volumeId: 'v', size, mode: 'full', chunkSize: CHUNK, workers: 2 });
    await handOver(full, base, pieces(size, 1, true));
    // The parent as stored: the pieces written, zeros elsewhere.
    const parent = Buffer.alloc(size);
    for (const p of pieces(size, 1, true)) base.copy(parent, p.offset, p.offset, p.offset + p.length);
    const first = await full.finish();

    const changed = Buffer.from(parent);
    const dirty = pieces(size, 2, true);
    const rnd = seeded(9);
    for (const p of dirty) for (let i = p.offset; i < p.offset + p.length; i += 997) changed[i] = rnd() & 0xff;
    const inc = await repo.startBackup({ volumeId: 'v', size, mode: 'changed-extents', parent: first.backupId, chunkSize: CHUNK, workers: 2 });
    await handOver(inc, changed, dirty);
    const second = await inc.finish();
    expect(sha(await restore(repo, second.backupId, size))).toBe(sha(changed));
  });
});
