// The chain reader (a backup's disk content as ascending extents, from the repository alone) and consolidation:
// a synthetic full backup equal to one point of a chain, written as a new, ordinary Cinder full.
//
// Cinder's format cannot reference another backup's objects, so a synthetic full rewrites the data: it reads, once,
// every object that still holds some of the point's data (objects later backups overwrote entirely are not read),
// and the writer stores it again (compressed, zero blocks skipped). The new full records the same vm, disk, volume,
// checkpoint and sha block size as the point, a new group and a newer created_at, so that the level chooser takes it
// as the parent of the next incremental and the chain behind it can be pruned. Before it is accepted, its
// _sha256file must equal the point's, block by block; otherwise it is deleted again.
import { randomUUID } from 'node:crypto';
import { IntegrityError, throwIfAborted } from '../util/errors.js';
import { getLogger } from '../util/logger.js';
import type { LoadedBackup, Repository } from './repository.js';
import type { ObjectEntry, Compression } from './format/manifest.js';
import { DIGEST_BYTES } from './format/sha256-file.js';
import { DEFAULT_CHUNK_SIZE } from './writer.js';
import { WorkerPool, transferable } from './pipeline/worker-pool.js';

const log = getLogger('repository.consolidate');

/** A range of the disk whose content, at the chain's end, is in one object: `entry` of `chain[backup]`. */
export interface ChainSegment {
  offset: number;
  length: number;
  backup: number;
  entry: ObjectEntry;
}

/**
 * Where each byte of the point's disk lives (pure): the chain's objects applied in Cinder's order (full first, each
 * backup's objects in list order; a later object wins), clipped to `size`, as ascending, non-overlapping segments.
 * Bytes no object covers are zeros and are not listed.
 */
export function chainSegments(chain: readonly { metadata: { objects: readonly ObjectEntry[] } }[], size: number): ChainSegment[] {
  interface Item { start: number; end: number; prio: number; backup: number; entry: ObjectEntry }
  const items: Item[] = [];
  let prio = 0;
  for (const [backup, { metadata }] of chain.entries()) {
    for (const entry of metadata.objects) {
      const end = Math.min(entry.offset + entry.length, size);
      if (end > entry.offset) items.push({ start: entry.offset, end, prio, backup, entry });
      prio += 1;
    }
  }
  const points = [...new Set(items.flatMap((i) => [i.start, i.end]))].sort((a, b) => a - b);
  const byStart = [...items].sort((a, b) => a.start - b.start || a.prio - b.prio);
  const out: ChainSegment[] = [];
  let active: Item[] = [];
  let next = 0;
  for (let p = 0; p < points.length - 1; p++) {
    const at = points[p]!;
    active = active.filter((i) => i.end > at);
    while (next < byStart.length && byStart[next]!.start <= at) active.push(byStart[next++]!);
    if (active.length === 0) continue;
    const owner = active.reduce((a, b) => (b.prio > a.prio ? b : a));
    const end = points[p + 1]!;
    const last = out[out.length - 1];
    if (last && last.entry === owner.entry && last.offset + last.length === at) last.length = end - last.offset;
    else out.push({ offset: at, length: end - at, backup: owner.backup, entry: owner.entry });
  }
  return out;
}

/** Where the chain's last object ends (a loop: a 2 TiB full lists 512 Ki objects, too many to spread). */
function chainEnd(chain: readonly { metadata: { objects: readonly ObjectEntry[] } }[]): number {
  let end = 0;
  for (const { metadata } of chain) for (const o of metadata.objects) end = Math.max(end, o.offset + o.length);
  return end;
}

/** What reading a chain cost. */
export interface ChainReadStats {
  objectsRead: number;
  /** Stored (compressed) bytes fetched from the store. */
  bytesRead: number;
  /** Their uncompressed size. */
  bytesDecoded: number;
}

export interface ReadChainOptions {
  /** The disk size of the point (default: the last backup's recorded size). */
  size?: number;
  workers?: number;
  /** Objects fetched and decoded ahead of the one being handed out (default 2 × workers). */
  prefetch?: number;
  signal?: AbortSignal;
  /** Filled in while reading. */
  stats?: ChainReadStats;
}

/**
 * The disk content at the end of `chain` (full first, as Repository.chain returns it) as ascending, non-overlapping
 * data extents; bytes no object covers are zeros and are not yielded. Every object read is checked against its
 * length and md5. Memory: the objects in flight (prefetch) and those whose data is not all handed out yet.
 * Throws IntegrityError naming a damaged object, ObjectNotFoundError, StoreError, AbortedError.
 */
