// NbdSource and readExtents against real qemu-nbd and real libnbd: content, allocation, dirty bitmaps, windows, multi-conn, failures, trim.
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, open, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { NbdError } from '../../../native/nbd-error.js';
import { NbdHandle } from '../../../native/nbd-handle.js';
import { allocatedExtents, dataExtents, dirtyBitmapContext, dirtyExtents } from '../../../src/nbd/context-extents.js';
import type { Extent } from '../../../src/nbd/extent-algebra.js';
import { NbdSource } from '../../../src/nbd/nbd-source.js';
import { readExtents } from '../../../src/nbd/read-extents.js';
import { startQemuNbd, qemuImg, qemuIo, type QemuNbdServer } from '../../harness/qemu-nbd.js';
import { makeTempDir, removeTempDir } from '../../harness/temp-dir.js';

const MiB = 1024 * 1024;
const SIZE = 48 * MiB;
/** Ranges filled with random bytes in the base image. */
const WRITTEN = [
  { offset: 0, length: 3 * MiB },
  { offset: 5 * MiB + 4096 * 16, length: 2 * MiB },
  { offset: 20 * MiB, length: 7 * MiB },
  { offset: 47 * MiB, length: MiB },
];
/** Writes done after bitmap cp1 was added (pattern 0x33 / 0x44), at offsets not aligned to the 64 KiB granularity. */
const AFTER_BITMAP = [
  { offset: 10 * MiB + 1000, length: 100 * 1024, pattern: 0x33 },
  { offset: 30 * MiB, length: 64 * 1024, pattern: 0x44 },
];

let dir: string;
let rawPath: string;
let qcowPath: string;
let expected: Buffer;
const servers: QemuNbdServer[] = [];
const sources: NbdSource[] = [];

async function serve(options: Partial<Parameters<typeof startQemuNbd>[0]> = {}): Promise<QemuNbdServer> {
  const sub = await mkdtemp(join(dir, 'srv-'));
  const server = await startQemuNbd({ dir: sub, image: qcowPath, readOnly: true, shared: 8, bitmap: 'cp1', ...options });
  servers.push(server);
  return server;
}

async function openSource(server: QemuNbdServer, options: Parameters<typeof NbdSource.open>[1] = {}): Promise<NbdSource> {
  const source = await NbdSource.open({ socket: server.socket }, options);
  sources.push(source);
  return source;
}

async function collect<T>(it: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const x of it) out.push(x);
  return out;
}

beforeAll(async () => {
  dir = await makeTempDir('nbd');
  rawPath = join(dir, 'base.raw');
  qcowPath = join(dir, 'disk.qcow2');
  const file = await open(rawPath, 'w');
  await file.truncate(SIZE);
  for (const r of WRITTEN) await file.write(randomBytes(r.length), 0, r.length, r.offset);
  await file.close();
  await qemuImg('convert', '-f', 'raw', '-O', 'qcow2', rawPath, qcowPath);
  await qemuImg('bitmap', '--add', qcowPath, 'cp1');
  await qemuIo(qcowPath, AFTER_BITMAP.map((w) => `write -P ${w.pattern} ${w.offset} ${w.length}`));
  expected = await readFile(rawPath);
  for (const w of AFTER_BITMAP) expected.fill(w.pattern, w.offset, w.offset + w.length);
});

afterEach(async () => {
  for (const s of sources.splice(0)) await s.close();
  for (const s of servers.splice(0)) await s.stop();
});

afterAll(async () => {
  if (dir) await removeTempDir(dir);
});

test('connects, reports the size, and reads byte for byte what the image holds', async () => {
  const server = await serve();
  const source = await openSource(server);
  expect(source.size).toBe(SIZE);
  expect(source.readOnly).toBe(true);
  const whole = await source.read(0, SIZE);
  expect(whole.equals(expected)).toBe(true);
  const odd = await source.read(5 * MiB + 12345, 777);
  expect(odd.equals(expected.subarray(5 * MiB + 12345, 5 * MiB + 12345 + 777))).toBe(true);
});

test('base:allocation reports exactly the written ranges as data and never a hole as data', async () => {
  const server = await serve();
  const source = await openSource(server);
  const data = await collect(dataExtents(source));
  const written = [...WRITTEN, ...AFTER_BITMAP].map((r) => ({ offset: r.offset, length: r.length }));
  // qcow2 allocates whole 64 KiB clusters: every written byte is inside a data extent, and every data extent holds
  // a written byte in each of its clusters.
  for (const w of written) {
    const inside = data.some((d) => d.offset <= w.offset && d.offset + d.length >= w.offset + w.length);
    expect({ w, inside }).toEqual({ w, inside: true });
  }
  const cluster = 64 * 1024;
  for (const d of data) {
    for (let c = d.offset; c < d.offset + d.length; c += cluster) {
      const hit = written.some((w) => w.offset < c + cluster && w.offset + w.length > c);
      expect({ cluster: c, hit }).toEqual({ cluster: c, hit: true });
    }
  }
  // Everything outside data reads as zeroes.
  const all = await collect(allocatedExtents(source));
  const covered = await collect(source.extents('base:allocation'));
  expect(covered.reduce((n, e) => n + e.length, 0)).toBe(SIZE);
  for (const e of covered) {
    if (e.flags & 2) expect(expected.subarray(e.offset, e.offset + e.length).every((b) => b === 0)).toBe(true);
  }
  expect(all.filter((e) => !e.zero)).toEqual(data);
});

