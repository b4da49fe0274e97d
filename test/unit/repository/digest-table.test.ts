// DigestTable: memory and file-backed paths give the same answers; never-written pages cost nothing.
import { createHash, randomBytes } from 'node:crypto';
import { DigestTable } from '../../../src/repository/digest-table.js';

const zeroFull = createHash('sha256').update(Buffer.alloc(512)).digest();
const zeroLast = createHash('sha256').update(Buffer.alloc(100)).digest();
const digest = (i: number) => createHash('sha256').update(`block ${i}`).digest();

describe.each([
  ['in memory', { memoryLimit: 16 << 20 }],
  ['file-backed (16 KiB memory limit, 32 KiB cache)', { memoryLimit: 16 << 10, cacheBytes: 32 << 10 }],
])('DigestTable %s', (_name, limits) => {
  const blocks = 20_000; // 40 pages of 512 digests
  let table: DigestTable;
  beforeEach(() => { table = new DigestTable({ blocks, defaults: { full: zeroFull, last: zeroLast }, ...limits }); });
  afterEach(() => table.close());

  it('reads defaults where nothing was written, written digests elsewhere, in any order', () => {
    expect(table.read(0, 3)).toEqual(Buffer.concat([zeroFull, zeroFull, zeroFull]));
    expect(table.get(blocks - 1)).toEqual(zeroLast);
    const written = new Map<number, Buffer>();
    for (let i = 0; i < 3000; i++) {
      const b = (i * 7919) % blocks; // scattered over every page
      written.set(b, digest(i));
      table.write(b, digest(i));
    }
    const runStart = 4000; // one long run across page boundaries
    const run = Buffer.concat(Array.from({ length: 1500 }, (_, i) => digest(100_000 + i)));
    table.write(runStart, run);
    for (let i = 0; i < 1500; i++) written.set(runStart + i, digest(100_000 + i));
    const all = table.read(0, blocks);
    for (let b = 0; b < blocks; b++) {
      const want = written.get(b) ?? (b === blocks - 1 ? zeroLast : zeroFull);
      if (!all.subarray(b * 32, b * 32 + 32).equals(want)) throw new Error(`block ${b} differs`);
    }
    expect(Buffer.concat([...table.chunks(777)]).equals(all)).toBe(true);
    if (limits.memoryLimit < 1 << 20) {
      expect(table.fileBacked).toBe(true);
      expect(table.residentBytes).toBeLessThanOrEqual(32 << 10);
    }
  });

  it('default digests written are stored as never set: isDefault and nextNonDefault skip them', () => {
    table.write(100, Buffer.concat([zeroFull, digest(1), zeroFull]));
    table.write(blocks - 1, zeroLast);
    expect(table.isDefault(100)).toBe(true);
    expect(table.isDefault(101)).toBe(false);
    expect(table.isDefault(blocks - 1)).toBe(true);
    expect(table.nextNonDefault(0, blocks)).toBe(101);
    expect(table.nextNonDefault(102, blocks)).toBe(blocks);
    table.write(15_000, digest(2));
    expect(table.nextNonDefault(102, blocks)).toBe(15_000);
    table.write(15_000, zeroFull);
    expect(table.nextNonDefault(102, blocks)).toBe(blocks);
  });

  it('a table of zero digests never allocates pages', () => {
    for (let b = 0; b < blocks; b += 512) table.write(b, Buffer.concat(Array.from({ length: Math.min(512, blocks - b) }, (_, i) => (b + i === blocks - 1 ? zeroLast : zeroFull))));
    expect(table.residentBytes).toBe(0);
    expect(table.fileBacked).toBe(false);
  });
});

it('grows when written past its end (tables loaded without a known size) and refuses reads outside', () => {
  const table = new DigestTable({ blocks: 0, memoryLimit: 16 << 10, cacheBytes: 32 << 10 });
  try {
    const data = randomBytes(5000 * 32);
    for (let b = 0; b < 5000; b += 1000) table.write(b, data.subarray(b * 32, (b + 1000) * 32));
    expect(table.length).toBe(5000);
    expect(table.fileBacked).toBe(true);
    expect(table.read(0, 5000).equals(data)).toBe(true);
    expect(() => table.read(4999, 2)).toThrow(/outside the digest table of 5000 blocks/);
  } finally {
    table.close();
  }
  expect(() => table.read(0, 1)).toThrow(/closed/);
});
