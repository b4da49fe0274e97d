// Restore (Cinder's algorithm): follow the chain from the full backup forward, write each object at its offset,
// check names, md5s, and at the end re-hash the restored disk against the final _sha256file.
import { IntegrityError, InvalidInputError, throwIfAborted } from '../util/errors.js';
import { getLogger } from '../util/logger.js';
import type { Repository, LoadedBackup } from '../repository/repository.js';
import { metadataName, sha256FileName } from '../repository/format/naming.js';
import { DIGEST_BYTES } from '../repository/format/sha256-file.js';
import { createHash } from 'node:crypto';
import { WorkerPool, hashReply, transferable } from '../repository/pipeline/worker-pool.js';
import type { BlockSink } from './block-sink.js';

const log = getLogger('restore');

export interface RestoreOptions {
  /** Re-read the restored disk and compare every block with the final _sha256file (default true when the sink can read). */
  verifyHashes?: boolean;
  workers?: number;
  signal?: AbortSignal;
  /** Bytes written so far and in total (uncompressed object bytes of the chain). */
  onProgress?: (done: number, total: number) => void;
}

export interface RestoreSummary {
  backupId: string;
  /** Backup ids applied, full first. */
  chain: string[];
  objects: number;
  bytesWritten: number;
  bytesZeroed: number;
  /** Whether the final re-hash ran (and passed: a mismatch throws). */
  verified: boolean;
  durationMs: number;
}

/** Cinder's check: the container's objects with the prefix are exactly those the manifest lists. Throws IntegrityError. */
async function checkListedObjects(repo: Repository, { record, metadata }: LoadedBackup): Promise<void> {
  const present = new Set((await repo.store.list(record.container, record.prefix)).map((o) => o.name));
  present.delete(metadataName(record.prefix));
  present.delete(sha256FileName(record.prefix));
  const listed = new Set(metadata.objects.map((o) => o.name));
  for (const name of listed) {
    if (!present.has(name)) {
      throw new IntegrityError(`object ${record.container}/${name} of backup ${record.backupId} is missing`, {
        hint: 'the backup is damaged: restore an older backup', expected: name,
      });
    }
  }
  for (const name of present) {
    if (!listed.has(name)) {
      throw new IntegrityError(`object ${record.container}/${name} is in the container of backup ${record.backupId} but not in its manifest`, {
        hint: 'remove the stray object (Cinder refuses such a backup too)', found: name,
      });
    }
  }
}

/** The complement of the union of ranges within [0, size). */
function uncovered(ranges: { offset: number; length: number }[], size: number): { offset: number; length: number }[] {
  const sorted = [...ranges].sort((a, b) => a.offset - b.offset);
  const gaps: { offset: number; length: number }[] = [];
  let pos = 0;
  for (const r of sorted) {
    if (r.offset > pos) gaps.push({ offset: pos, length: r.offset - pos });
    pos = Math.max(pos, r.offset + r.length);
  }
  if (pos < size) gaps.push({ offset: pos, length: size - pos });
  return gaps;
}

/**
 * Restores `backupId` (and its chain) into `sink`. Never reports success on damage: throws IntegrityError or
 * ObjectNotFoundError naming the object, MissingParentError for a broken chain, StoreError for I/O, AbortedError.
 */
