// DigestTable: 32-byte sha256 digests by sha block index, in memory for small disks, in an unlinked temporary file above a threshold.
import { closeSync, openSync, readSync, unlinkSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { InvalidInputError } from '../util/errors.js';
import { StoreError } from './store/object-store.js';
import { DIGEST_BYTES } from './format/sha256-file.js';

/** Digests per page: 512 × 32 B = 16 KiB of digests, covering 16 MiB of disk at 32 KiB sha blocks. */
const PAGE_DIGESTS = 512;
const PAGE_BYTES = PAGE_DIGESTS * DIGEST_BYTES;
/** Default: up to 16 MiB of digests in memory (disks up to 16 GiB at 32 KiB blocks when fully written). */
export const DEFAULT_DIGEST_MEMORY_LIMIT = 16 << 20;
/** Default page cache once the table lives in a file. */
export const DEFAULT_DIGEST_CACHE_BYTES = 4 << 20;

export interface DigestTableOptions {
  /** Number of blocks (the table grows when written past its end). */
  blocks: number;
  /**
   * The digest of blocks never set (the zero-block digest of a full sha block), and of the last block (often
   * shorter). Written digests equal to these are stored as "never set", so zero regions cost nothing.
   */
  defaults?: { full: Buffer; last: Buffer };
  /** Bytes of digests kept in memory before moving to a temporary file (default 16 MiB; tests lower it). */
  memoryLimit?: number;
  /** Bytes of pages cached once in a file (default 4 MiB). */
  cacheBytes?: number;
  /** Where the temporary file goes (default the OS temp directory); it is unlinked at once. */
  tempDir?: string;
}

interface Page { buf: Buffer; dirty: boolean }

const ZERO_PAGE = Buffer.alloc(PAGE_BYTES);

function isZero(buf: Buffer, start: number, end: number): boolean {
  for (let i = start; i < end; i++) if (buf[i] !== 0) return false;
  return true;
}

/** Whether the digest at `at` in `buf` is `digest` (a loop: most differ in their first byte, cheaper than a compare call). */
function isDigest(buf: Buffer, at: number, digest: Buffer): boolean {
  for (let k = 0; k < DIGEST_BYTES; k++) if (buf[at + k] !== digest[k]) return false;
  return true;
}

/**
 * Sha256 digests by block index with memory bounded by `memoryLimit` (then `cacheBytes`) whatever the disk
 * size. Pages never written read as "never set" and resolve to the default digest without any I/O. Access is
 * synchronous (small preads/pwrites on a local temp file, mostly sequential). Call close() when done.
 * Methods throw InvalidInputError for out-of-range blocks and StoreError when the temporary file fails.
 */
export class DigestTable {
  private count: number;
  private readonly pages = new Map<number, Page>();
  private readonly onDisk = new Set<number>();
  private fd: number | undefined;
  private closed = false;
  private readonly memoryPages: number;
  private readonly cachePages: number;
  private readonly defaults: { full: Buffer; last: Buffer } | undefined;

  constructor(private readonly options: DigestTableOptions) {
    if (!Number.isSafeInteger(options.blocks) || options.blocks < 0) throw new InvalidInputError(`digest table of ${options.blocks} blocks`);
    this.count = options.blocks;
    this.defaults = options.defaults;
    this.memoryPages = Math.max(1, Math.floor((options.memoryLimit ?? DEFAULT_DIGEST_MEMORY_LIMIT) / PAGE_BYTES));
    this.cachePages = Math.max(2, Math.floor((options.cacheBytes ?? DEFAULT_DIGEST_CACHE_BYTES) / PAGE_BYTES));
  }

  /** Number of blocks. */
  get length(): number {
    return this.count;
  }

  /** Whether the table moved to its temporary file. */
  get fileBacked(): boolean {
    return this.fd !== undefined;
  }

  /** Bytes of pages held in memory now. */
  get residentBytes(): number {
    return this.pages.size * PAGE_BYTES;
  }

  private defaultFor(block: number): Buffer | undefined {
    if (!this.defaults) return undefined;
    return block === this.count - 1 ? this.defaults.last : this.defaults.full;
  }

  private check(first: number, count: number): void {
    if (this.closed) throw new InvalidInputError('the digest table is closed');
    if (!Number.isSafeInteger(first) || !Number.isSafeInteger(count) || first < 0 || count < 0 || first + count > this.count) {
      throw new InvalidInputError(`blocks ${first}..${first + count} are outside the digest table of ${this.count} blocks`);
    }
  }

  /** A page for reading: the cached one, the one on disk, or the shared zero page (not cached). */
  private pageForRead(p: number): Buffer {
    const cached = this.pages.get(p);
    if (cached) {
      this.pages.delete(p);
      this.pages.set(p, cached);
      return cached.buf;
    }
    if (!this.onDisk.has(p)) return ZERO_PAGE;
    return this.load(p).buf;
  }

  private pageForWrite(p: number): Page {
    const cached = this.pages.get(p);
    if (cached) {
      this.pages.delete(p);
      this.pages.set(p, cached);
      cached.dirty = true;
      return cached;
    }
    const page = this.onDisk.has(p) ? this.load(p) : this.insert(p, Buffer.alloc(PAGE_BYTES));
    page.dirty = true;
    return page;
  }

  private load(p: number): Page {
    const buf = Buffer.alloc(PAGE_BYTES);
    let done = 0;
    try {
      while (done < PAGE_BYTES) {
        const n = readSync(this.fd!, buf, done, PAGE_BYTES - done, p * PAGE_BYTES + done);
        if (n === 0) break; // past the end of the file: zeros
        done += n;
      }
    } catch (error) {
      throw tempFileError('read', error);
    }
    return this.insert(p, buf);
  }

  private insert(p: number, buf: Buffer): Page {
    const page = { buf, dirty: false };
    this.pages.set(p, page);
    if (this.fd === undefined && this.pages.size > this.memoryPages) this.spill();
    if (this.fd !== undefined) this.evict();
    return page;
  }

  /** Moves to an unlinked temporary file. */
  private spill(): void {
    const path = join(this.options.tempDir ?? tmpdir(), `.fleece-digests-${process.pid}-${randomBytes(6).toString('hex')}`);
    try {
      this.fd = openSync(path, 'wx+', 0o600);
      unlinkSync(path);
    } catch (error) {
      throw tempFileError(`create ${path}`, error);
    }
  }

  private evict(): void {
    while (this.pages.size > this.cachePages) {
      const [p, page] = this.pages.entries().next().value as [number, Page];
      this.pages.delete(p);
      if (page.dirty) this.flushPage(p, page);
    }
  }

  private flushPage(p: number, page: Page): void {
    try {
      let done = 0;
      while (done < PAGE_BYTES) done += writeSync(this.fd!, page.buf, done, PAGE_BYTES - done, p * PAGE_BYTES + done);
    } catch (error) {
      throw tempFileError('write', error);
    }
    page.dirty = false;
    this.onDisk.add(p);
  }

  /** Copies the digests of blocks [first, first+count), never-set ones resolved to the defaults. */
  read(first: number, count: number): Buffer {
    this.check(first, count);
    const out = Buffer.allocUnsafe(count * DIGEST_BYTES);
    let b = first;
    while (b < first + count) {
      const p = Math.floor(b / PAGE_DIGESTS);
      const within = b - p * PAGE_DIGESTS;
      const n = Math.min(PAGE_DIGESTS - within, first + count - b);
      const page = this.pageForRead(p);
      const to = (b - first) * DIGEST_BYTES;
      if (page === ZERO_PAGE && this.defaults) { // never written: the default pattern, in one call
        out.fill(this.defaults.full, to, to + n * DIGEST_BYTES);
        if (b + n === this.count) this.defaults.last.copy(out, to + (n - 1) * DIGEST_BYTES);
      } else {
        page.copy(out, to, within * DIGEST_BYTES, (within + n) * DIGEST_BYTES);
        if (this.defaults) {
          for (let i = 0; i < n; i++) {
            const at = (within + i) * DIGEST_BYTES;
            if (isZero(page, at, at + DIGEST_BYTES)) this.defaultFor(b + i)!.copy(out, to + i * DIGEST_BYTES);
          }
        }
      }
      b += n;
    }
    return out;
  }

  /** One block's digest (a copy). */
  get(block: number): Buffer {
    return this.read(block, 1);
  }

  /**
   * Stores digests for blocks [first, first + digests.length/32); writing past the end grows the table.
   * Digests equal to the defaults are stored as "never set".
   */
  write(first: number, digests: Uint8Array): void {
    if (digests.length % DIGEST_BYTES !== 0) throw new InvalidInputError(`${digests.length} bytes are not whole digests`);
    const count = digests.length / DIGEST_BYTES;
    if (first + count > this.count) this.count = first + count;
    this.check(first, count);
    const src = Buffer.from(digests.buffer, digests.byteOffset, digests.byteLength);
    let b = first;
    while (b < first + count) {
      const p = Math.floor(b / PAGE_DIGESTS);
      const within = b - p * PAGE_DIGESTS;
      const n = Math.min(PAGE_DIGESTS - within, first + count - b);
      const from = (b - first) * DIGEST_BYTES;
      let allDefault = false;
      if (this.defaults) {
        allDefault = true;
        for (let i = 0; i < n && allDefault; i++) {
          const at = from + i * DIGEST_BYTES;
          if (!isDigest(src, at, this.defaultFor(b + i)!)) allDefault = false;
        }
      }
      if (allDefault && !this.pages.has(p) && !this.onDisk.has(p)) { b += n; continue; } // stays "never set"
      const page = this.pageForWrite(p);
      src.copy(page.buf, within * DIGEST_BYTES, from, from + n * DIGEST_BYTES);
      if (this.defaults) {
        for (let i = 0; i < n; i++) {
          const at = (within + i) * DIGEST_BYTES;
          if (allDefault || isDigest(page.buf, at, this.defaultFor(b + i)!)) page.buf.fill(0, at, at + DIGEST_BYTES);
        }
      }
      b += n;
    }
  }

  /** Whether a block holds its default digest (never set, or set to it). */
  isDefault(block: number): boolean {
    this.check(block, 1);
    const p = Math.floor(block / PAGE_DIGESTS);
    const page = this.pageForRead(p);
    if (page === ZERO_PAGE) return true;
    const at = (block - p * PAGE_DIGESTS) * DIGEST_BYTES;
    if (isZero(page, at, at + DIGEST_BYTES)) return true;
    const d = this.defaultFor(block);
    return d !== undefined && isDigest(page, at, d);
  }

  /** The first block in [from, end) whose digest is not its default, or `end`; skips never-written pages without I/O. */
  nextNonDefault(from: number, end: number): number {
    this.check(from, Math.max(0, end - from));
    let b = from;
    while (b < end) {
      const p = Math.floor(b / PAGE_DIGESTS);
      if (!this.pages.has(p) && !this.onDisk.has(p)) { b = (p + 1) * PAGE_DIGESTS; continue; }
      if (!this.isDefault(b)) return b;
      b++;
    }
    return end;
  }

  /** Yields the digests in order, `batch` blocks at a time (resolved, fresh buffers). */
  *chunks(batch = 32 * PAGE_DIGESTS): Generator<Buffer> {
    for (let b = 0; b < this.count; b += batch) yield this.read(b, Math.min(batch, this.count - b));
  }

  /** Releases the temporary file and the pages. Safe to call twice. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.pages.clear();
    this.onDisk.clear();
    if (this.fd !== undefined) {
      try { closeSync(this.fd); } catch { /* already gone */ }
      this.fd = undefined;
    }
  }
}

function tempFileError(action: string, error: unknown): StoreError {
  const code = (error as NodeJS.ErrnoException | undefined)?.code;
  return new StoreError(`cannot ${action} the temporary digest table file: ${code ?? String(error)}`, {
    cause: error, errno: code, hint: code === 'ENOSPC' ? 'free space in the temporary directory (about 32 bytes per 32 KiB of disk)' : undefined,
  });
}