export async function* readChain(repo: Repository, chain: readonly LoadedBackup[], options: ReadChainOptions = {}): AsyncGenerator<{ offset: number; length: number; data: Buffer }> {
  const last = chain[chain.length - 1];
  if (!last) return;
  const size = options.size ?? last.record.size ?? chainEnd(chain);
  const segments = chainSegments(chain, size);
  const lastUse = new Map<ObjectEntry, number>();
  const order: ChainSegment[] = [];
  for (const [i, s] of segments.entries()) {
    if (!lastUse.has(s.entry)) order.push(s);
    lastUse.set(s.entry, i);
  }
  const rank = new Map(order.map((s, i) => [s.entry, i]));
  const pool = new WorkerPool(options.workers);
  const prefetch = options.prefetch ?? pool.size * 2;
  const stats = options.stats;
  const fetched = new Map<ObjectEntry, Promise<Buffer>>();
  let started = 0;
  const fetch = ({ backup, entry }: ChainSegment): Promise<Buffer> => {
    const { record } = chain[backup]!;
    const where = `${record.container}/${entry.name}`;
    const p = (async () => {
      const stored = await repo.readObject(record, entry, options.signal);
      if (stats) { stats.objectsRead += 1; stats.bytesRead += stored.length; }
      const result = await pool.run({ kind: 'decode', data: stored, compression: entry.compression, length: entry.length, md5: entry.md5 }, transferable(stored));
      if (result.error || !result.data) {
        throw new IntegrityError(`object ${where} of backup ${record.backupId}: ${result.error ?? 'no data'}`, {
          expected: entry.md5, found: result.found, hint: 'the chain is damaged: consolidate or restore an older backup',
        });
      }
      if (stats) stats.bytesDecoded += entry.length;
      return Buffer.from(result.data.buffer, result.data.byteOffset, result.data.byteLength);
    })();
    p.catch(() => undefined); // awaited in order below; a failure ahead must not go unhandled meanwhile
    return p;
  };
  try {
    for (const [i, seg] of segments.entries()) {
      throwIfAborted(options.signal, 'reading the backup chain');
      const upTo = Math.min(order.length, rank.get(seg.entry)! + 1 + prefetch);
      while (started < upTo) {
        const s = order[started++]!;
        fetched.set(s.entry, fetch(s));
      }
      const data = await fetched.get(seg.entry)!;
      const from = seg.offset - seg.entry.offset;
      yield { offset: seg.offset, length: seg.length, data: data.subarray(from, from + seg.length) };
      if (lastUse.get(seg.entry) === i) fetched.delete(seg.entry);
    }
  } finally {
    await Promise.allSettled(fetched.values());
    await pool.close();
  }
}

export interface ConsolidateOptions {
  /** The new backup's group (default a new UUID); the app gives every disk of a consolidated group the same one. */
  groupId?: string;
  /** The new backup's id (default a new UUID). */
  backupId?: string;
  /** Default zstd, as for backups. */
  compression?: Compression;
  compressionLevel?: number;
  workers?: number;
  /** Created at (tests); default now. Must be later than the point's, or the level chooser may not take it. */
  now?: Date;
  signal?: AbortSignal;
  /** Bytes of the point's data handed to the writer so far, and in all. */
  onProgress?: (done: number, total: number) => void;
}

export interface ConsolidateReport {
  /** The new full backup. */
  backupId: string;
  groupId: string;
  /** The point it equals, and that point's chain (full first). */
  sourceId: string;
  chain: string[];
  vm?: string;
  disk?: string;
  checkpoint?: string;
  size: number;
  /** What the chain holds in all (stored bytes), for comparison. */
  chainStoredBytes: number;
  objectsRead: number;
  /** Stored bytes read, and their uncompressed size. */
  bytesRead: number;
  bytesDecoded: number;
  /** Bytes of the point's data handed to the writer (zero blocks are not stored). */
  bytesData: number;
  objectsWritten: number;
  /** Stored bytes written (data objects). */
  bytesWritten: number;
  durationMs: number;
}

/**
 * Writes a new full backup equal to `backupId`'s point of its chain (see the module comment) and checks its
 * _sha256file against the point's. Throws NotFoundError / MissingParentError (the chain), IntegrityError (damaged
 * objects, or the result differs from the point: then it is deleted again), StoreError, AbortedError; on any
 * failure no new backup remains.
 */
