// Builds a qcow2 disk holding a realistic mix offline (no QEMU running): incompressible random data, compressible
// text-like data, zero bytes that are allocated, zero clusters, and unallocated holes, laid out by a seeded generator.
import { createCipheriv } from 'node:crypto';
import { closeSync, ftruncateSync, openSync, rmSync, writeSync } from 'node:fs';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { AbortedError, InvalidInputError, throwIfAborted } from '../../src/util/errors.js';

const execFileAsync = promisify(execFile);

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;
/** Every region starts and ends on this boundary (the qcow2 cluster size). */
const ALIGN = 64 * KiB;
const PIECE = 4 * MiB;

export type RegionKind = 'random' | 'text' | 'zero-data' | 'zero-clusters' | 'hole';

export interface Region {
  kind: RegionKind;
  offset: number;
  length: number;
}

/** How many bytes of each kind the disk holds. */
export type MixTotals = Record<RegionKind, number>;

export interface MixedDisk {
  path: string;
  size: number;
  regions: Region[];
  totals: MixTotals;
  /** Bytes a reader of allocated data sees (random + text + zero-data). */
  allocated: number;
}

export interface MixedDiskOptions {
  /** Virtual size in bytes (a multiple of 64 KiB). */
  size: number;
  /** Seed of the layout and of the data; the same seed gives the same disk. Default 1. */
  seed?: number;
  /** Where the temporary raw file goes; default beside `path`. */
  scratchRaw?: string;
  signal?: AbortSignal;
}

/** Share of each kind in the layout (by bytes, on average): about 70 % of the disk holds data. */
const WEIGHTS: [RegionKind, number][] = [
  ['random', 3], ['text', 2], ['zero-data', 0.5], ['zero-clusters', 0.5], ['hole', 1.5],
];

/** mulberry32: a small seeded PRNG, enough for layouts and text. */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * The layout of a disk of `size` bytes: regions of 256 KiB to 1/16 of the disk (at most 32 MiB), kinds drawn by
 * WEIGHTS, never two neighbours of one kind. Pure. Throws InvalidInputError when size is not a positive multiple of 64 KiB.
 */
export function planRegions(size: number, seed = 1): Region[] {
  if (!Number.isSafeInteger(size) || size <= 0 || size % ALIGN !== 0) {
    throw new InvalidInputError(`disk size ${size} is not a positive multiple of 64 KiB`, { hint: 'use e.g. 64M, 2G' });
  }
  const random = seededRandom(seed);
  const total = WEIGHTS.reduce((sum, [, w]) => sum + w, 0);
  const maxLength = Math.max(4 * ALIGN, Math.min(32 * MiB, Math.floor(size / 16 / ALIGN) * ALIGN));
  const regions: Region[] = [];
  let previous: RegionKind | undefined;
  for (let offset = 0; offset < size;) {
    let kind: RegionKind;
    do {
      let pick = random() * total;
      kind = WEIGHTS[WEIGHTS.length - 1]![0];
      for (const [k, w] of WEIGHTS) {
        if ((pick -= w) < 0) { kind = k; break; }
      }
    } while (kind === previous);
    const blocks = 4 + Math.floor(random() * (maxLength / ALIGN - 3));
    const length = Math.min(blocks * ALIGN, size - offset);
    regions.push({ kind, offset, length });
    previous = kind;
    offset += length;
  }
  return regions;
}

/** Sums a layout by kind. */
export function totalsOf(regions: readonly Region[]): MixTotals {
  const totals: MixTotals = { random: 0, text: 0, 'zero-data': 0, 'zero-clusters': 0, hole: 0 };
  for (const r of regions) totals[r.kind] += r.length;
  return totals;
}

/** Incompressible bytes, fast: AES-128-CTR over zeros, keyed by the seed. */
export class RandomStream {
  readonly #cipher;
  readonly #zeros = Buffer.alloc(PIECE);

  constructor(seed: number) {
    const key = Buffer.alloc(16);
    key.writeUInt32LE(seed >>> 0, 0);
    key.write('fleece-demo', 4);
    this.#cipher = createCipheriv('aes-128-ctr', key, Buffer.alloc(16));
  }

  /** `length` (≤ 4 MiB) new random bytes. */
  next(length: number): Buffer {
    return this.#cipher.update(this.#zeros.subarray(0, length));
  }
}

const WORDS = ('the a of and to in is it for on with as at by from backup disk block guest qemu checkpoint bitmap extent '
  + 'kernel: systemd[1]: Started Daily apt upgrade and clean activities. nginx GET /index.html HTTP/1.1 200 '
  + 'user root session opened closed INFO WARN ERROR DEBUG request id latency ms cache hit miss').split(' ');

/** Log-like text, compressible about 3-5× by zstd: lines drawn from a pool of varied log lines (so 4 KiB blocks differ). */
export class TextStream {
  readonly #random: () => number;
  readonly #pool: Buffer[] = [];