export async function restoreBackup(repo: Repository, backupId: string, sink: BlockSink, options: RestoreOptions = {}): Promise<RestoreSummary> {
  const started = Date.now();
  const chain = await repo.chain(backupId);
  const last = chain[chain.length - 1]!;
  const size = last.record.size ?? sink.size;
  if (size > sink.size) throw new InvalidInputError(`backup ${backupId} is a disk of ${size} bytes, the target ${sink.name} holds ${sink.size}`, { hint: 'restore into a larger target' });
  const all = chain.flatMap((b) => b.metadata.objects);
  for (const b of chain) {
    for (const o of b.metadata.objects) {
      if (o.offset + o.length > sink.size) throw new IntegrityError(`object ${b.record.container}/${o.name} ends at ${o.offset + o.length}, beyond the target size ${sink.size}`);
    }
  }
  const total = all.reduce((n, o) => n + o.length, 0);
  const summary: RestoreSummary = { backupId, chain: chain.map((b) => b.record.backupId), objects: 0, bytesWritten: 0, bytesZeroed: 0, verified: false, durationMs: 0 };
  const pool = new WorkerPool(options.workers);
  try {
    if (!sink.startsZeroed) {
      for (const gap of uncovered(all, sink.size)) {
        throwIfAborted(options.signal, `restoring backup ${backupId}`);
        await sink.zeroRange(gap.offset, gap.length);
        summary.bytesZeroed += gap.length;
      }
    }
    for (const backup of chain) {
      throwIfAborted(options.signal, `restoring backup ${backupId}`);
      await checkListedObjects(repo, backup);
      const { record, metadata } = backup;
      const limit = pool.size * 2 + 1;
      const running = new Set<Promise<void>>();
      let failure: unknown;
      for (const entry of metadata.objects) {
        if (failure) break;
        throwIfAborted(options.signal, `restoring backup ${backupId}`);
        const task = (async () => {
          const stored = await repo.readObject(record, entry, options.signal);
          const result = await pool.run({ kind: 'decode', data: stored, compression: entry.compression, length: entry.length, md5: entry.md5 }, transferable(stored));
          if (result.error || !result.data) {
            throw new IntegrityError(`object ${record.container}/${entry.name} of backup ${record.backupId}: ${result.error}`, {
              expected: entry.md5, found: result.found, hint: 'the backup is damaged: restore an older backup',
            });
          }
          await sink.write(entry.offset, result.data);
          summary.objects += 1;
          summary.bytesWritten += entry.length;
          options.onProgress?.(summary.bytesWritten, total);
        })();
        running.add(task);
        task.then(() => running.delete(task), (error: unknown) => { running.delete(task); failure ??= error; });
        if (running.size >= limit) await Promise.race(running).catch(() => undefined);
      }
      await Promise.allSettled(running);
      if (failure) throw failure;
      log.debug({ backupId: record.backupId, objects: metadata.objects.length }, 'applied');
    }
    await sink.flush();
    if (options.verifyHashes !== false && sink.read) {
      await verifyRestored(repo, last, sink, size, all, pool, options.signal);
      summary.verified = true;
    }
  } finally {
    await pool.close();
  }
  summary.durationMs = Date.now() - started;
  return summary;
}

/** Block-aligned ranges [first, end) of sha blocks that objects cover, merged, ascending. */
function coveredBlocks(ranges: { offset: number; length: number }[], bs: number, blocks: number): [number, number][] {
  const sorted = ranges.filter((r) => r.length > 0).map((r) => [Math.floor(r.offset / bs), Math.min(blocks, Math.ceil((r.offset + r.length) / bs))] as [number, number]);
  sorted.sort((a, b) => a[0] - b[0]);
  const out: [number, number][] = [];
  for (const r of sorted) {
    const prev = out[out.length - 1];
    if (prev && r[0] <= prev[1]) prev[1] = Math.max(prev[1], r[1]);
    else out.push(r);
  }
  return out;
}

/**
 * Re-hashes the target block by block against the final _sha256file, read streaming into a DigestTable (memory
 * bounded whatever the disk size). On a sink that started zeroed, only the ranges objects were written to are
 * re-read; everywhere else the _sha256file must list the zero-block digest. Throws IntegrityError naming the block.
 */
