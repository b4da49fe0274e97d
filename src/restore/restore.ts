// Restore (Cinder's result, not its order): the chain resolved to the newest object per region, objects read and
// decoded in parallel, names and md5s checked, and every block checked against the final _sha256file.
import { IntegrityError, InvalidInputError, throwIfAborted } from '../util/errors.js';
import { getLogger } from '../util/logger.js';
import type { Repository, LoadedBackup } from '../repository/repository.js';
import { metadataName, sha256FileName } from '../repository/format/naming.js';
import { DIGEST_BYTES } from '../repository/format/sha256-file.js';
import { createHash } from 'node:crypto';
import { WorkerPool, hashReply, transferable } from '../repository/pipeline/worker-pool.js';
import type { BlockSink } from './block-sink.js';
import { planRestore, uncovered, type Range } from './restore-plan.js';

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

/**
 * Restores `backupId` (and its chain) into `sink`. Never reports success on damage: throws IntegrityError or
 * ObjectNotFoundError naming the object, MissingParentError for a broken chain, StoreError for I/O, AbortedError.
 *
 * The chain is resolved first (the newest object per region: each byte of the target is written once, objects
 * entirely overwritten later are not read); objects of all backups are read, checked and decoded in parallel. On a
 * target that starts zeroed, zero blocks are not written, and each block is hashed as it is decoded and checked
 * against the final _sha256file, so no second read of the disk is needed; other targets are re-read at the end.
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
  const plan = planRestore(chain.map((b) => b.metadata.objects));
  const total = plan.reduce((n, p) => n + p.live.reduce((m, r) => m + r.length, 0), 0);
  const summary: RestoreSummary = { backupId, chain: chain.map((b) => b.record.backupId), objects: 0, bytesWritten: 0, bytesZeroed: 0, verified: false, durationMs: 0 };
  const verify = options.verifyHashes !== false;
  for (const backup of chain) {
    throwIfAborted(options.signal, `restoring backup ${backupId}`);
    await checkListedObjects(repo, backup);
  }
  // Blocks line up with objects (fleece's and Cinder's writers cut objects at sha blocks): then the decoded data's
  // block digests tell the zero blocks and check the result as it is written.
  const bs = last.record.shaBlockSize ?? (await repo.streamSha256(last.record, undefined, options.signal)).header.chunk_size;
  const aligned = bs > 0 && plan.every((p) => p.entry.offset % bs === 0 && p.live.every((r) => r.offset % bs === 0 && ((r.offset + r.length) % bs === 0 || r.offset + r.length === size)));
  const hashAsWritten = verify && aligned && sink.startsZeroed;
  const expected = hashAsWritten ? await loadExpected(repo, last, bs, size, options.signal) : undefined;
  const pool = new WorkerPool(options.workers);
  try {
    if (!sink.startsZeroed) {
      for (const gap of uncovered(all, sink.size)) {
        throwIfAborted(options.signal, `restoring backup ${backupId}`);
        await sink.zeroRange(gap.offset, gap.length);
        summary.bytesZeroed += gap.length;
      }
    }
    // before anything is written: where no object writes, the final _sha256file must expect zeros
    expected?.checkGaps(sink.name, plan.flatMap((p) => p.live));
    const limit = pool.size * 2 + 1;
    const running = new Set<Promise<void>>();
    let failure: unknown;
    for (const planned of plan) {
      if (failure) break;
      throwIfAborted(options.signal, `restoring backup ${backupId}`);
      const { record } = chain[planned.backup]!;
      const { entry } = planned;
      const task = (async () => {
        const stored = await repo.readObject(record, entry, options.signal);
        const result = await pool.run({
          kind: 'decode', data: stored, compression: entry.compression, length: entry.length, md5: entry.md5, ...(aligned ? { blockSize: bs } : {}),
        }, transferable(stored));
        if (result.error || !result.data) {
          throw new IntegrityError(`object ${record.container}/${entry.name} of backup ${record.backupId}: ${result.error}`, {
            expected: entry.md5, found: result.found, hint: 'the backup is damaged: restore an older backup',
          });
        }
        const data = Buffer.from(result.data.buffer, result.data.byteOffset, result.data.byteLength);
        const digests = result.digests ? Buffer.from(result.digests.buffer, result.digests.byteOffset, result.digests.byteLength) : undefined;
        for (const live of planned.live) {
          throwIfAborted(options.signal, `restoring backup ${backupId}`);
          const from = live.offset - entry.offset;
          if (expected && digests) expected.check(sink.name, live.offset / bs, digests, from / bs, Math.ceil(live.length / bs));
          if (digests && sink.startsZeroed) {
            await writeNonZero(sink, data, digests, from, live.length, entry.offset, bs);
          } else {
            await sink.write(live.offset, data.subarray(from, from + live.length));
          }
          summary.bytesWritten += live.length;
        }
        summary.objects += 1;
        options.onProgress?.(summary.bytesWritten, total);
      })();
      running.add(task);
      task.then(() => running.delete(task), (error: unknown) => { running.delete(task); failure ??= error; });
      if (running.size >= limit) await Promise.race(running).catch(() => undefined);
    }
    await Promise.allSettled(running);
    if (failure) throw failure;
    log.debug({ backupId, objects: summary.objects, planned: plan.length, listed: all.length }, 'applied');
    await sink.flush();
    if (expected) {
      summary.verified = true;
    } else if (verify && sink.read) {
      await verifyRestored(repo, last, sink, size, all, pool, options.signal);
      summary.verified = true;
    }
  } finally {
    expected?.close();
    await pool.close();
  }
  summary.durationMs = Date.now() - started;
  return summary;
}

/** Zero runs shorter than this are written with the data around them: many small writes cost more than the zeros. */
const MIN_ZERO_SKIP = 256 * 1024;

