// Turns NBD meta contexts into what a backup needs: dirty extents of a bitmap, allocated (data/zero) extents.
import { InvalidInputError } from '../util/errors.js';
import type { BlockSource } from './block-source.js';
import type { ByteRange, Extent } from './extent-algebra.js';

/** `base:allocation` flags. */
export const STATE_HOLE = 1;
export const STATE_ZERO = 2;
/** `qemu:dirty-bitmap:NAME` flag. */
export const STATE_DIRTY = 1;

/** The meta context name of a QEMU dirty bitmap exported with the NBD export (`bitmaps: [NAME]`, `qemu-nbd -B NAME`). */
export function dirtyBitmapContext(bitmap: string): string {
  return `qemu:dirty-bitmap:${bitmap}`;
}

/**
 * The dirty extents of a bitmap context (`qemu:dirty-bitmap:backup-vda`), at the bitmap's granularity as the server
 * reports them.
 * @throws InvalidInputError when `context` is not a dirty-bitmap context or was not negotiated; NbdError; AbortedError
 */
export async function* dirtyExtents(source: BlockSource, context: string, options: { range?: ByteRange; signal?: AbortSignal } = {}): AsyncGenerator<Extent> {
  if (!context.startsWith('qemu:dirty-bitmap:')) {
    throw new InvalidInputError(`"${context}" is not a dirty-bitmap meta context; use qemu:dirty-bitmap:NAME`);
  }
  for await (const e of source.extents(context, options.range, options.signal)) {
    if (e.flags & STATE_DIRTY) yield e;
  }
}

/** An extent that holds data (`zero: false`, must be read) or reads as zeroes (`zero: true`, no need to read). */
export interface AllocatedExtent extends Extent {
  zero: boolean;
}

/**
 * The extents of `base:allocation` that are not holes-reading-as-zero: data (read it) and allocated zeroes (record
 * them without reading). Unallocated holes that read as zeroes are skipped; a hole without the zero flag is reported
 * as data, since the protocol does not promise what it reads as.
 * @throws InvalidInputError when base:allocation was not negotiated; NbdError; AbortedError
 */
export async function* allocatedExtents(source: BlockSource, options: { range?: ByteRange; signal?: AbortSignal } = {}): AsyncGenerator<AllocatedExtent> {
  for await (const e of source.extents('base:allocation', options.range, options.signal)) {
    const zero = (e.flags & STATE_ZERO) !== 0;
    if (zero && e.flags & STATE_HOLE) continue;
    yield { ...e, zero };
  }
}

/** Only the data extents of allocatedExtents (the ones to read). */
export async function* dataExtents(source: BlockSource, options: { range?: ByteRange; signal?: AbortSignal } = {}): AsyncGenerator<AllocatedExtent> {
  for await (const e of allocatedExtents(source, options)) if (!e.zero) yield e;
}