test('qemu:dirty-bitmap:cp1 reports the ranges written since the bitmap was added, at its granularity', async () => {
  const server = await serve();
  const context = dirtyBitmapContext('cp1');
  const source = await openSource(server, { metaContexts: ['base:allocation', context] });
  const dirty = (await collect(dirtyExtents(source, context))).map(({ offset, length }) => ({ offset, length }));
  const g = 64 * 1024;
  const want = AFTER_BITMAP.map((w) => {
    const start = Math.floor(w.offset / g) * g;
    return { offset: start, length: Math.ceil((w.offset + w.length) / g) * g - start };
  });
  expect(dirty).toEqual(want);
  const chunks = await collect(readExtents(source, dirtyExtents(source, context), { concurrency: 3 }));
  for (const c of chunks) expect(c.data.equals(expected.subarray(c.offset, c.offset + c.length))).toBe(true);
  await expect(collect(source.extents('qemu:dirty-bitmap:nope'))).rejects.toThrow(/does not offer meta context/);
});

test('block status is iterated in windows on an export larger than the window', async () => {
  const server = await serve();
  const small = await openSource(server, { statusWindow: 3 * MiB + 4096 });
  const big = await openSource(server);
  const a = await collect(small.extents('base:allocation'));
  const b = await collect(big.extents('base:allocation'));
  expect(a).toEqual(b);
  expect(a.reduce((n, e) => n + e.length, 0)).toBe(SIZE);
  const part = await collect(small.extents('base:allocation', { offset: 4 * MiB, length: 20 * MiB }));
  expect(part[0].offset).toBe(4 * MiB);
  expect(part.reduce((n, e) => n + e.length, 0)).toBe(20 * MiB);
});

test('reads concurrently over several connections, in order, with bounded requests', async () => {
  const server = await serve();
  const source = await openSource(server, { connections: 3 });
  expect(source.canMultiConn).toBe(true);
  expect(source.connectionCount).toBe(3);
  for (const reuseBuffers of [false, true]) {
    const hash = createHash('sha256');
    const want = createHash('sha256');
    let last = -1;
    let progress = 0;
    const extents: Extent[] = await collect(dataExtents(source));
    for await (const piece of readExtents(source, extents, { concurrency: 6, maxRequest: 256 * 1024, reuseBuffers, onProgress: (p) => (progress = p.bytesRead) })) {
      expect(piece.offset).toBeGreaterThan(last);
      expect(piece.length).toBeLessThanOrEqual(256 * 1024);
      last = piece.offset;
      hash.update(piece.data);
      want.update(expected.subarray(piece.offset, piece.offset + piece.length));
    }
    const total = extents.reduce((n, e) => n + e.length, 0);
    expect(progress).toBe(total);
    expect(hash.digest('hex')).toBe(want.digest('hex'));
  }
});

test('a closed handle and a closed source throw NbdError; close is idempotent', async () => {
  const server = await serve();
  const h = NbdHandle.create();
  await h.connectUnix(server.socket);
  expect(h.getSize()).toBe(SIZE);
  h.close();
  h.close();
  expect(() => h.getSize()).toThrow(NbdError);
  await expect(h.pread(Buffer.alloc(512), 0)).rejects.toThrow(/closed/);
  const source = await openSource(server);
  await source.close();
  await source.close();
  await expect(source.read(0, 512)).rejects.toBeInstanceOf(NbdError);
});

test('an out-of-range request fails with libnbd\'s message and errno', async () => {
  const server = await serve();
  const h = NbdHandle.create();
  try {
    await h.connectUnix(server.socket);
    const error = await h.pread(Buffer.alloc(4096), SIZE).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(NbdError);
    expect((error as NbdError).errnoName).toBe('EINVAL');
    expect((error as NbdError).call).toBe('nbd_aio_pread');
  } finally {
    h.close();
  }
});

test('connecting to a socket nobody listens on fails with NbdError', async () => {
  const h = NbdHandle.create();
  try {
    await expect(h.connectUnix(join(dir, 'no-such.sock'))).rejects.toBeInstanceOf(NbdError);
  } finally {
    h.close();
  }
});

test('the server killed mid-read gives NbdError, not a crash', async () => {
  const server = await serve();
  const source = await openSource(server, { connections: 2 });
  let pieces = 0;
  const run = async (): Promise<void> => {
    for await (const piece of readExtents(source, [{ offset: 0, length: SIZE }], { concurrency: 4, maxRequest: 64 * 1024 })) {
      pieces += piece.length > 0 ? 1 : 0;
      if (pieces === 2) await server.stop();
    }
  };
  await expect(run()).rejects.toBeInstanceOf(NbdError);
  expect(pieces).toBeGreaterThanOrEqual(2);
  await source.close();
});

test('trim on a writable export discards what was read', async () => {
  const copy = join(dir, 'trim.qcow2');
  await qemuImg('create', '-f', 'qcow2', copy, String(8 * MiB));
  await qemuIo(copy, ['write -P 0x5a 0 4M']);
  const server = await serve({ image: copy, readOnly: false, bitmap: undefined, shared: 1, extraArgs: ['--discard=unmap'] });
  const source = await openSource(server);
  expect(source.canTrim).toBe(true);
  const before = await collect(dataExtents(source));
  expect(before).toEqual([{ offset: 0, length: 4 * MiB, flags: 0, zero: false }]);
  let seen = 0;
  for await (const piece of readExtents(source, before, { trim: true, maxRequest: MiB })) {
    expect(piece.data.every((b) => b === 0x5a)).toBe(true);
    seen += piece.length;
  }
  expect(seen).toBe(4 * MiB);
  expect(await collect(dataExtents(source))).toEqual([]);
  const after = await source.read(0, MiB);
  expect(after.every((b) => b === 0)).toBe(true);
});

test('trim is refused on a read-only export', async () => {
  const server = await serve();
  const source = await openSource(server);
  await expect(collect(readExtents(source, [{ offset: 0, length: MiB }], { trim: true }))).rejects.toThrow(/cannot trim/);
});
