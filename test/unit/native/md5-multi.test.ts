// Multi-buffer MD5 (native/md5-multi): every digest checked against node:crypto, for every kernel this CPU runs and
// for the fallback; and the repository workers' md5 of objects encoded together.
import { spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { Worker } from 'node:worker_threads';
import { md5Many, md5MultiAvailable, md5MultiModulePath, type Md5Kernel } from '../../../native/md5-multi/index.js';
import { WorkerPool, type EncodeResult, type EncodeTask } from '../../../src/repository/pipeline/worker-pool.js';
import { WORKER_SOURCE } from '../../../src/repository/pipeline/worker-source.js';

const MiB = 1024 * 1024;
const md5 = (b: Uint8Array): string => createHash('md5').update(b).digest('hex');
const availability = md5MultiAvailable();
const kernels: Md5Kernel[] = availability.kernels ?? [];
/** The CPU can run the AVX2 kernel and the library is built: then it must load (a broken build fails here, not silently). */
const expectNative = process.platform === 'linux' && process.arch === 'x64' && existsSync(availability.library)
  && /^flags\s*:.*\bavx2\b/m.test(readFileSync('/proc/cpuinfo', 'utf8')) && !process.env.FLEECE_MD5_MULTI;

// Seeded pseudo-random lengths (xorshift32), so a failure names a length that comes back.
function lengths(seed: number, count: number, max: number): number[] {
  let x = seed;
  const out: number[] = [];
  for (let i = 0; i < count; i++) {
    x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0;
    out.push(x % (max + 1));
  }
  return out;
}

const pool = randomBytes(4 * MiB + 64);
const CLASSES = [0, 1, 55, 56, 63, 64, 65, 119, 120, 127, 128];

function check(buffers: Uint8Array[], kernel?: Md5Kernel): void {
  const got = md5Many(buffers, kernel === undefined ? {} : { kernel });
  expect(got).toHaveLength(buffers.length);
  got.forEach((d, i) => {
    expect(d).toHaveLength(16);
    // The length and offset in the message name the failing buffer.
    expect({ length: buffers[i]!.byteLength, offset: buffers[i]!.byteOffset, md5: d.toString('hex') })
      .toEqual({ length: buffers[i]!.byteLength, offset: buffers[i]!.byteOffset, md5: md5(buffers[i]!) });
  });
}

test('md5MultiAvailable says whether the multi-buffer kernel runs, and why not', () => {
  if (availability.available) {
    expect(kernels.length).toBeGreaterThan(0);
    expect(kernels).toContain(availability.kernel);
    expect(availability.why).toBeUndefined();
  } else {
    expect(typeof availability.why).toBe('string');
    console.warn(`md5-multi not available, kernel tests skipped: ${availability.why}`);
  }
  if (expectNative) expect(availability).toMatchObject({ available: true });
});

describe.each(['auto (md5Many as callers use it)', ...kernels])('%s', (name) => {
  const kernel = name.startsWith('auto') ? undefined : name as Md5Kernel;

  test('RFC 1321 A.5 test suite', () => {
    const suite: [string, string][] = [
      ['', 'd41d8cd98f00b204e9800998ecf8427e'],
      ['a', '0cc175b9c0f1b6a831c399e269772661'],
      ['abc', '900150983cd24fb0d6963f7d28e17f72'],
      ['message digest', 'f96b697d7cb7938d525a2f31aaf161d0'],
      ['abcdefghijklmnopqrstuvwxyz', 'c3fcd3d76192e4007dfb496cca67e13b'],
      ['ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789', 'd174ab98d277d9f5a5611c2c9f419d9f'],
      ['1234567890'.repeat(8), '57edf4a22be3c955ac49da2e2107b67a'],
    ];
    const got = md5Many(suite.map(([s]) => Buffer.from(s, 'ascii')), kernel === undefined ? {} : { kernel });
    expect(got.map((d) => d.toString('hex'))).toEqual(suite.map(([, hex]) => hex));
  });

  test('every padding length class, each alone, in pairs and all in one call (lanes of unequal lengths)', () => {
    for (const n of CLASSES) {
      check([pool.subarray(0, n)], kernel);
      check([pool.subarray(0, n), pool.subarray(7, 7 + n)], kernel);
    }
    check(CLASSES.map((n, i) => pool.subarray(i, i + n)), kernel);
    check([...CLASSES].reverse().map((n) => pool.subarray(0, n)), kernel);
  });

  test('lengths around every block boundary up to 4 blocks', () => {
    const all: Uint8Array[] = [];
    for (let n = 0; n <= 260; n++) all.push(pool.subarray(n % 13, (n % 13) + n));
    check(all, kernel);
  });

  test('1 to 17 buffers in one call, random lengths up to 4 MiB + 1', () => {
    const lens = lengths(0x1234567, 17 * 9 / 2 + 17, 4 * MiB + 1);
    let at = 0;
    for (let count = 1; count <= 17; count++) {
      const buffers: Uint8Array[] = [];
      for (let i = 0; i < count; i++) {
        const n = count <= 3 ? lens[at++]! : lens[at++]! % (256 * 1024);
        const off = (at * 31) % 64;
        buffers.push(pool.subarray(off, off + Math.min(n, pool.length - off)));
      }
      check(buffers, kernel);
    }
  });

  test('8 buffers of 4 MiB and 4 MiB + 1, and one long lane among short ones', () => {
    check(Array.from({ length: 8 }, (_, i) => pool.subarray(i, i + 4 * MiB + (i % 2))), kernel);
    check([pool.subarray(0, 4 * MiB + 1), ...CLASSES.map((n) => pool.subarray(3, 3 + n))], kernel);
  });

  test('unaligned views (odd byteOffset), plain Uint8Arrays, all-zero and all-0xff data', () => {
    const zeros = Buffer.alloc(4 * MiB + 1);
    const ones = Buffer.alloc(4 * MiB + 1, 0xff);
    const plain = new Uint8Array(pool.buffer, pool.byteOffset + 3, 100_001);
    check([zeros, ones, zeros.subarray(1, 1 + 64 * 1024 + 5), ones.subarray(3, 3 + 119), plain, pool.subarray(1, 1 + 1_000_001)], kernel);
    check([zeros.subarray(0, 56), ones.subarray(0, 56), zeros.subarray(0, 0), ones.subarray(5, 5 + 4 * MiB - 5)], kernel);
    for (const n of CLASSES) check([zeros.subarray(1, 1 + n), ones.subarray(1, 1 + n)], kernel);
  });

  test('a one-bit change changes the digest (no lane reads another lane\'s data)', () => {
    const a = Buffer.from(pool.subarray(0, 100_000));
    const b = Buffer.from(a);
    b[50_000]! ^= 1;
    const [da, db] = md5Many([a, b, a, b], kernel === undefined ? {} : { kernel }).map((d) => d.toString('hex'));
    expect(da).toBe(md5(a));
    expect(db).toBe(md5(b));
    expect(da).not.toBe(db);
  });
});

test('an empty call returns no digests', () => {
  expect(md5Many([])).toEqual([]);
});

test('a kernel that is not available throws instead of answering', () => {
  if (kernels.length === 2) return;
  const missing: Md5Kernel = kernels.includes('avx2') ? 'avx512vl' : 'avx2';
  expect(() => md5Many([Buffer.alloc(1), Buffer.alloc(2)], { kernel: missing })).toThrow(/not available/);
});

test('FLEECE_MD5_MULTI=off: not available, why says so, digests from node:crypto', () => {
  const script = `const m = require(${JSON.stringify(md5MultiModulePath())});
    const bufs = [Buffer.alloc(0), Buffer.from('abc'), Buffer.alloc(100000, 7)];
    process.stdout.write(JSON.stringify({ a: m.available(), d: m.md5Many(bufs).map((x) => x.toString('hex')) }));`;
  const r = spawnSync(process.execPath, ['-e', script], { env: { ...process.env, FLEECE_MD5_MULTI: 'off' }, encoding: 'utf8' });
  expect(r.status).toBe(0);
  const out = JSON.parse(r.stdout) as { a: { available: boolean; why: string }; d: string[] };
  expect(out.a.available).toBe(false);
  expect(out.a.why).toMatch(/FLEECE_MD5_MULTI/);
  expect(out.d).toEqual([md5(Buffer.alloc(0)), md5(Buffer.from('abc')), md5(Buffer.alloc(100000, 7))]);
});

// Nine segments sent at once (so they queue to one worker together): segment 3 has unchanged blocks (baseline = their
// digests) that cut it into several objects; odd ones are zlib-compressed, the last is short.
function segments(): { tasks: EncodeTask[]; copies: Buffer[] } {
  const bs = 32 * 1024;
  const data = Array.from({ length: 9 }, (_, i) => Buffer.from(pool.subarray(i, i + (i === 8 ? 5 * bs + 17 : 4 * MiB))));
  const baselines = data.map((s) => Buffer.alloc(Math.ceil(s.length / bs) * 32));
  for (const b of [1, 2, 40, 41, 42, 100]) createHash('sha256').update(data[3]!.subarray(b * bs, (b + 1) * bs)).digest().copy(baselines[3]!, b * 32);
  const copies = data.map((s) => Buffer.from(s));
  const tasks = data.map((d, i): EncodeTask => ({
    kind: 'encode', data: d, blockSize: bs, baseline: baselines[i]!, codec: i % 2 ? 'zlib' : 'none', level: 1, maxObjectBytes: 4 * MiB,
  }));
  return { tasks, copies };
}

function checkObjects(results: EncodeResult[], copies: Buffer[]): void {
  const bs = 32 * 1024;
  results.forEach((r, i) => {
    expect(r.objects.length).toBeGreaterThan(0);
    for (const o of r.objects) {
      const raw = copies[i]!.subarray(o.block * bs, o.block * bs + o.length);
      expect({ segment: i, block: o.block, md5: o.md5 }).toEqual({ segment: i, block: o.block, md5: md5(raw) });
    }
  });
  expect(results[3]!.objects.map((o) => o.block)).toEqual([0, 3, 43, 101]);
}

test('the repository worker computes the right md5 for objects encoded together (queued at once to one worker)', async () => {
  const workers = new WorkerPool(1);
  try {
    const { tasks, copies } = segments();
    checkObjects(await Promise.all(tasks.map((t) => workers.run(t))), copies);
  } finally {
    await workers.close();
  }
});

test.each([['with', true], ['without', false]])('the worker source %s the multi-buffer library gives the same objects', async (_, withLib) => {
  const require = createRequire(import.meta.url);
  const worker = new Worker(WORKER_SOURCE, {
    eval: true,
    workerData: {
      zstdPath: require.resolve('zstd-napi'), zstdBindingPath: require.resolve('zstd-napi/binding'), bunzipPath: require.resolve('seek-bzip'),
      md5MultiPath: withLib ? md5MultiModulePath() : null,
    },
  });
  try {
    const { tasks, copies } = segments();
    const replies = new Map<number, EncodeResult>();
    const done = new Promise<void>((resolve, reject) => {
      worker.on('message', (m: { id: number; ok: boolean; result: EncodeResult; error?: string }) => {
        if (!m.ok) reject(new Error(m.error));
        replies.set(m.id, m.result);
        if (replies.size === tasks.length) resolve();
      });
      worker.on('error', reject);
    });
    tasks.forEach((task, id) => worker.postMessage({ id, task }));
    await done;
    checkObjects(tasks.map((_, id) => replies.get(id)!), copies);
  } finally {
    await worker.terminate();
  }
});
