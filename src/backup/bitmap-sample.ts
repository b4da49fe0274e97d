// Bitmap distrust (pure): which blocks a dirty bitmap calls clean, a random sample of them, and whether what the
// disk holds there still hashes to what the chain holds. A bitmap is a promise QEMU can break (a crash, a storage
// move, a write through another node): a clean block that hashes differently means the bitmap missed a write.
import { createHash, randomInt } from 'node:crypto';
import { InvalidInputError } from '../util/errors.js';

/**
 * Percent of the clean blocks read and hashed on an incremental by default: 0.5 % (measured in docs/retention.md).
 * It catches a bitmap that lost a share of the writes (a stale or half-restored bitmap) with near certainty; a single
 * block written behind the bitmap's back is only caught surely at 100.
 */
export const DEFAULT_VERIFY_BITMAP_PERCENT = 0.5;

/** `count` consecutive blocks from block `first`. */
export interface BlockRun {
  first: number;
  count: number;
}

/** A uniform random number in [0, 1). */
export type Random = () => number;

/** A small seeded PRNG (mulberry32): the same seed gives the same sample (tests). */
export function seededRandom(seed: number): Random {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** A PRNG seeded from the system's random source (every backup samples other blocks). */
export function systemRandom(): Random {
  return seededRandom(randomInt(0, 2 ** 32));
}

/** Checks a `--verify-bitmap` percentage. @throws InvalidInputError unless a number from 0 to 100. */
export function checkVerifyPercent(percent: number): number {
  if (typeof percent !== 'number' || !Number.isFinite(percent) || percent < 0 || percent > 100) {
    throw new InvalidInputError(`--verify-bitmap ${String(percent)} is not a percentage from 0 to 100`, {
      hint: `e.g. --verify-bitmap ${DEFAULT_VERIFY_BITMAP_PERCENT} (the default), 100 to hash every clean block, 0 to trust the bitmap`,
    });
  }
  return percent;
}

/**
 * The blocks of a disk of `size` bytes outside `dirty` (byte ranges aligned to `blockSize`, ascending, not
 * overlapping, as alignRangesToBlocks gives them): the blocks the bitmap says did not change.
 */
export function cleanBlockRuns(dirty: readonly { offset: number; length: number }[], size: number, blockSize: number): BlockRun[] {
  const blocks = Math.ceil(size / blockSize);
  const runs: BlockRun[] = [];
  let next = 0;
  for (const r of dirty) {
    const first = Math.floor(r.offset / blockSize);
    const end = Math.min(blocks, Math.ceil((r.offset + r.length) / blockSize));
    if (first > next) runs.push({ first: next, count: first - next });
    next = Math.max(next, end);
  }
  if (next < blocks) runs.push({ first: next, count: blocks - next });
  return runs;
}

/**
 * A random sample of the blocks in `clean` (ascending runs): each block is taken with probability `percent` / 100
 * (geometric skips, so the cost is the sample's size, not the disk's), consecutive ones merged into runs, in
 * ascending order; at least one block when `percent` > 0 and some block is clean. 100 gives every clean block.
 */
export function* sampleBlocks(clean: readonly BlockRun[], percent: number, random: Random): Generator<BlockRun> {
  checkVerifyPercent(percent);
  const total = clean.reduce((n, r) => n + r.count, 0);
  if (percent === 0 || total === 0) return;
  if (percent === 100) {
    yield* clean.map((r) => ({ ...r }));
    return;
  }
  const p = percent / 100;
  const logQ = Math.log1p(-p);
  const skip = () => Math.floor(Math.log1p(-random()) / logQ); // blocks passed over before the next one taken
  let open: BlockRun | undefined;
  let taken = 0;
  let index = skip(); // position among all clean blocks
  let runStart = 0; // position of clean[r]'s first block
  for (const run of clean) {
    while (index < runStart + run.count) {
      const block = run.first + (index - runStart);
      taken++;
      if (open && open.first + open.count === block) open.count++;
      else {
        if (open) yield open;
        open = { first: block, count: 1 };
      }
      index += 1 + skip();
    }
    runStart += run.count;
  }
  if (open) yield open;
  if (taken > 0) return;
  let pick = Math.min(total - 1, Math.floor(random() * total));
  for (const run of clean) {
    if (pick < run.count) {
      yield { first: run.first + pick, count: 1 };
      return;
    }
    pick -= run.count;
  }
}

/** The sample as byte ranges to read (the disk's last block may be short). */
export function* runsToRanges(runs: Iterable<BlockRun>, blockSize: number, size: number): Generator<{ offset: number; length: number }> {
  for (const run of runs) {
    const offset = run.first * blockSize;
    yield { offset, length: Math.min(size, (run.first + run.count) * blockSize) - offset };
  }
}

/** What the sample found: how much was hashed, and the first clean block that did not match the chain. */
export interface SampleResult {
  blocks: number;
  bytes: number;
  /** The first block whose sha256 differs from the chain's, with both digests (hex). */
  mismatch?: { block: number; offset: number; expected: string; actual: string };
}

/** Every sampled block read, in ascending order, with its length (the disk's last block may be short) and sha256. */
export interface HashedSample {
  blockSize: number;
  blocks: number[];
  lengths: number[];
  /** 32 bytes per block, in the order of `blocks`. */
  digests: Buffer;
}

/**
 * Hashes each `blockSize` block of `pieces` (ascending, block-aligned, as readExtents yields the ranges of
 * runsToRanges): what compareHashed then holds against the chain. Needs nothing of the chain, so it can run while the
 * parent's sha256s load. Throws what `pieces` throws, InvalidInputError for a piece not starting a block.
 */
export async function hashSample(pieces: AsyncIterable<{ offset: number; data: Uint8Array }>, blockSize: number): Promise<HashedSample> {
  const blocks: number[] = [];
  const lengths: number[] = [];
  const digests: Buffer[] = [];
  for await (const piece of pieces) {
    if (piece.offset % blockSize !== 0) throw new InvalidInputError(`sampled piece at ${piece.offset} does not start a block of ${blockSize} bytes`);
    for (let at = 0; at < piece.data.length; at += blockSize) {
      const data = piece.data.subarray(at, Math.min(piece.data.length, at + blockSize));
      blocks.push((piece.offset + at) / blockSize);
      lengths.push(data.length);
      digests.push(createHash('sha256').update(data).digest());
    }
  }
  return { blockSize, blocks, lengths, digests: Buffer.concat(digests) };
}

/**
 * Compares each hashed block with `expected(block)`, the sha256 the chain holds for it, in ascending order; stops at
 * the first difference (`blocks` and `bytes` count up to it).
 */
export function compareHashed(sample: HashedSample, expected: (block: number) => Uint8Array): SampleResult {
  const result: SampleResult = { blocks: 0, bytes: 0 };
  for (let i = 0; i < sample.blocks.length; i++) {
    const block = sample.blocks[i]!;
    const actual = sample.digests.subarray(i * 32, i * 32 + 32);
    result.blocks++;
    result.bytes += sample.lengths[i]!;
    const want = expected(block);
    if (!actual.equals(want)) {
      result.mismatch = { block, offset: block * sample.blockSize, expected: Buffer.from(want).toString('hex'), actual: actual.toString('hex') };
      return result;
    }
  }
  return result;
}

/** hashSample, then compareHashed. Throws what `pieces` throws. */
export async function compareSample(
  pieces: AsyncIterable<{ offset: number; data: Uint8Array }>,
  blockSize: number,
  expected: (block: number) => Uint8Array,
): Promise<SampleResult> {
  return compareHashed(await hashSample(pieces, blockSize), expected);
}