  constructor(seed: number) {
    this.#random = seededRandom(seed ^ 0x5eed);
    for (let n = 0; n < 8192; n++) {
      let line = `2026-11-23T${String(n % 24).padStart(2, '0')}:${String(Math.floor(n / 60) % 60).padStart(2, '0')}:`
        + `${String(n % 60).padStart(2, '0')}.${String(Math.floor(this.#random() * 1000)).padStart(3, '0')} host${n % 7} `;
      const words = 6 + Math.floor(this.#random() * 10);
      for (let i = 0; i < words; i++) line += `${WORDS[Math.floor(this.#random() * WORDS.length)]} `;
      line += `seq=${Math.floor(this.#random() * 1e6)}\n`;
      this.#pool.push(Buffer.from(line));
    }
  }

  /** `length` new bytes of text. */
  next(length: number): Buffer {
    const out = Buffer.allocUnsafe(length);
    const pool = this.#pool;
    for (let at = 0; at < length;) {
      const line = pool[Math.floor(this.#random() * pool.length)]!;
      at += line.copy(out, at, 0, Math.min(line.length, length - at));
    }
    return out;
  }
}

/**
 * Creates `path` as a qcow2 image of `options.size` bytes with the mixed layout: the random and text regions are
 * written to a sparse raw file and converted (`qemu-img convert`), then the zero regions are written with qemu-io
 * (`write -P 0` keeps allocated zero bytes, `write -z` makes zero clusters). Throws InvalidInputError (size),
 * AbortedError, or Error with qemu-img's or qemu-io's output.
 */
export async function createMixedDisk(path: string, options: MixedDiskOptions): Promise<MixedDisk> {
  const { size, signal } = options;
  const seed = options.seed ?? 1;
  const regions = planRegions(size, seed);
  const raw = options.scratchRaw ?? `${path}.raw-tmp`;
  const randomData = new RandomStream(seed);
  const textData = new TextStream(seed);
  try {
    const fd = openSync(raw, 'w');
    try {
      ftruncateSync(fd, size);
      for (const region of regions) {
        if (region.kind !== 'random' && region.kind !== 'text') continue;
        throwIfAborted(signal);
        for (let done = 0; done < region.length; done += PIECE) {
          const length = Math.min(PIECE, region.length - done);
          const data = region.kind === 'random' ? randomData.next(length) : textData.next(length);
          writeSync(fd, data, 0, length, region.offset + done);
        }
      }
    } finally {
      closeSync(fd);
    }
    throwIfAborted(signal);
    await run('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', '-o', 'cluster_size=65536', raw, path], signal);
  } finally {
    rmSync(raw, { force: true });
  }
  const zeroCommands = regions
    .filter((r) => r.kind === 'zero-data' || r.kind === 'zero-clusters')
    .map((r) => (r.kind === 'zero-data' ? `write -q -P 0 ${r.offset} ${r.length}` : `write -q -z ${r.offset} ${r.length}`));
  // One qemu-io process per batch keeps the argument list short.
  for (let i = 0; i < zeroCommands.length; i += 200) {
    const args = ['-f', 'qcow2'];
    for (const command of zeroCommands.slice(i, i + 200)) args.push('-c', command);
    await run('qemu-io', [...args, path], signal);
  }
  const totals = totalsOf(regions);
  return { path, size, regions, totals, allocated: totals.random + totals.text + totals['zero-data'] };
}

async function run(command: string, args: string[], signal?: AbortSignal): Promise<string> {
  try {
    const { stdout } = await execFileAsync(command, args, { maxBuffer: 16 * MiB, ...(signal ? { signal } : {}) });
    return stdout;
  } catch (error) {
    if (signal?.aborted) throw new AbortedError(`${command} was interrupted`);
    const detail = error as { stderr?: string; stdout?: string; message?: string };
    throw new Error(`${command} ${args.join(' ')} failed: ${(detail.stderr || detail.stdout || detail.message || '').trim()}`, { cause: error });
  }
}

/**
 * Parses a size like `2G`, `512M`, `64MiB`, `1.5GiB` or a byte count, rounded down to 64 KiB.
 * Throws InvalidInputError when it is not one or is below 4 MiB.
 */
export function parseSize(text: string, what: string): number {
  const match = /^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*$/i.exec(text);
  if (!match) throw new InvalidInputError(`${what}=${text} is not a size`, { hint: 'write it like 2G, 512M or 64MiB' });
  const unit = { '': 1, K: KiB, M: MiB, G: GiB, T: 1024 * GiB }[match[2]!.toUpperCase() as '' | 'K' | 'M' | 'G' | 'T'];
  const bytes = Math.floor((Number(match[1]) * unit) / ALIGN) * ALIGN;
  if (bytes < 4 * MiB) throw new InvalidInputError(`${what}=${text} is too small`, { hint: 'use at least 4M' });
  return bytes;
}
