// BackupWriter: turns a stream of extents into Cinder data objects, a _sha256file and, last, the _metadata.
import { createHash, randomUUID } from 'node:crypto';
import { hostname } from 'node:os';
import { processStartTime } from '../util/process-start.js';
import { AbortedError, ConflictError, FleeceError, IntegrityError, InvalidInputError, throwIfAborted } from '../util/errors.js';
import { getLogger } from '../util/logger.js';
import { testPausePoint } from '../util/test-pause.js';
import { StoreError, type ObjectStore } from './store/object-store.js';
import {
  DEFAULT_LEASE_TTL_MS, FORMAT_VERSION, backupLocation, dataObjectName, leaseName, metadataName, pythonDatetimeString, sha256FileName,
  type RepositoryLayout,
} from './format/naming.js';
import { serializeMetadataPieces, type BackupMetadata, type Compression, type FleeceExtra, type GuestConfigExtra, type ObjectEntry } from './format/manifest.js';
import { DIGEST_BYTES, sha256FileStream, type DigestSink } from './format/sha256-file.js';
import { DigestTable, type DigestTableOptions } from './digest-table.js';
import { DEFAULT_LEVELS } from './compression/codecs.js';
import { WorkerPool, transferable, type EncodeResult } from './pipeline/worker-pool.js';
import type { Extent } from './extents.js';

const log = getLogger('repository.writer');

/** fleece's version, recorded in every manifest. */
export const FLEECE_VERSION = '0.1.0';

/**
 * Default object size: 4 MiB. Cinder's 32 MiB means queue depth × 32 MiB × 2 (raw + compressed) of memory in
 * flight and a whole 32 MiB object rewritten for a 4 KiB change in a full; 4 MiB (PBS's fixed-index chunk size)
 * keeps about 40 MiB in flight with the default queue, still only 256 requests per GiB (cheap for posix and S3),
 * and big enough for zstd to compress as well as on larger buffers. Incrementals store changed runs anyway.
 */
export const DEFAULT_CHUNK_SIZE = 4 * 1024 * 1024;
/** Cinder's backup_sha_block_size_bytes default. */
export const DEFAULT_SHA_BLOCK_SIZE = 32 * 1024;

/**
 * A backup being written says so with a lease object (both layouts; in s3 writers on many hosts share one bucket):
 * put before its first object, put again every `refreshMs`, removed after the commit; gc leaves every object of a
 * backup whose lease is younger than its `ttlMs` alone. The writer refuses to commit when its lease went unrefreshed
 * for half the ttl (a gc elsewhere may then have removed its objects).
 */
export interface LeaseOptions {
  refreshMs: number;
  ttlMs: number;
}

/** Refreshed every minute; alive for 15 minutes (gc's view: a writer that stopped refreshing is gone). */
export const DEFAULT_LEASE: LeaseOptions = { refreshMs: 60_000, ttlMs: DEFAULT_LEASE_TTL_MS };

/** How the producer reads: see the module README. */
export type BackupMode = 'full' | 'changed-extents' | 'compare';

/** The parent's hashes, as the repository hands them to a writer: in memory, or streamed by `load` (big disks). */
export interface ParentState {
  backupId: string;
  volumeId: string;
  size: number;
  shaBlockSize: number;
  /** All the parent's digests (small disks, tests). */
  digests?: Buffer;
  /** Streams the parent's digests in block order into `sink` (read straight into the new backup's table). */
  load?: (sink: DigestSink) => Promise<void>;
}

export interface WriterOptions {
  backupId?: string;
  volumeId: string;
  /** The disk's virtual size in bytes. */
  size: number;
  mode: BackupMode;
  parent?: ParentState;
  chunkSize?: number;
  shaBlockSize?: number;
  compression?: Compression;
  compressionLevel?: number;
  name?: string | null;
  description?: string | null;
  volumeMeta?: string | null;
  /** An encrypted repository's scheme and key id, recorded as `extra_metadata.encryption` (the store seals the objects). */
  encryption?: { scheme: string; key_id: string };
  vm?: string;
  disk?: string;
  checkpoint?: string;
  incrementalFrom?: string;
  groupId?: string;
  guestConfig?: GuestConfigExtra;
  /** Object naming (default posix: Cinder's posix driver; s3: Cinder's S3 driver). */
  layout?: RepositoryLayout;
  /** The `az_<az>` of s3-layout names (default Cinder's `nova`). */
  availabilityZone?: string;
  /** Keep a lease while writing (see LeaseOptions); the repository sets it for both layouts. */
  lease?: LeaseOptions;
  /** Worker threads (default: one per core). */
  workers?: number;
  /** Segments in flight (each at most chunkSize raw + its compressed objects); default 2 × workers + 2. */
  queueDepth?: number;
  /** Object puts in flight at once; default 4. */
  putConcurrency?: number;
  /** The backup's creation time (tests). */
  now?: Date;
  /** Where the per-block digests live: memory below `memoryLimit` (default 16 MiB), else a temporary file. */
  digestTable?: Pick<DigestTableOptions, 'memoryLimit' | 'cacheBytes' | 'tempDir'>;
  signal?: AbortSignal;
  /** Called after each committed metadata (the catalog updates itself). */
  onCommit?: (meta: BackupMetadata) => void;
}

