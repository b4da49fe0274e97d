// Generated disk images for repository tests: random, zeros, patterns, sparse, and their extents.
import { randomBytes, createHash } from 'node:crypto';
import type { Extent } from '../../../src/repository/extents.js';

/** A deterministic pseudo-random generator (xorshift32) so failures reproduce. */
export function seeded(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13; x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5; x >>>= 0;
    return x;
  };
}

/** A disk with random, text-like, pattern and zero regions at random places. */
export function mixedDisk(size: number, seed = 1): Buffer {
  const rnd = seeded(seed);
  const disk = Buffer.alloc(size);
  let pos = 0;
  while (pos < size) {
    const len = Math.min(size - pos, 1 + (rnd() % (300 * 1024)));
    const kind = rnd() % 4;
    if (kind === 0) randomBytes(len).copy(disk, pos);
    else if (kind === 1) disk.fill(`line ${rnd() % 1000} of some compressible text\n`, pos, pos + len);
    else if (kind === 2) disk.fill(rnd() & 0xff, pos, pos + len);
    pos += len; // kind 3: zeros
  }
  return disk;
}

/** Extents of the non-zero 4 KiB-aligned runs of a disk (what base:allocation would report), with their data. */
export function allocatedExtents(disk: Buffer, granularity = 4096): Extent[] {
  const out: Extent[] = [];
  const zero = Buffer.alloc(granularity);
  let start = -1;
  for (let pos = 0; ; pos += granularity) {
    pos = Math.min(pos, disk.length);
    const end = Math.min(disk.length, pos + granularity);
    const nonZero = pos < disk.length && !disk.subarray(pos, end).equals(zero.subarray(0, end - pos));
    if (nonZero && start < 0) start = pos;
    if (!nonZero && start >= 0) {
      out.push({ offset: start, length: pos - start, data: disk.subarray(start, pos) });
      start = -1;
    }
    if (pos >= disk.length) break;
  }
  return out;
}

/** The whole disk as extents of at most `piece` bytes. */
export function wholeDisk(disk: Buffer, piece = 1 << 20): Extent[] {
  const out: Extent[] = [];
  for (let pos = 0; pos < disk.length; pos += piece) {
    const n = Math.min(piece, disk.length - pos);
    out.push({ offset: pos, length: n, data: disk.subarray(pos, pos + n) });
  }
  return out;
}

export function sha(data: Uint8Array): string {
  return createHash('sha256').update(data).digest('hex');
}