async function verifyRestored(repo: Repository, last: LoadedBackup, sink: BlockSink, size: number, objects: { offset: number; length: number }[], pool: WorkerPool, signal?: AbortSignal): Promise<void> {
  const { record } = last;
  const bs = record.shaBlockSize ?? (await repo.streamSha256(record, undefined, signal)).header.chunk_size;
  const blocks = Math.ceil(size / bs);
  const zeroFull = createHash('sha256').update(Buffer.alloc(bs)).digest();
  const lastLen = size - (blocks - 1) * bs;
  const zeroLast = lastLen === bs ? zeroFull : createHash('sha256').update(Buffer.alloc(lastLen)).digest();
  const loaded = await repo.readSha256Table(record, { blocks, defaults: { full: zeroFull, last: zeroLast }, signal });
  const { table, where, header } = loaded;
  try {
    if (header.chunk_size !== bs) throw new IntegrityError(`${where} has chunk_size ${header.chunk_size}, the manifest says ${bs}`);
    const ranges: [number, number][] = sink.startsZeroed ? coveredBlocks(objects, bs, blocks) : [[0, blocks]];
    if (sink.startsZeroed) { // nothing was written between the covered ranges: the target reads zeros there
      let gapStart = 0;
      for (const [first, end] of [...ranges, [blocks, blocks] as [number, number]]) {
        const b = table.nextNonDefault(gapStart, first);
        if (b < first) {
          throw new IntegrityError(`the restored disk ${sink.name} differs from ${where} at block ${b} (offset ${b * bs}): no object of the chain covers it, the sha256file expects data`, {
            expected: table.get(b).toString('hex'), found: (b === blocks - 1 ? zeroLast : zeroFull).toString('hex'),
            hint: 'the backup chain is inconsistent: restore an older backup',
          });
        }
        gapStart = end;
      }
    }
    const pieceBlocks = Math.max(1, Math.floor((4 << 20) / bs));
    const running: Promise<void>[] = [];
    // Read buffers come back from the workers with the digests and are read into again: memory stays at the few
    // pieces in flight instead of a fresh 4 MiB per piece for the garbage collector.
    const spare: Buffer[] = [];
    for (const [rangeFirst, rangeEnd] of ranges) {
      for (let first = rangeFirst; first < rangeEnd; first += pieceBlocks) {
        throwIfAborted(signal, 'checking the restored disk');
        const offset = first * bs;
        const count = Math.min(pieceBlocks, rangeEnd - first);
        const length = Math.min(count * bs, size - offset);
        const into = spare.pop();
        let data = await sink.read!(offset, length, into);
        // A whole buffer can move to the worker; a view of a reused one (last, shorter piece) is copied.
        if (transferable(data).length === 0 && into) data = Buffer.from(data);
        const want = table.read(first, count);
        running.push(pool.run({ kind: 'hash', data, blockSize: bs }, transferable(data)).then((reply) => {
          const { digests, input } = hashReply(reply);
          if (input && input.byteLength === pieceBlocks * bs && spare.length < pool.size * 2 + 1) {
            spare.push(Buffer.from(input.buffer, input.byteOffset, input.byteLength));
          }
          const got = Buffer.from(digests.buffer, digests.byteOffset, digests.byteLength);
          if (!got.equals(want)) {
            let b = 0;
            while (got.compare(want, b * DIGEST_BYTES, b * DIGEST_BYTES + DIGEST_BYTES, b * DIGEST_BYTES, b * DIGEST_BYTES + DIGEST_BYTES) === 0) b++;
            throw new IntegrityError(`the restored disk ${sink.name} differs from ${where} at block ${first + b} (offset ${(first + b) * bs})`, {
              expected: want.toString('hex', b * DIGEST_BYTES, b * DIGEST_BYTES + DIGEST_BYTES), found: got.toString('hex', b * DIGEST_BYTES, b * DIGEST_BYTES + DIGEST_BYTES),
              hint: 'the backup chain is inconsistent or the target changed during the restore',
            });
          }
        }));
        running[running.length - 1]!.catch(() => undefined);
        if (running.length >= pool.size * 2) await running.shift();
      }
    }
    await Promise.all(running);
  } finally {
    table.close();
  }
}