export interface BackupSummary {
  backupId: string;
  container: string;
  prefix: string;
  parentId: string | null;
  /** Bytes of data handed to write(). */
  bytesRead: number;
  /** Uncompressed bytes stored in objects. */
  bytesChanged: number;
  /** Bytes stored (after compression) in data objects. */
  bytesStored: number;
  objects: number;
  durationMs: number;
}

/** The writer refused an incremental because its parent is not compatible. */
export class IncompatibleParentError extends FleeceError {
  constructor(message: string, hint: string) {
    super('CONFLICT', message, { hint });
  }
}

/**
 * What the segments in flight may hold: each is a chunk read from NBD plus, while it is stored, its compressed copy.
 * The peak RSS aim (issue 11: ≤ 256 MiB for any disk) is a budget, measured on a 2-core host with 4 MiB objects:
 * Node with the backup code loaded ~70 MiB; each worker ~15 MiB (its isolate, a 4 MiB zstd scratch buffer, the
 * context); NBD read-ahead (4 + 1) × 4 MiB (repository-backup); this pipeline 2 × queueDepth × chunk (6 slots: 48 MiB);
 * the O_DIRECT staging 16 MiB (fs-store); the digest table ≤ 16 MiB (DEFAULT_DIGEST_MEMORY_LIMIT, then a temporary
 * file): about 200 MiB, the rest is garbage not yet collected. None of it grows with the disk; the queue would grow with
 * the cores and the chunk size (S3: 16 MiB objects), so it is capped by this budget.
 */
export const PIPELINE_MEMORY_BUDGET = 64 * 1024 * 1024;

/** Segments in flight: enough to keep every worker busy (two each, plus two being stored), within the budget. */
export function defaultQueueDepth(workers: number, chunkSize: number): number {
  return Math.max(2, Math.min(2 * workers + 2, Math.floor(PIPELINE_MEMORY_BUDGET / (2 * chunkSize))));
}

type State = 'open' | 'finishing' | 'done' | 'aborted' | 'failed';

interface Segment { startBlock: number; capBlocks: number; buf: Buffer; filledEnd: number }

/**
 * Writes one disk backup. Call write() with extents in ascending offset order (awaiting each: it applies
 * backpressure when the pipeline is full), then finish(); or abort(). Memory stays bounded by
 * queueDepth × chunkSize (+ compressed copies) plus the digest table's memory limit (then a temporary file),
 * whatever the disk size.
 */
export class BackupWriter {
  readonly backupId: string;
  readonly container: string;
  readonly prefix: string;
  private readonly size: number;
  private readonly bs: number;
  private readonly blocks: number;
  /** Bytes per segment (the largest object); bufferForRead() hands out buffers of this size. */
  readonly chunkSize: number;
  private readonly chunkBlocks: number;
  private readonly codec: Compression;
  private readonly level: number;
  private mode: BackupMode;
  private readonly digests: DigestTable;
  private readonly inheritBlocks: number;
  private readonly zeroFull: Buffer;
  private readonly zeroLast: Buffer;
  private readonly pool: WorkerPool;
  private readonly queueDepth: number;
  private readonly putConcurrency: number;
  private readonly created: Date;
  private readonly started = Date.now();

  private state: State = 'open';
  private prepared: Promise<void> | undefined;
  private failure: unknown;
  private seg: Segment | null = null;
  private nextBlock = 0;
  private cursor = 0;
  private inFlight = 0;
  private slotWaiters: (() => void)[] = [];
  private tail: Promise<void> = Promise.resolve();
  private putsRunning = 0;
  private putWaiters: (() => void)[] = [];
  /** Full-size segment buffers whose objects are stored, ready for reuse (no fresh, page-faulted memory per segment). */
  private readonly spare: Buffer[] = [];
  /** Spare buffers kept beyond the queue for the reads in flight: 32 MiB of them (8 of Cinder's 4 MiB, 2 of S3's 16 MiB). */
  private readonly extraSpares: number;
  private readonly entries: ObjectEntry[] = [];
  private readonly written: string[] = [];
  /** What the cleanup of a failed backup could not remove for sure (see leftBehind). */
  private readonly unremoved: string[] = [];
  private cleanupFailure: unknown;
  private bytesRead = 0;
  private bytesChanged = 0;
  private bytesStored = 0;
  private readonly signal: AbortSignal | undefined;
  private leaseTimer: NodeJS.Timeout | undefined;
  private leaseRefresh: Promise<void> | undefined;
  private aborting: Promise<void> | undefined;
  /** Resolves once a finish() in progress has settled (committed, or removed what it wrote). */
  private finishSettled: Promise<void> = Promise.resolve();
  /** When the lease was last put (Date.now()); undefined: no lease (yet). */
  private leaseAt: number | undefined;
  private readonly onAbort = () => { void this.abort(this.signal?.reason); };