export async function consolidateBackup(repo: Repository, backupId: string, options: ConsolidateOptions = {}): Promise<ConsolidateReport> {
  const started = Date.now();
  const chain = await repo.chain(backupId);
  const { record, metadata } = chain[chain.length - 1]!;
  const fleece = metadata.extra_metadata?.fleece;
  let bs = record.shaBlockSize;
  let size = record.size;
  if (bs === undefined || size === undefined) { // a Cinder-written point: one pass over its _sha256file
    const { header, count } = await repo.streamSha256(record, undefined, options.signal);
    bs = header.chunk_size;
    // It records no size: its last object ends the disk when it ends in the last sha block.
    const maxEnd = chainEnd(chain);
    size ??= maxEnd > (count - 1) * bs && maxEnd <= count * bs ? maxEnd : count * bs;
  }
  const chunkSize = fleece?.chunk_size !== undefined && fleece.chunk_size % bs === 0 ? fleece.chunk_size
    : DEFAULT_CHUNK_SIZE % bs === 0 ? DEFAULT_CHUNK_SIZE : bs * Math.max(1, Math.floor(DEFAULT_CHUNK_SIZE / bs));
  const groupId = options.groupId ?? randomUUID();
  const writer = await repo.startBackup({
    volumeId: record.volumeId, size, mode: 'full', shaBlockSize: bs, chunkSize,
    ...(record.vm !== undefined ? { vm: record.vm } : {}),
    ...(record.disk !== undefined ? { disk: record.disk } : {}),
    ...(record.checkpoint !== undefined ? { checkpoint: record.checkpoint } : {}),
    ...(fleece?.guest_config !== undefined ? { guestConfig: fleece.guest_config } : {}),
    ...(metadata.backup_name !== null ? { name: metadata.backup_name } : {}),
    description: `fleece consolidate: a full backup equal to backup ${backupId} (created ${record.createdAt}, a chain of ${chain.length})`,
    ...(options.backupId !== undefined ? { backupId: options.backupId } : {}),
    ...(options.compression !== undefined ? { compression: options.compression } : {}),
    ...(options.compressionLevel !== undefined ? { compressionLevel: options.compressionLevel } : {}),
    ...(options.workers !== undefined ? { workers: options.workers } : {}),
    ...(options.now !== undefined ? { now: options.now } : {}),
    ...(options.signal ? { signal: options.signal } : {}),
    groupId,
  });
  const stats: ChainReadStats = { objectsRead: 0, bytesRead: 0, bytesDecoded: 0 };
  const total = chainSegments(chain, size).reduce((n, s) => n + s.length, 0);
  let done = 0;
  let summary;
  try {
    for await (const extent of readChain(repo, chain, { size, stats, ...(options.workers !== undefined ? { workers: options.workers } : {}), ...(options.signal ? { signal: options.signal } : {}) })) {
      await writer.write(extent);
      done += extent.length;
      options.onProgress?.(done, total);
    }
    summary = await writer.finish();
  } catch (error) {
    await writer.abort(error);
    throw error;
  }
  try {
    await checkSameDigests(repo, chain[chain.length - 1]!, summary.backupId, options.signal);
  } catch (error) {
    await repo.delete(summary.backupId).catch((e: unknown) => log.warn({ err: e, backupId: summary.backupId }, 'could not delete a consolidated backup that failed its check'));
    throw error;
  }
  log.info({ source: backupId, backupId: summary.backupId, bytesRead: stats.bytesRead, bytesWritten: summary.bytesStored }, 'consolidated');
  return {
    backupId: summary.backupId, groupId, sourceId: backupId, chain: chain.map((b) => b.record.backupId),
    ...(record.vm !== undefined ? { vm: record.vm } : {}),
    ...(record.disk !== undefined ? { disk: record.disk } : {}),
    ...(record.checkpoint !== undefined ? { checkpoint: record.checkpoint } : {}),
    size,
    chainStoredBytes: chain.reduce((n, b) => n + (b.record.storedBytes ?? b.record.dataBytes), 0),
    ...stats,
    bytesData: summary.bytesRead, objectsWritten: summary.objects, bytesWritten: summary.bytesStored,
    durationMs: Date.now() - started,
  };
}

/** Throws IntegrityError unless the new backup's _sha256file lists the point's digests, block for block. */
async function checkSameDigests(repo: Repository, point: LoadedBackup, newId: string, signal?: AbortSignal): Promise<void> {
  const fresh = await repo.get(newId);
  const want = await repo.readSha256Table(point.record, { ...(signal ? { signal } : {}) });
  try {
    let firstBad: number | undefined;
    const { count } = await repo.streamSha256(fresh, (first, digests) => {
      if (firstBad !== undefined) return;
      const n = digests.length / DIGEST_BYTES;
      const expected = first + n <= want.count ? want.table.read(first, n) : undefined;
      if (!expected || !expected.equals(digests)) {
        let b = 0;
        while (expected && b < n && expected.compare(digests, b * DIGEST_BYTES, (b + 1) * DIGEST_BYTES, b * DIGEST_BYTES, (b + 1) * DIGEST_BYTES) === 0) b++;
        firstBad = first + b;
      }
    }, signal);
    if (count !== want.count || firstBad !== undefined) {
      throw new IntegrityError(`the consolidated backup ${newId} differs from backup ${point.record.backupId}${firstBad !== undefined ? ` at sha block ${firstBad}` : ''} (${count} blocks, the point lists ${want.count})`, {
        hint: 'the chain is inconsistent: verify it with `fleece verify --deep`',
      });
    }
  } finally {
    want.table.close();
  }
}
