// readExtents over an in-memory BlockSource: order, bounded in-flight requests, early exit, abort.
import { randomBytes } from 'node:crypto';
import type { BlockSource } from '../../../src/nbd/block-source.js';
import type { ByteRange, Extent } from '../../../src/nbd/extent-algebra.js';
import { readExtents } from '../../../src/nbd/read-extents.js';
import { AbortedError, InvalidInputError } from '../../../src/util/errors.js';

class MemorySource implements BlockSource {
  readonly contexts = ['base:allocation'];
  readonly canTrim = true;
  inFlight = 0;
  maxInFlight = 0;
  trimmed: ByteRange[] = [];
  constructor(readonly bytes: Buffer) {}
  get size(): number {
    return this.bytes.length;
  }
  async *extents(): AsyncGenerator<Extent> {
    yield { offset: 0, length: this.size, flags: 0 };
  }
  async read(offset: number, length: number, _signal?: AbortSignal, into?: Buffer): Promise<Buffer> {
    this.inFlight++;
    this.maxInFlight = Math.max(this.maxInFlight, this.inFlight);
    // Finish out of order: later pieces often complete first.
    await new Promise((r) => setTimeout(r, Math.random() * 5));
    this.inFlight--;
    const out = into ? into.subarray(0, length) : Buffer.alloc(length);
    this.bytes.copy(out, 0, offset, offset + length);
    return out;
  }
  async trim(offset: number, length: number): Promise<void> {
    this.trimmed.push({ offset, length });
  }
  async close(): Promise<void> {}
}

test('yields every piece in ascending order with at most `concurrency` reads in flight', async () => {
  const source = new MemorySource(randomBytes(1 << 20));
  const extents = [{ offset: 0, length: 300000 }, { offset: 400000, length: 500000 }];
  const got: Buffer[] = [];
  let last = -1;
  for await (const p of readExtents(source, extents, { concurrency: 3, maxRequest: 65536 })) {
    expect(p.offset).toBeGreaterThan(last);
    expect(p.length).toBeLessThanOrEqual(65536);
    last = p.offset;
    got.push(Buffer.from(p.data));
  }
  expect(source.maxInFlight).toBeLessThanOrEqual(3);
  expect(source.maxInFlight).toBeGreaterThan(1);
  expect(Buffer.concat(got).equals(Buffer.concat([source.bytes.subarray(0, 300000), source.bytes.subarray(400000, 900000)]))).toBe(true);
});

test('trim discards each piece after the consumer took it', async () => {
  const source = new MemorySource(randomBytes(200000));
  for await (const p of readExtents(source, [{ offset: 0, length: 200000 }], { maxRequest: 65536, trim: true })) {
    expect(source.trimmed.some((t) => t.offset === p.offset)).toBe(false);
  }
  expect(source.trimmed.reduce((n, t) => n + t.length, 0)).toBe(200000);
});

test('rejects unordered extents and bad options', async () => {
  const source = new MemorySource(Buffer.alloc(4096));
  const it = readExtents(source, [{ offset: 2048, length: 512 }, { offset: 0, length: 512 }], { maxRequest: 512 });
  await expect((async () => { for await (const _ of it) void _; })()).rejects.toThrow(InvalidInputError);
  await expect(readExtents(source, [], { maxRequest: 64 * 1024 * 1024 }).next()).rejects.toThrow(/32 MiB/);
});

test('an aborted signal stops the read with AbortedError', async () => {
  const source = new MemorySource(Buffer.alloc(1 << 20));
  const controller = new AbortController();
  const run = async (): Promise<void> => {
    for await (const _ of readExtents(source, [{ offset: 0, length: 1 << 20 }], { maxRequest: 4096, signal: controller.signal })) {
      controller.abort();
    }
  };
  await expect(run()).rejects.toBeInstanceOf(AbortedError);
  expect(source.inFlight).toBe(0);
});

test('allocate: each piece is read into a buffer the consumer supplied and then owns', async () => {
  const bytes = randomBytes(1 << 20);
  const source = new MemorySource(bytes);
  const given: Buffer[] = [];
  const allocate = (length: number): Buffer => {
    const b = Buffer.alloc(length + 100, 0xee);
    given.push(b);
    return b;
  };
  const kept: { offset: number; data: Buffer }[] = [];
  for await (const p of readExtents(source, [{ offset: 1000, length: 700000 }], { maxRequest: 256 * 1024, concurrency: 3, allocate })) {
    kept.push({ offset: p.offset, data: p.data }); // no copy: the buffers are not reused by readExtents
  }
  expect(kept).toHaveLength(3);
  kept.forEach((k, i) => {
    expect(k.data.buffer).toBe(given[i]!.buffer);
    expect(k.data.byteOffset).toBe(given[i]!.byteOffset);
    expect(k.data.equals(bytes.subarray(k.offset, k.offset + k.data.length))).toBe(true);
  });
});
