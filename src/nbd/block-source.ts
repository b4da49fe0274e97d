// The BlockSource port: a disk image to read by extents (an NBD export, a local raw file).
import type { ByteRange, Extent } from './extent-algebra.js';

/**
 * A readable disk. Contract: `size` is fixed while open; `extents()` yields ascending, non-overlapping extents that
 * cover exactly the asked range (whole disk by default), adjacent extents with equal flags merged; `read()` returns
 * exactly `length` bytes or throws; after `close()` every method throws. Every method honours its AbortSignal
 * (AbortedError).
 */
export interface BlockSource {
  /** Size of the disk in bytes. */
  readonly size: number;
  /** Whether `trim` frees space (a writable export that can trim). */
  readonly canTrim: boolean;
  /** The meta contexts `extents()` accepts (e.g. `base:allocation`, `qemu:dirty-bitmap:backup-vda`). */
  readonly contexts: readonly string[];
  /** Extents of one meta context over `range` (default: the whole disk). */
  extents(context: string, range?: ByteRange, signal?: AbortSignal): AsyncIterable<Extent>;
  /** Reads `length` bytes at `offset`; `into`, when given, receives the data and is returned. */
  read(offset: number, length: number, signal?: AbortSignal, into?: Buffer): Promise<Buffer>;
  /** Discards a range (no-op when `canTrim` is false). */
  trim(offset: number, length: number, signal?: AbortSignal): Promise<void>;
  /** Releases connections and files; idempotent. */
  close(): Promise<void>;
}
