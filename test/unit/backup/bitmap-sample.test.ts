// bitmap-sample: the clean blocks of a dirty bitmap, a seeded random sample of them, and the comparison with the chain.
import { describe, expect, test } from '@jest/globals';
import { createHash } from 'node:crypto';
import {
  cleanBlockRuns, compareSample, runsToRanges, sampleBlocks, seededRandom, type BlockRun,
} from '../../../src/backup/bitmap-sample.js';
import { InvalidInputError } from '../../../src/util/errors.js';

const BS = 32 * 1024;
const blocksOf = (runs: Iterable<BlockRun>) => [...runs].flatMap((r) => Array.from({ length: r.count }, (_, i) => r.first + i));
const sha = (data: Uint8Array) => createHash('sha256').update(data).digest();

describe('cleanBlockRuns', () => {
  test('the complement of the aligned dirty ranges, in blocks; a short last block counts', () => {
    const size = 10 * BS + 512;
    expect(cleanBlockRuns([], size, BS)).toEqual([{ first: 0, count: 11 }]);
    expect(cleanBlockRuns([{ offset: 0, length: 2 * BS }, { offset: 5 * BS, length: BS }], size, BS))
      .toEqual([{ first: 2, count: 3 }, { first: 6, count: 5 }]);
    expect(cleanBlockRuns([{ offset: 9 * BS, length: BS + 512 }], size, BS)).toEqual([{ first: 0, count: 9 }]);
    expect(cleanBlockRuns([{ offset: 0, length: size }], size, BS)).toEqual([]);
  });
});

describe('sampleBlocks', () => {
  const clean = [{ first: 2, count: 3 }, { first: 10, count: 5000 }, { first: 6000, count: 1 }];
  const all = blocksOf(clean);

  test('100 % takes every clean block, 0 % none', () => {
    expect(blocksOf(sampleBlocks(clean, 100, seededRandom(1)))).toEqual(all);
    expect([...sampleBlocks(clean, 0, seededRandom(1))]).toEqual([]);
  });

  test('a seeded sample is repeatable, ascending, distinct, clean only, merged into runs, near the asked share', () => {
    const a = [...sampleBlocks(clean, 10, seededRandom(42))];
    expect([...sampleBlocks(clean, 10, seededRandom(42))]).toEqual(a);
    expect(blocksOf(sampleBlocks(clean, 10, seededRandom(43)))).not.toEqual(blocksOf(a));
    const blocks = blocksOf(a);
    for (let i = 1; i < blocks.length; i++) expect(blocks[i]!).toBeGreaterThan(blocks[i - 1]!);
    const set = new Set(all);
    expect(blocks.every((b) => set.has(b))).toBe(true);
    for (let i = 1; i < a.length; i++) expect(a[i]!.first).toBeGreaterThan(a[i - 1]!.first + a[i - 1]!.count); // runs merged
    expect(blocks.length).toBeGreaterThan(0.07 * all.length);
    expect(blocks.length).toBeLessThan(0.13 * all.length);
  });

  test('over many seeds every clean block is about as likely (no block is never sampled)', () => {
    const counts = new Map<number, number>();
    for (let seed = 0; seed < 2000; seed++) for (const b of blocksOf(sampleBlocks([{ first: 0, count: 20 }], 25, seededRandom(seed)))) counts.set(b, (counts.get(b) ?? 0) + 1);
    for (let b = 0; b < 20; b++) {
      expect(counts.get(b) ?? 0).toBeGreaterThan(400);
      expect(counts.get(b) ?? 0).toBeLessThan(620);
    }
  });

  test('a tiny share still samples one block when some block is clean; nothing when none is; bad percent refused', () => {
    for (let seed = 0; seed < 20; seed++) expect(blocksOf(sampleBlocks([{ first: 7, count: 30 }], 0.01, seededRandom(seed)))).toHaveLength(1);
    expect([...sampleBlocks([], 50, seededRandom(1))]).toEqual([]);
    expect(() => [...sampleBlocks(clean, 101, seededRandom(1))]).toThrow(InvalidInputError);
    expect(() => [...sampleBlocks(clean, Number.NaN, seededRandom(1))]).toThrow(InvalidInputError);
  });

  test('runsToRanges: byte ranges, the last block of the disk short', () => {
    expect([...runsToRanges([{ first: 0, count: 2 }, { first: 9, count: 2 }], BS, 10 * BS + 512)])
      .toEqual([{ offset: 0, length: 2 * BS }, { offset: 9 * BS, length: BS + 512 }]);
  });
});

describe('compareSample', () => {
  const disk = Buffer.alloc(4 * BS + 512);
  for (let i = 0; i < disk.length; i++) disk[i] = (i * 7) & 0xff;
  const digests = Array.from({ length: 5 }, (_, b) => sha(disk.subarray(b * BS, Math.min(disk.length, (b + 1) * BS))));
  async function* pieces(ranges: { offset: number; length: number }[], image = disk) {
    for (const r of ranges) yield { offset: r.offset, data: image.subarray(r.offset, r.offset + r.length) };
  }

  test('every block (short last one too) matches its digest: counts, no mismatch', async () => {
    const result = await compareSample(pieces([{ offset: 0, length: 2 * BS }, { offset: 3 * BS, length: BS + 512 }]), BS, (b) => digests[b]!);
    expect(result).toEqual({ blocks: 4, bytes: 3 * BS + 512 });
  });

  test('a block changed behind the bitmap is the first mismatch, named by offset, and the scan stops there', async () => {
    const changed = Buffer.from(disk);
    changed[3 * BS + 100] ^= 1;
    const asked: number[] = [];
    const result = await compareSample(pieces([{ offset: 0, length: 5 * BS - (BS - 512) }], changed), BS, (b) => { asked.push(b); return digests[b]!; });
    expect(result.mismatch).toMatchObject({ block: 3, offset: 3 * BS, expected: digests[3]!.toString('hex') });
    expect(result.blocks).toBe(4);
    expect(asked).toEqual([0, 1, 2, 3]);
  });
});