  /** Throws InvalidInputError for bad sizes/options and IncompatibleParentError for a parent it cannot extend. */
  constructor(private readonly store: ObjectStore, private readonly options: WriterOptions) {
    const { size, mode, parent } = options;
    if (!Number.isSafeInteger(size) || size <= 0) throw new InvalidInputError(`disk size ${size} is not a positive integer`);
    this.bs = options.shaBlockSize ?? parent?.shaBlockSize ?? DEFAULT_SHA_BLOCK_SIZE;
    this.chunkSize = options.chunkSize ?? DEFAULT_CHUNK_SIZE;
    if (!Number.isSafeInteger(this.bs) || this.bs <= 0 || this.bs % 512 !== 0) {
      throw new InvalidInputError(`sha block size ${this.bs} is not a positive multiple of 512`, { hint: 'use 32768 (Cinder\'s default)' });
    }
    if (!Number.isSafeInteger(this.chunkSize) || this.chunkSize < this.bs || this.chunkSize % this.bs !== 0) {
      throw new InvalidInputError(`chunk size ${this.chunkSize} is not a multiple of the sha block size ${this.bs}`, { hint: 'use a multiple of the sha block size' });
    }
    if (mode === 'full' && parent) throw new InvalidInputError('a full backup takes no parent', { hint: 'drop the parent or use mode changed-extents/compare' });
    if (mode !== 'full' && !parent) throw new InvalidInputError(`mode ${mode} needs a parent backup`, { hint: 'give a parent or take a full backup' });
    if (parent) {
      if (parent.shaBlockSize !== this.bs) {
        throw new IncompatibleParentError(
          `parent backup ${parent.backupId} uses sha blocks of ${parent.shaBlockSize} bytes, this backup ${this.bs}`,
          'an incremental must use its parent\'s sha block size: take a full backup to change it');
      }
      if (parent.volumeId !== options.volumeId) {
        throw new IncompatibleParentError(`parent backup ${parent.backupId} is of volume ${parent.volumeId}, not ${options.volumeId}`,
          'an incremental continues the chain of the same volume');
      }
      if (mode === 'changed-extents' && parent.size !== size) {
        throw new IncompatibleParentError(`the disk size changed from ${parent.size} to ${size} since parent backup ${parent.backupId}`,
          'after a resize, take a full backup or an incremental in compare mode');
      }
    }
    this.size = size;
    this.mode = mode;
    this.blocks = Math.ceil(size / this.bs);
    this.chunkBlocks = this.chunkSize / this.bs;
    this.codec = options.compression ?? 'zstd';
    this.level = options.compressionLevel ?? DEFAULT_LEVELS[this.codec];
    this.backupId = options.backupId ?? randomUUID();
    this.created = options.now ?? new Date();
    ({ container: this.container, prefix: this.prefix } = backupLocation(options.layout ?? 'posix', options.volumeId, this.created, this.backupId, options.availabilityZone));
    this.zeroFull = createHash('sha256').update(Buffer.alloc(this.bs)).digest();
    const lastLen = size - (this.blocks - 1) * this.bs;
    this.zeroLast = lastLen === this.bs ? this.zeroFull : createHash('sha256').update(Buffer.alloc(lastLen)).digest();
    // Every block starts at the zero-block digest ("never set" in the table, so holes cost nothing).
    this.digests = new DigestTable({ ...options.digestTable, blocks: this.blocks, defaults: { full: this.zeroFull, last: this.zeroLast } });
    // Blocks beyond the parent's end were not there: they restore as zeros, which is the baseline already set.
    this.inheritBlocks = !parent ? 0 : parent.size === size ? this.blocks : Math.min(this.blocks, Math.floor(parent.size / this.bs));
    if (parent?.digests) this.inherit(0, parent.digests);
    const workers = options.workers ?? undefined;
    this.pool = new WorkerPool(workers);
    this.queueDepth = options.queueDepth ?? defaultQueueDepth(this.pool.size, this.chunkSize);
    this.putConcurrency = options.putConcurrency ?? 4;
    this.extraSpares = Math.max(2, Math.floor((32 * 1024 * 1024) / this.chunkSize));
    this.signal = options.signal;
    this.signal?.addEventListener('abort', this.onAbort, { once: true });
  }

  private inherit(first: number, digests: Buffer): void {
    if (first >= this.inheritBlocks) return;
    const n = Math.min(digests.length / DIGEST_BYTES, this.inheritBlocks - first);
    this.digests.write(first, digests.subarray(0, n * DIGEST_BYTES));
  }

