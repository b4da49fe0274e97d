// Object compression on the main thread: zstd (zstd-napi), zlib (node:zlib), bz2 (seek-bzip decode, `bzip2` encode), none.
import { deflateSync, inflateSync } from 'node:zlib';
import { spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';
import type * as ZstdNapi from 'zstd-napi';
import type BunzipModule from 'seek-bzip';
import { IntegrityError, InvalidInputError } from '../../util/errors.js';
import { COMPRESSIONS, type Compression } from '../format/manifest.js';

// The codec libraries load at their first use, not with the repository code (`fleece list` reads no object data).
const require = createRequire(import.meta.url);
let zstd: typeof ZstdNapi | undefined;
const zstdLib = (): typeof ZstdNapi => (zstd ??= require('zstd-napi') as typeof ZstdNapi);
const bunzip = (): typeof BunzipModule => require('seek-bzip') as typeof BunzipModule;

/** Default levels: zstd 1 and zlib 1 are the fast levels (DESIGN.md: zlib 1 is already only 50–120 MiB/s/core). */
export const DEFAULT_LEVELS: Record<Compression, number> = { none: 0, zstd: 1, zlib: 1, bz2: 9 };

/** Throws InvalidInputError unless `name` is a compression fleece knows. */
export function parseCompression(name: string): Compression {
  if (!COMPRESSIONS.includes(name as Compression)) {
    throw new InvalidInputError(`unknown compression "${name}"`, { hint: `use one of ${COMPRESSIONS.join(', ')}` });
  }
  return name as Compression;
}

/** Compresses with `codec`; returns the data stored and the compression recorded (raw 'none' when not smaller). */
export function compressObject(codec: Compression, data: Uint8Array, level = DEFAULT_LEVELS[codec]): { data: Uint8Array; compression: Compression } {
  let packed: Uint8Array;
  switch (codec) {
    case 'none': return { data, compression: 'none' };
    case 'zstd': packed = zstdLib().compress(data, { compressionLevel: level }); break;
    case 'zlib': packed = deflateSync(data, { level }); break;
    case 'bz2': {
      const r = spawnSync('bzip2', ['-c', `-${Math.min(9, Math.max(1, level))}`], { input: data, maxBuffer: data.length * 2 + (1 << 20) });
      if (r.status !== 0) throw new InvalidInputError(`bzip2 failed: ${r.stderr?.toString() ?? r.error}`, { hint: 'install bzip2 or use another compression' });
      packed = r.stdout;
      break;
    }
  }
  return packed.length < data.length ? { data: packed, compression: codec } : { data, compression: 'none' };
}

/** Decompresses one object; `where` names it in errors. Throws IntegrityError when the data does not decode. */
export function decompressObject(compression: Compression, data: Uint8Array, where: string): Buffer {
  try {
    switch (compression) {
      case 'none': return Buffer.from(data.buffer, data.byteOffset, data.byteLength);
      case 'zstd': return zstdLib().decompress(data);
      case 'zlib': return inflateSync(data);
      case 'bz2': return bunzip().decode(data);
    }
  } catch (error) {
    throw new IntegrityError(`object ${where} does not decompress as ${compression}: ${(error as Error).message}`, { cause: error });
  }
  throw new IntegrityError(`object ${where} has unknown compression ${String(compression)}`);
}