/**
 * Writes data[from, from+length) (object at `base`) leaving out its runs of zero blocks of MIN_ZERO_SKIP or more
 * (and zero blocks at either end of the range); shorter zero runs between data are written with it.
 */
async function writeNonZero(sink: BlockSink, data: Buffer, digests: Buffer, from: number, length: number, base: number, bs: number): Promise<void> {
  const end = from + length;
  const isZero = (at: number): boolean => digests.compare(zeroDigest(Math.min(bs, end - at)), 0, DIGEST_BYTES, (at / bs) * DIGEST_BYTES, (at / bs) * DIGEST_BYTES + DIGEST_BYTES) === 0;
  let runStart = -1; // first byte of the pending data run
  let runEnd = -1; // end of its last non-zero block
  for (let at = from; at < end; at += bs) {
    if (isZero(at)) {
      if (runStart >= 0 && at + bs - runEnd >= MIN_ZERO_SKIP) {
        await sink.write(base + runStart, data.subarray(runStart, runEnd));
        runStart = -1;
      }
      continue;
    }
    if (runStart < 0) runStart = at;
    runEnd = Math.min(end, at + bs);
  }
  if (runStart >= 0) await sink.write(base + runStart, data.subarray(runStart, runEnd));
}

const zeroDigests = new Map<number, Buffer>();
function zeroDigest(length: number): Buffer {
  let d = zeroDigests.get(length);
  if (!d) {
    d = createHash('sha256').update(Buffer.alloc(length)).digest();
    zeroDigests.set(length, d);
  }
  return d;
}

/** The final _sha256file as a DigestTable, with the checks of blocks as they are written and of the gaps between. */
async function loadExpected(repo: Repository, last: LoadedBackup, bs: number, size: number, signal?: AbortSignal) {
  const blocks = Math.ceil(size / bs);
  const lastLen = size - (blocks - 1) * bs;
  const loaded = await repo.readSha256Table(last.record, { blocks, defaults: { full: zeroDigest(bs), last: zeroDigest(lastLen) }, signal });
  const { table, where, header } = loaded;
  if (header.chunk_size !== bs) {
    table.close();
    throw new IntegrityError(`${where} has chunk_size ${header.chunk_size}, the manifest says ${bs}`);
  }
  return {
    /** Blocks [first, first+count) of the disk against digests[at, at+count) of the decoded object. */
    check(target: string, first: number, digests: Buffer, at: number, count: number): void {
      const want = table.read(first, count);
      const got = digests.subarray(at * DIGEST_BYTES, (at + count) * DIGEST_BYTES);
      if (got.equals(want)) return;
      let b = 0;
      while (got.compare(want, b * DIGEST_BYTES, (b + 1) * DIGEST_BYTES, b * DIGEST_BYTES, (b + 1) * DIGEST_BYTES) === 0) b++;
      throw new IntegrityError(`the restored disk ${target} differs from ${where} at block ${first + b} (offset ${(first + b) * bs})`, {
        expected: want.toString('hex', b * DIGEST_BYTES, (b + 1) * DIGEST_BYTES), found: got.toString('hex', b * DIGEST_BYTES, (b + 1) * DIGEST_BYTES),
        hint: 'the backup chain is inconsistent: restore an older backup',
      });
    },
    /** Where no object wrote, the target reads zeros: the _sha256file must say so. */
    checkGaps(target: string, written: Range[]): void {
      let gapStart = 0;
      for (const [first, end] of [...coveredBlocks(written, bs, blocks), [blocks, blocks] as [number, number]]) {
        const b = table.nextNonDefault(gapStart, first);
        if (b < first) {
          throw new IntegrityError(`the restored disk ${target} differs from ${where} at block ${b} (offset ${b * bs}): no object of the chain covers it, the sha256file expects data`, {
            expected: table.get(b).toString('hex'), found: zeroDigest(b === blocks - 1 ? lastLen : bs).toString('hex'),
            hint: 'the backup chain is inconsistent: restore an older backup',
          });
        }
        gapStart = end;
      }
    },
    close(): void {
      table.close();
    },
  };
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