  /**
   * Streams the parent's digests into this backup's table (when the parent came with `load`); the repository
   * awaits it before handing the writer out. Throws what `load` throws (IntegrityError, StoreError…).
   */
  prepare(): Promise<void> {
    const load = this.options.parent?.load;
    // The lease must exist before the first object, not before the parent is read: both at once. Settled only once
    // both are (an abort's cleanup then finds the lease put, or not).
    this.prepared ??= Promise.allSettled([
      this.takeLease(),
      load ? load((first, digests) => this.inherit(first, digests)) : undefined,
    ]).then((results) => {
      for (const r of results) if (r.status === 'rejected') throw r.reason;
    });
    return this.prepared;
  }

  private leaseBody(): Buffer {
    return Buffer.from(`${JSON.stringify({
      backup_id: this.backupId, prefix: this.prefix, host: hostname(), pid: process.pid,
      start_time: processStartTime(process.pid) ?? null, refreshed_at: new Date().toISOString(), ttl_seconds: Math.round(this.options.lease!.ttlMs / 1000),
    })}\n`);
  }

  /** Puts the lease (when asked for one) and keeps refreshing it. Throws StoreError when the first put fails. */
  private async takeLease(): Promise<void> {
    const lease = this.options.lease;
    if (!lease) return;
    const name = this.leaseObjectName();
    await this.store.put(this.container, name, this.leaseBody(), { signal: this.signal });
    this.leaseAt = Date.now();
    this.leaseTimer = setInterval(() => {
      if (this.leaseRefresh) return; // the previous refresh is still on its way
      const at = Date.now();
      this.leaseRefresh = this.store.put(this.container, name, this.leaseBody(), { signal: this.signal }).then(
        () => { if (this.leaseAt !== undefined) this.leaseAt = Math.max(this.leaseAt, at); },
        (error: unknown) => log.warn({ backupId: this.backupId, err: error }, 'could not refresh the backup\'s lease'))
        .finally(() => { this.leaseRefresh = undefined; });
    }, lease.refreshMs);
    this.leaseTimer.unref();
  }

  /** Throws StoreError when the lease went unrefreshed for half its ttl (gc elsewhere may have taken objects). */
  private checkLease(): void {
    const lease = this.options.lease;
    if (!lease || this.leaseAt === undefined) return;
    const age = Date.now() - this.leaseAt;
    if (age > lease.ttlMs / 2) {
      throw new StoreError(`backup ${this.backupId} could not refresh its lease in ${this.store.location} for ${Math.round(age / 1000)} s`, {
        hint: 'a gc on another host may have removed its objects meanwhile: take the backup again',
      });
    }
  }

  /**
   * Stops refreshing the lease and removes it unless `keepBecause` is set (the store failed: then it stays, for whoever
   * journaled the backup, else gc). Resolves with the error when it stays, else undefined. Never throws.
   */
  private async releaseLease(keepBecause?: unknown): Promise<unknown> {
    clearInterval(this.leaseTimer);
    this.leaseTimer = undefined;
    await this.leaseRefresh; // else a refresh on its way would put the lease back
    if (this.leaseAt === undefined) return undefined;
    this.leaseAt = undefined;
    if (keepBecause !== undefined) return keepBecause;
    return this.store.delete(this.container, this.leaseObjectName()).then(() => undefined, (error: unknown) => error ?? new Error('lease delete failed'));
  }

  /** s3: a key beside the backup's prefix; posix: a file in the backup's own container. */
  private leaseObjectName(): string {
    const key = leaseName(this.container, this.backupId);
    return this.options.layout === 's3' ? key : key.slice(this.container.length + 1);
  }

  /**
   * Throws IntegrityError naming the first object this backup wrote that is no longer in the repository (a gc, an
   * operator or a damaged disk removed it): the _metadata is then never written, so nothing is built on it.
   */
  private async checkWritten(): Promise<void> {
    const present = new Set((await this.store.list(this.container, this.prefix, { signal: this.signal })).map((o) => o.name));
    const missing = this.written.filter((name) => !present.has(name));
    if (missing.length > 0) {
      throw new IntegrityError(`backup ${this.backupId}: ${missing.length} of the ${this.written.length} objects it wrote vanished from ${this.store.location} before its commit (first: ${this.container}/${missing[0]})`, {
        hint: 'something removed them while the backup ran (a gc with another lease setting, an operator, the file system): nothing was committed; take the backup again',
      });
    }
  }

  private check(): void {
    if (this.state === 'failed') throw this.failure;
    if (this.state === 'aborted') throw new AbortedError(`backup ${this.backupId} was aborted`, { cause: this.failure });
    if (this.state !== 'open') throw new ConflictError(`backup ${this.backupId} is already ${this.state}`, { hint: 'start a new backup' });
  }

