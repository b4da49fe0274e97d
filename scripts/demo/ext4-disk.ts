// The demo guest's disk: an ext4 file system (the whole of vda, no partition table) already holding files, as a used
// disk would: incompressible files, log-like text, zero-filled files and free space. Built offline, without QEMU:
// the files are generated into a scratch directory and `mkfs.ext4 -d` copies them in while it formats (much faster
// than writing them through a booted TCG guest), then `qemu-img convert` makes the qcow2. Also `e2fsck -fn`.
import { execFile } from 'node:child_process';
import { closeSync, openSync, statfsSync, writeSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { promisify } from 'node:util';
import { AbortedError, InvalidInputError, throwIfAborted } from '../../src/util/errors.js';
import { RandomStream, TextStream, seededRandom } from './mixed-disk.js';

const execFileAsync = promisify(execFile);

const KiB = 1024;
const MiB = 1024 * KiB;
const PIECE = 4 * MiB;
/** Below this the journal and metadata leave too little room for a mix worth showing. */
export const MIN_DISK_SIZE = 16 * MiB;

export type FileKind = 'random' | 'text' | 'zeros';

export interface PlannedFile {
  /** Relative to the file system's root (`data/blob-0001.bin`). */
  path: string;
  kind: FileKind;
  size: number;
}

export type FileTotals = Record<FileKind, number> & { files: number };

export interface FilledDisk {
  path: string;
  /** Virtual size of vda. */
  size: number;
  files: PlannedFile[];
  totals: FileTotals;
}

/** Share of the disk each kind takes (the rest, about half, stays free: holes in the qcow2). */
const SHARES: Record<FileKind, number> = { random: 0.3, text: 0.15, zeros: 0.05 };
const DIRS: Record<FileKind, [dir: string, prefix: string, ext: string]> = {
  random: ['data', 'blob-', '.bin'],
  text: ['log', 'app-', '.log'],
  zeros: ['images', 'zeroed-', '.img'],
};

/**
 * The files of a disk of `diskSize` bytes: per kind, files until its share is filled, sizes drawn log-uniformly from
 * 64 KiB to diskSize/32 (at least 1 MiB, at most 64 MiB; many small ones, a few large), rounded to 4 KiB; plus 100
 * small text files (notes/, 1 byte to 16 KiB). Pure, deterministic for a seed.
 * @throws InvalidInputError when diskSize is below MIN_DISK_SIZE.
 */
export function planFiles(diskSize: number, seed = 1): PlannedFile[] {
  if (!Number.isSafeInteger(diskSize) || diskSize < MIN_DISK_SIZE) {
    throw new InvalidInputError(`a demo disk of ${diskSize} bytes is too small`, { hint: 'use at least 16M' });
  }
  const random = seededRandom(seed);
  const minSize = 64 * KiB;
  const maxSize = Math.min(64 * MiB, Math.max(MiB, Math.floor(diskSize / 32)));
  const files: PlannedFile[] = [];
  for (const kind of ['random', 'text', 'zeros'] as const) {
    const [dir, prefix, ext] = DIRS[kind];
    let left = Math.floor((diskSize * SHARES[kind]) / (4 * KiB)) * 4 * KiB;
    for (let n = 1; left >= minSize; n++) {
      const drawn = Math.exp(Math.log(minSize) + random() * (Math.log(maxSize) - Math.log(minSize)));
      const size = Math.min(left, Math.max(minSize, Math.floor(drawn / (4 * KiB)) * 4 * KiB));
      files.push({ path: `${dir}/${prefix}${String(n).padStart(4, '0')}${ext}`, kind, size });
      left -= size;
    }
  }
  for (let n = 1; n <= 100; n++) {
    const size = 1 + Math.floor(random() * 16 * KiB);
    files.push({ path: `notes/note-${String(n).padStart(3, '0')}.txt`, kind: 'text', size });
  }
  return files;
}

/** Sums a plan by kind. Pure. */
export function totalsOf(files: readonly PlannedFile[]): FileTotals {
  const totals: FileTotals = { random: 0, text: 0, zeros: 0, files: files.length };
  for (const f of files) totals[f.kind] += f.size;
  return totals;
}

/**
 * A directory for createFilledExt4Disk's scratch (the files, then the raw image: about the disk's size in all):
 * a new one in /dev/shm when that has room for twice the disk (no disk writes, and mkfs's fsync costs nothing there),
 * else `fallback`. The caller removes it.
 */
export async function scratchDirFor(size: number, fallback: string): Promise<string> {
  try {
    const shm = statfsSync('/dev/shm');
    if (shm.bavail * shm.bsize >= 2 * size + 256 * MiB) return await mkdtemp(join('/dev/shm', 'fleece-demo-'));
  } catch {
    // no /dev/shm
  }
  await mkdir(fallback, { recursive: true });
  return fallback;
}

/**
 * Creates `path` (qcow2, `size` bytes virtual) holding an ext4 file system with the files of planFiles(size, seed):
 * written under `scratch`, `mkfs.ext4 -d` onto a sparse raw file there (inode tables and journal initialised now, so
 * the guest does no lazy-init writes later), `qemu-img convert -O qcow2` (cache unsafe: no flush of a throwaway
 * image). What it puts under `scratch` is removed. mkfs.ext4 -d skips all-zero blocks, so the zero-filled files are
 * sparse, as `cp --sparse` would leave them.
 * @throws InvalidInputError (size), AbortedError, Error with mkfs.ext4's or qemu-img's output.
 */
export async function createFilledExt4Disk(
  path: string,
  options: { size: number; scratch: string; seed?: number; signal?: AbortSignal },
): Promise<FilledDisk> {
  const { size, signal } = options;
  const seed = options.seed ?? 1;
  const files = planFiles(size, seed);
  const staging = join(options.scratch, 'files');
  const raw = join(options.scratch, 'vda.raw');
  try {
    await writeFiles(staging, files, seed, signal);
    throwIfAborted(signal);
    await rm(raw, { force: true });
    await writeFile(raw, '');
    await run('truncate', ['-s', String(size), raw], signal);
    await run('mkfs.ext4', ['-q', '-F', '-L', 'demo', '-E', 'lazy_itable_init=0,lazy_journal_init=0,nodiscard', '-d', staging, raw], signal);
    await rm(staging, { recursive: true, force: true });
    await run('qemu-img', ['convert', '-q', '-t', 'unsafe', '-W', '-f', 'raw', '-O', 'qcow2', raw, path], signal);
  } finally {
    await rm(raw, { force: true });
    await rm(staging, { recursive: true, force: true });
  }
  return { path, size, files, totals: totalsOf(files) };
}

async function writeFiles(root: string, files: readonly PlannedFile[], seed: number, signal?: AbortSignal): Promise<void> {
  const randomData = new RandomStream(seed);
  const textData = new TextStream(seed);
  const zeros = Buffer.alloc(PIECE);
  const made = new Set<string>();
  for (const file of files) {
    throwIfAborted(signal);
    const target = join(root, file.path);
    const dir = dirname(target);
    if (!made.has(dir)) {
      await mkdir(dir, { recursive: true });
      made.add(dir);
    }
    const fd = openSync(target, 'w');
    try {
      for (let done = 0; done < file.size; done += PIECE) {
        const length = Math.min(PIECE, file.size - done);
        const data = file.kind === 'random' ? randomData.next(length) : file.kind === 'text' ? textData.next(length) : zeros;
        writeSync(fd, data, 0, length);
      }
    } finally {
      closeSync(fd);
    }
  }
}

export interface FsckResult {
  ok: boolean;
  exitCode: number;
  /** e2fsck's summary line (`demo: 215/131072 files (0.5% non-contiguous), …`), or its last line. */
  summary: string;
  output: string;
}

/**
 * `e2fsck -fn image`: a forced full check that never writes (and so does not replay a journal: an image that needs
 * recovery is checked as it is on disk). ok when it exits 0 (nothing to fix). Throws AbortedError; Error when e2fsck
 * cannot be run.
 */
export async function fsckImage(image: string, signal?: AbortSignal): Promise<FsckResult> {
  let exitCode = 0;
  let output: string;
  try {
    const { stdout, stderr } = await execFileAsync('e2fsck', ['-fn', image], { maxBuffer: 16 * MiB, ...(signal ? { signal } : {}) });
    output = `${stdout}${stderr}`;
  } catch (error) {
    if (signal?.aborted) throw new AbortedError('e2fsck was interrupted');
    const failed = error as { code?: number | string; stdout?: string; stderr?: string };
    if (typeof failed.code !== 'number') throw new Error(`cannot run e2fsck -fn ${image}: ${String(error)}`, { cause: error });
    exitCode = failed.code;
    output = `${failed.stdout ?? ''}${failed.stderr ?? ''}`;
  }
  const lines = output.trim().split('\n').map((l) => l.trim()).filter(Boolean);
  const summary = lines.find((l) => /files \(.*non-contiguous\)/.test(l)) ?? lines[lines.length - 1] ?? '';
  return { ok: exitCode === 0, exitCode, summary, output };
}

async function run(command: string, args: string[], signal?: AbortSignal): Promise<void> {
  try {
    await execFileAsync(command, args, { maxBuffer: 16 * MiB, ...(signal ? { signal } : {}) });
  } catch (error) {
    if (signal?.aborted) throw new AbortedError(`${command} was interrupted`);
    const detail = error as { stderr?: string; stdout?: string; message?: string };
    throw new Error(`${command} ${args.join(' ')} failed: ${(detail.stderr || detail.stdout || detail.message || '').trim()}`, { cause: error });
  }
}
