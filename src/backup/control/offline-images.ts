// The images of a shut-off VM as `qemu-img info --output=json -U -f FORMAT` reports them: size, format, and (qcow2)
// the persistent bitmaps with their flags, folded into the state of each checkpoint's bitmap (parsing is pure).
//
// Bitmap flags in a qcow2 header (QEMU 7.2): `auto` = enabled (records writes when the image is opened read-write),
// `in-use` = the image was opened read-write and not closed cleanly since (a crash, or a QEMU holding it right now):
// QEMU treats such a bitmap as inconsistent. No flags = disabled (a bitmap that misses writes).
import { execa } from 'execa';
import type { CheckpointCheck, CheckpointDiskCheck } from '../../checkpoint/manager.js';
import { checkpointBitmaps, type Checkpoint } from '../../checkpoint/model.js';
import { AbortedError, FleeceError, InvalidInputError, NotFoundError } from '../../util/errors.js';

/** One persistent bitmap in a qcow2 image. */
export interface ImageBitmap {
  name: string;
  /** As qemu-img prints them: `auto`, `in-use`. */
  flags: string[];
  granularity: number;
}

/** What fleece needs from `qemu-img info` of one image. */
export interface ImageInfo {
  filename: string;
  format: string;
  virtualSize: number;
  actualSize?: number;
  /** The backing file named in the header, when there is one. */
  backingFile?: string;
  /** qcow2 only; empty for raw. */
  bitmaps: ImageBitmap[];
  /** qcow2 `corrupt` flag. */
  corrupt: boolean;
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/**
 * Parses the output of `qemu-img info --output=json` for one image (pure).
 * @throws InvalidInputError when it is not JSON of the shape qemu-img 7.2 prints (virtual-size, format, bitmaps).
 */
export function parseImageInfo(json: string, where = 'qemu-img info'): ImageInfo {
  let raw: unknown;
  try {
    raw = JSON.parse(json);
  } catch (error) {
    throw new InvalidInputError(`${where}: the output is not JSON`, { cause: error });
  }
  if (!isRecord(raw)) throw new InvalidInputError(`${where}: expected one JSON object (not --backing-chain output)`);
  const size = raw['virtual-size'];
  const format = raw.format;
  const filename = raw.filename;
  if (typeof size !== 'number' || !Number.isSafeInteger(size) || size < 0 || typeof format !== 'string') {
    throw new InvalidInputError(`${where}: virtual-size or format is missing`);
  }
  const info: ImageInfo = {
    filename: typeof filename === 'string' ? filename : '',
    format,
    virtualSize: size,
    bitmaps: [],
    corrupt: false,
  };
  if (typeof raw['actual-size'] === 'number') info.actualSize = raw['actual-size'];
  if (typeof raw['backing-filename'] === 'string') info.backingFile = raw['backing-filename'];
  const specific = raw['format-specific'];
  if (isRecord(specific) && specific.type === 'qcow2' && isRecord(specific.data)) {
    const data = specific.data;
    info.corrupt = data.corrupt === true;
    const bitmaps = data.bitmaps ?? [];
    if (!Array.isArray(bitmaps)) throw new InvalidInputError(`${where}: format-specific.data.bitmaps is not an array`);
    info.bitmaps = bitmaps.map((b: unknown, index) => {
      if (!isRecord(b) || typeof b.name !== 'string' || !Array.isArray(b.flags) || !b.flags.every((f) => typeof f === 'string')) {
        throw new InvalidInputError(`${where}: bitmap #${index} lacks name or flags`);
      }
      return { name: b.name, flags: [...(b.flags as string[])], granularity: typeof b.granularity === 'number' ? b.granularity : 0 };
    });
  }
  return info;
}

/** The state of one bitmap from its flags: in-use wins (inconsistent), then no `auto` (not recording), else ok (pure). */
export function bitmapState(flags: readonly string[]): 'ok' | 'inconsistent' | 'not-recording' {
  if (flags.includes('in-use')) return 'inconsistent';
  if (!flags.includes('auto')) return 'not-recording';
  return 'ok';
}

function flagText(flags: readonly string[]): string {
  return `flags: ${flags.length > 0 ? flags.join(', ') : '(none: disabled)'}`;
}

/** One disk of the shut-off VM with what qemu-img said about its image (undefined: not a disk of the VM). */
export interface InspectedDisk {
  target: string;
  path: string;
  info: ImageInfo;
}

/**
 * The state of every checkpoint's bitmaps in the images (pure): `ok` when present with `auto` and without
 * `in-use`; `missing` when absent (or the disk is gone, or is raw); `inconsistent` when `in-use`;
 * `not-recording` without `auto`. `detail` carries the flags or why the bitmap is missing.
 */
export function checkImageCheckpoints(checkpoints: readonly Checkpoint[], disks: readonly InspectedDisk[]): CheckpointCheck[] {
  return checkpoints.map((cp) => {
    const checks = checkpointBitmaps(cp).map(({ disk, bitmap }): CheckpointDiskCheck => {
      const base = { checkpoint: cp.name, disk, bitmap };
      const found = disks.find((d) => d.target === disk);
      if (!found) return { ...base, state: 'missing', detail: `the VM has no disk ${disk} any more` };
      if (found.info.format !== 'qcow2') {
        return { ...base, state: 'missing', detail: `${found.path} is ${found.info.format}, which holds no bitmaps` };
      }
      const info = found.info.bitmaps.find((b) => b.name === bitmap);
      if (!info) {
        const names = found.info.bitmaps.map((b) => b.name);
        return { ...base, state: 'missing', detail: `no bitmap ${bitmap} in ${found.path} (bitmaps: ${names.join(', ') || 'none'})` };
      }
      const state = bitmapState(info.flags);
      const why =
        state === 'inconsistent'
          ? ' (the image was not closed cleanly since it was last opened for writing, or a QEMU holds it open now)'
          : state === 'not-recording'
            ? ' (the bitmap is disabled and misses writes)'
            : '';
      return { ...base, state, detail: `${flagText(info.flags)}${why}` };
    });
    return { name: cp.name, valid: checks.every((c) => c.state === 'ok'), disks: checks };
  });
}

/**
 * Runs `qemu-img info --output=json -U -f FORMAT PATH` (no probing: the format is the one the domain declares;
 * `-U`: it also reads an image some QEMU holds) and parses it.
 * @throws NotFoundError when the image does not exist; FleeceError (INVALID_INPUT) when qemu-img cannot read it
 *   (wrong format, permissions), with its message; AbortedError.
 */
export async function queryImageInfo(path: string, format: 'qcow2' | 'raw', options: { signal?: AbortSignal } = {}): Promise<ImageInfo> {
  const result = await execa('qemu-img', ['info', '--output=json', '-U', '-f', format, path], {
    reject: false,
    stdin: 'ignore',
    ...(options.signal ? { cancelSignal: options.signal } : {}),
  });
  if (options.signal?.aborted) throw new AbortedError(`qemu-img info ${path} was aborted`, { cause: options.signal.reason });
  if (result.exitCode !== 0) {
    const message = String(result.stderr ?? '').trim() || String(result.shortMessage ?? 'no output');
    if (/No such file or directory/.test(message)) {
      throw new NotFoundError(`disk image ${path} does not exist`, { hint: 'fix the path in the domain XML' });
    }
    if (result.exitCode === undefined) throw new FleeceError('INTERNAL', `qemu-img could not be run: ${result.shortMessage}`, { hint: 'install qemu-utils' });
    throw new InvalidInputError(`qemu-img info of ${format} image ${path} failed: ${message}`);
  }
  return parseImageInfo(String(result.stdout), `qemu-img info ${path}`);
}