  /**
   * Adds one extent. Offsets must ascend and stay within the disk; in changed-extents mode extents must be
   * aligned to sha blocks (see alignRangesToBlocks). Ranges never written read as zeros (full, compare) or as
   * unchanged since the parent (changed-extents). Resolves when the pipeline has room for more.
   * With `handOver` the caller gives up `extent.data` (a buffer from bufferForRead(), never to be touched again): a
   * block-aligned piece then becomes a segment without a copy.
   * Throws InvalidInputError for a bad extent, AbortedError after abort, and the pipeline's first failure.
   */
  async write(extent: Extent, options: { handOver?: boolean } = {}): Promise<void> {
    this.check();
    await this.prepare(); // at once when the repository already awaited it
    const { offset, length } = extent;
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > this.size) {
      throw new InvalidInputError(`extent at ${offset} length ${length} is outside the disk (size ${this.size})`);
    }
    if (offset < this.cursor) {
      throw new InvalidInputError(`extent at ${offset} comes before the end of the previous one (${this.cursor})`, { hint: 'pass extents in ascending offset order, not overlapping' });
    }
    if (length === 0) return;
    if (this.mode === 'changed-extents' && (offset % this.bs !== 0 || ((offset + length) % this.bs !== 0 && offset + length !== this.size))) {
      throw new InvalidInputError(`extent at ${offset} length ${length} is not aligned to sha blocks of ${this.bs} bytes`, { hint: 'expand dirty ranges with alignRangesToBlocks' });
    }
    this.cursor = offset + length;
    if ('zero' in extent) {
      if (this.mode === 'changed-extents') {
        await this.flush();
        const first = offset / this.bs;
        const end = Math.ceil((offset + length) / this.bs);
        await this.zeroBlocks(first, end);
        this.nextBlock = end;
      }
      return; // full/compare: a zero range is just a gap
    }
    const data = extent.data;
    if (data.length !== length) throw new InvalidInputError(`extent at ${offset} says length ${length} but carries ${data.length} bytes`);
    this.bytesRead += length;
    const whole = options.handOver ? this.wholeChunk(data) : undefined;
    if (whole && await this.adopt(whole, offset, length)) return;
    let pos = offset;
    const end = offset + length;
    while (pos < end) {
      const block = Math.floor(pos / this.bs);
      let seg = this.seg;
      if (seg) {
        const filledEndBlock = Math.ceil(seg.filledEnd / this.bs);
        if (block >= seg.startBlock + seg.capBlocks || block > filledEndBlock) {
          await this.flush();
          seg = null;
        }
      }
      if (!seg) {
        if (block > this.nextBlock && this.mode === 'compare') await this.zeroBlocks(this.nextBlock, block);
        const capBlocks = Math.min(this.chunkBlocks, this.blocks - block);
        const capBytes = Math.min(capBlocks * this.bs, this.size - block * this.bs);
        seg = this.seg = { startBlock: block, capBlocks, buf: this.segmentBuffer(capBytes), filledEnd: block * this.bs };
        this.nextBlock = block;
      }
      const segStart = seg.startBlock * this.bs;
      const n = Math.min(end - pos, segStart + seg.buf.length - pos);
      // The buffer is reused or uninitialised: a gap before this data reads as zeros.
      if (pos > seg.filledEnd) seg.buf.fill(0, seg.filledEnd - segStart, pos - segStart);
      seg.buf.set(data.subarray(pos - offset, pos - offset + n), pos - segStart);
      seg.filledEnd = pos + n;
      pos += n;
      if (seg.filledEnd === segStart + seg.buf.length) await this.flush();
    }
    if (whole) this.keepSpare(whole);
  }

  /** Bytes per sha block (one digest of the _sha256file each). */
  get shaBlockSize(): number {
    return this.bs;
  }

  /**
   * The parent's sha256 of `block` as this incremental inherited it (the whole chain resolved), before the first
   * write: what bitmap distrust compares a clean block with, without loading the parent's _sha256file twice.
   * Throws InvalidInputError (no parent, block out of range), ConflictError (after a write).
   */
  parentDigest(block: number): Buffer {
    if (!this.options.parent) throw new InvalidInputError(`backup ${this.backupId} has no parent`);
    this.checkUnwritten('read its parent\'s digests');
    if (!Number.isSafeInteger(block) || block < 0 || block >= this.blocks) throw new InvalidInputError(`block ${block} is outside the disk (${this.blocks} blocks)`);
    return this.digests.get(block);
  }

  /**
   * Turns a changed-extents incremental into a compare one (read everything, store what differs from the parent)
   * before its first write: the dirty bitmap was proved wrong. Throws ConflictError after a write or when the
   * parent's size differs (changed-extents never started then).
   */
  switchToCompare(): void {
    this.check();
    if (this.mode === 'compare') return;
    if (this.mode !== 'changed-extents') throw new ConflictError(`backup ${this.backupId} is a ${this.mode} backup, not an incremental`);
    this.checkUnwritten('become a compare backup');
    this.mode = 'compare';
  }

  private checkUnwritten(what: string): void {
    if (this.cursor > 0 || this.seg || this.inFlight > 0 || this.entries.length > 0 || this.bytesRead > 0) {
      throw new ConflictError(`backup ${this.backupId} cannot ${what} once data was written`, { hint: 'do it before the first write()' });
    }
  }

  /**
   * A chunk-size buffer (contents undefined) to read the next data into, then to pass to write() with `handOver`.
   * Reuses the memory of stored segments. Never throws.
   */
  bufferForRead(): Buffer {
    return this.spare.pop() ?? Buffer.allocUnsafeSlow(this.chunkSize);
  }

  /** The whole chunk-size buffer under `data` when `data` starts it (a bufferForRead() buffer), else undefined. */
  private wholeChunk(data: Uint8Array): Buffer | undefined {
    const buffer = data.buffer;
    if (!(buffer instanceof ArrayBuffer) || data.byteOffset !== 0 || buffer.byteLength !== this.chunkSize) return undefined;
    return Buffer.from(buffer, 0, this.chunkSize);
  }

  /**
   * Makes a handed-over buffer holding [offset, offset + length) the segment being filled, without copying: when the
   * data starts a sha block and a whole chunk fits before the disk's end.
   */
  private async adopt(buf: Buffer, offset: number, length: number): Promise<boolean> {
    if (offset % this.bs !== 0 || offset + this.chunkSize > this.size) return false;
    const block = offset / this.bs;
    // Extents ascend, so the open segment ends at or before `offset`: it is stored on its own (zeros to its block's end).
    await this.flush();
    if (block > this.nextBlock && this.mode === 'compare') await this.zeroBlocks(this.nextBlock, block);
    this.seg = { startBlock: block, capBlocks: this.chunkBlocks, buf, filledEnd: offset + length };
    this.nextBlock = block;
    if (length === this.chunkSize) await this.flush();
    return true;
  }

  /** Submits the segment being filled. */
  private async flush(): Promise<void> {
    const seg = this.seg;
    if (!seg) return;
    this.seg = null;
    const blocks = Math.ceil(seg.filledEnd / this.bs) - seg.startBlock;
    const bytes = Math.min(blocks * this.bs, seg.buf.length);
    // Zeros after the data up to the end of its last block (the buffer is reused or uninitialised).
    const filled = seg.filledEnd - seg.startBlock * this.bs;
    if (filled < bytes) seg.buf.fill(0, filled, bytes);
    this.nextBlock = seg.startBlock + blocks;
    await this.submit(seg.startBlock, seg.buf, bytes);
  }

  /** A segment buffer of `bytes`, contents undefined: a spare one when full-size, else new (not zeroed: write() fills gaps). */
  private segmentBuffer(bytes: number): Buffer {
    if (bytes === this.chunkSize) {
      const spare = this.spare.pop();
      if (spare) return spare;
    }
    return Buffer.allocUnsafeSlow(bytes);
  }

  /** Keeps a full-size segment buffer handed back by a worker once nothing uses it any more. */
  private recycle(input: Uint8Array | undefined): void {
    if (!input || input.byteLength !== this.chunkSize || input.byteOffset !== 0 || input.buffer.byteLength !== this.chunkSize) return;
    this.keepSpare(Buffer.from(input.buffer, 0, input.byteLength));
  }

  private keepSpare(buf: Buffer): void {
    if (this.spare.length < this.queueDepth + this.extraSpares && this.state === 'open') this.spare.push(buf);
  }

  /** Stores zeros for blocks in [first, end) whose baseline is not zero (the disk now reads zeros there). */
  private async zeroBlocks(first: number, end: number): Promise<void> {
    let b = first;
    while (b < end) {
      b = this.digests.nextNonDefault(b, end);
      if (b >= end) break;
      const start = b;
      while (b < end && !this.digests.isDefault(b) && b - start < this.chunkBlocks) b++;
      const bytes = Math.min(b * this.bs, this.size) - start * this.bs;
      await this.submit(start, Buffer.alloc(bytes));
    }
  }

  private async acquireSlot(): Promise<void> {
    while (this.inFlight >= this.queueDepth) {
      await new Promise<void>((resolve) => this.slotWaiters.push(resolve));
      this.check();
    }
    this.inFlight += 1;
  }

  private releaseSlot(): void {
    this.inFlight -= 1;
    this.slotWaiters.shift()?.();
  }

  /** Sends a block-aligned segment to a worker; its objects are named and stored in submission order. */
  private async submit(startBlock: number, data: Buffer, length = data.length): Promise<void> {
    await this.acquireSlot();
    this.check();
    const blocks = Math.ceil(length / this.bs);
    const baseline = this.digests.read(startBlock, blocks);
    // The whole buffer moves to the worker (no copy) even when only its first `length` bytes are data.
    const encoded = this.pool.run({
      kind: 'encode', data, length, blockSize: this.bs, baseline, codec: this.codec, level: this.level, maxObjectBytes: this.chunkSize,
    }, [...transferable(data), ...transferable(baseline)]);
    encoded.catch(() => undefined);
    this.tail = this.tail.then(async () => {
      let result: EncodeResult;
      try {
        result = await encoded;
      } catch (error) {
        this.releaseSlot();
        throw error;
      }
      if (this.state === 'aborted' || this.state === 'failed') { this.releaseSlot(); return; }
      this.digests.write(startBlock, result.digests);
      const puts: Promise<void>[] = [];
      for (const obj of result.objects) {
        const name = dataObjectName(this.prefix, this.entries.length + 1);
        this.entries.push({ name, compression: obj.compression, length: obj.length, md5: obj.md5, offset: (startBlock + obj.block) * this.bs });
        this.bytesChanged += obj.length;
        this.bytesStored += obj.data.length;
        // Stored as read (codec none): Cinder's md5 (of the data) is the md5 of the object, the store's Content-MD5.
        puts.push(this.putLimited(name, obj.data, (startBlock + obj.block) * this.bs, obj.compression === 'none' ? obj.md5 : undefined));
      }
      // Every put of this segment is done (objects of codec none are views of it): its buffer can be reused.
      void Promise.all(puts).then(() => { this.recycle(result.input); this.releaseSlot(); }, (error: unknown) => { this.releaseSlot(); this.fail(error); });
    });
    this.tail.catch((error: unknown) => this.fail(error));
  }

  private async putLimited(name: string, data: Uint8Array, offset: number, md5?: string): Promise<void> {
    while (this.putsRunning >= this.putConcurrency) await new Promise<void>((resolve) => this.putWaiters.push(resolve));
    this.putsRunning += 1;
    try {
      if (this.state === 'aborted' || this.state === 'failed') return;
      this.written.push(name);
      // Durable bytes now, durable name at the container sync in finish() (before the _metadata).
      await this.store.put(this.container, name, data, { signal: this.signal, deferContainerSync: true, md5, offset });
    } finally {
      this.putsRunning -= 1;
      this.putWaiters.shift()?.();
    }
  }

  private fail(error: unknown): void {
    if (this.state === 'open' || this.state === 'finishing') {
      this.state = 'failed';
      this.failure = error;
      log.debug({ backupId: this.backupId, err: error }, 'backup failed');
      for (const w of this.slotWaiters.splice(0)) w();
    }
  }

  private async drain(): Promise<void> {
    await this.tail;
    while (this.inFlight > 0 && this.state !== 'failed') {
      await new Promise<void>((resolve) => this.slotWaiters.push(resolve));
    }
    if (this.state === 'failed') throw this.failure;
  }

  /**
   * Stores the last objects, the _sha256file, then the _metadata (the commit point), and closes the workers.
   * Throws the pipeline's first failure (StoreError, …) or AbortedError; then no _metadata exists.
   */
  async finish(): Promise<BackupSummary> {
    this.check();
    let settle = () => {};
    this.finishSettled = new Promise<void>((resolve) => { settle = resolve; });
    try {
      await this.prepare();
      await this.flush();
      if (this.mode === 'compare') await this.zeroBlocks(this.nextBlock, this.blocks);
      this.state = 'finishing';
      await this.drain();
      this.checkFinishing();
      const createdAt = pythonDatetimeString(this.created);
      const o = this.options;
      const header = {
        backup_description: o.description ?? null, backup_id: this.backupId, backup_name: o.name ?? null,
        created_at: createdAt, volume_id: o.volumeId,
      };
      await this.store.put(this.container, sha256FileName(this.prefix),
        sha256FileStream({ ...header, chunk_size: this.bs, version: FORMAT_VERSION }, this.digests), { signal: this.signal, deferContainerSync: true });
      this.written.push(sha256FileName(this.prefix));
      // Durability before the commit point: every data object and the _sha256file were fsynced (file data) before
      // its put resolved, and drain() awaited every put; their names (renames into the container) become durable
      // with this one directory fsync, awaited before the _metadata is written. A crash before it leaves no
      // _metadata, so no backup lists an object that might be missing.
      await this.store.syncContainer?.(this.container, { signal: this.signal });
      const fleece: FleeceExtra = {
        fleece_version: FLEECE_VERSION,
        ...(o.groupId !== undefined ? { group_id: o.groupId } : {}),
        ...(o.vm !== undefined ? { vm: o.vm } : {}),
        ...(o.disk !== undefined ? { disk: o.disk } : {}),
        ...(o.checkpoint !== undefined ? { checkpoint: o.checkpoint } : {}),
        ...(o.incrementalFrom !== undefined ? { incremental_from: o.incrementalFrom } : {}),
        virtual_size: this.size, sha_block_size: this.bs, chunk_size: this.chunkSize, mode: this.mode,
        bytes_read: this.bytesRead, bytes_stored: this.bytesStored,
        ...(o.guestConfig !== undefined ? { guest_config: o.guestConfig } : {}),
      };
      const meta: BackupMetadata = {
        ...header, extra_metadata: { fleece, ...(o.encryption ? { encryption: o.encryption } : {}) }, objects: this.entries, parent_id: o.parent?.backupId ?? null,
        version: FORMAT_VERSION, volume_meta: o.volumeMeta ?? null,
      };
      this.checkFinishing();
      this.checkLease();
      await testPausePoint('commit', this.signal);
      this.checkFinishing();
      await this.checkWritten();
      this.checkFinishing();
      const pieces = async function* () { yield* serializeMetadataPieces(meta); };
      await this.store.put(this.container, metadataName(this.prefix), pieces(), { signal: this.signal });
      this.state = 'done';
      await this.releaseLease();
      o.onCommit?.(meta);
      log.debug({ backupId: this.backupId, objects: this.entries.length }, 'backup committed');
      return {
        backupId: this.backupId, container: this.container, prefix: this.prefix, parentId: meta.parent_id,
        bytesRead: this.bytesRead, bytesChanged: this.bytesChanged, bytesStored: this.bytesStored,
        objects: this.entries.length, durationMs: Date.now() - this.started,
      };
    } catch (error) {
      this.fail(error);
      await this.cleanup();
      if (this.state === 'aborted') throw new AbortedError(`backup ${this.backupId} was aborted`, { cause: error });
      throw error;
    } finally {
      this.signal?.removeEventListener('abort', this.onAbort);
      await this.pool.close();
      this.digests.close();
      settle();
    }
  }

  private checkFinishing(): void {
    throwIfAborted(this.signal, `backup ${this.backupId}`);
    if (this.state !== 'finishing') throw new AbortedError(`backup ${this.backupId} was aborted`, { cause: this.failure });
  }

  /**
   * Best effort: removes the objects this backup wrote (gc would find them otherwise), durably (the container is
   * synced after the deletes: a storage failing now could otherwise bring them back after a crash). What it could not
   * remove for sure is in `leftBehind`. Never throws.
   */
  private async cleanup(): Promise<void> {
    clearInterval(this.leaseTimer);
    await this.prepared?.catch(() => undefined); // a lease being taken
    await this.tail.catch(() => undefined);
    while (this.putsRunning > 0) await new Promise<void>((resolve) => this.putWaiters.push(resolve));
    const names = this.written.splice(0);
    const lease = this.leaseAt !== undefined ? [this.leaseObjectName()] : [];
    let failure: unknown;
    const deleted: string[] = []; // not those that were never there (a put that failed)
    for (const name of names) {
      // Once a delete failed (after the store's retries) the store is taken to be away: the rest is left, not retried.
      if (failure !== undefined) {
        this.unremoved.push(name);
        continue;
      }
      await this.store.delete(this.container, name).then(
        (existed) => { if (existed) deleted.push(name); },
        (error: unknown) => { this.unremoved.push(name); failure ??= error ?? new Error('delete failed'); });
    }
    const leaseError = await this.releaseLease(failure);
    if (leaseError !== undefined) {
      this.unremoved.push(...lease);
      failure ??= leaseError;
    }
    if (names.length + lease.length > 0 && failure === undefined && this.store.syncContainer) {
      await this.store.syncContainer(this.container).catch((error: unknown) => {
        this.unremoved.splice(0, this.unremoved.length, ...new Set([...this.unremoved, ...deleted, ...lease]));
        failure ??= error;
      });
    }
    if (failure !== undefined) {
      log.warn({ backupId: this.backupId, objects: this.unremoved.length, err: failure }, 'could not remove what a failed backup wrote');
      this.cleanupFailure = failure;
    }
  }

  /**
   * After abort() or a failed finish(): the objects (and lease) of this backup its cleanup could not remove for
   * sure, with the first error; empty when everything it wrote is durably gone. They belong to no backup: whoever
   * journaled it removes them later, else gc.
   */
  get leftBehind(): { objects: readonly string[]; error: unknown } {
    return { objects: this.unremoved, error: this.cleanupFailure };
  }

  /** Stops the backup: no _metadata is written, objects written so far are removed (best effort). Never throws. */
  async abort(reason?: unknown): Promise<void> {
    if (this.state === 'aborted') return this.aborting; // a second call (the signal's, then the caller's) waits for the first
    if (this.state === 'done') return;
    const wasFinishing = this.state === 'finishing';
    if (wasFinishing) this.aborting = this.finishSettled; // finish() removes what was written: wait for it
    this.state = 'aborted';
    this.failure = reason;
    for (const w of this.slotWaiters.splice(0)) w();
    this.signal?.removeEventListener('abort', this.onAbort);
    if (wasFinishing) await this.aborting;
    else {
      this.aborting = (async () => {
        await this.pool.close();
        await this.cleanup();
        this.digests.close();
      })();
      await this.aborting;
    }
  }
}
