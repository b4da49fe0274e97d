// Multi-buffer MD5: the digests of several independent buffers computed at once with AVX2 (8 lanes; AVX-512VL where
// the CPU has it), falling back to node:crypto. The Cinder format wants an md5 per object; MD5 is serial within one
// buffer, so only several at a time go faster than OpenSSL on one core. The code is md5-multi.c (built at install by
// scripts/build-md5-multi.mjs into build/libmd5multi.so, loaded with koffi by md5-multi.cjs, which the repository's
// worker threads require by path: see md5MultiModulePath()).
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

export type Md5Kernel = 'avx2' | 'avx512vl';

export interface Md5MultiAvailability {
  available: boolean;
  /** Why not, when not available (not built, no AVX2, disabled by FLEECE_MD5_MULTI, load failure). */
  why?: string;
  /** The kernel md5Many uses, when available. */
  kernel?: Md5Kernel;
  /** Every kernel this CPU runs, when available. */
  kernels?: Md5Kernel[];
  /** Where the shared library is (or would be). */
  library: string;
}

interface Glue {
  md5Many(buffers: readonly Uint8Array[], kernel?: Md5Kernel): Buffer[];
  available(): Md5MultiAvailability;
  MIN_BUFFERS: number;
}

// Beside this file when run from source (ts-jest); from dist/native/md5-multi/, the source tree's copy (tsc copies no .cjs).
const MODULE = ['./md5-multi.cjs', '../../../native/md5-multi/md5-multi.cjs']
  .map((p) => fileURLToPath(new URL(p, import.meta.url)))
  .find((p) => existsSync(p)) ?? fileURLToPath(new URL('./md5-multi.cjs', import.meta.url));
const glue = createRequire(import.meta.url)(MODULE) as Glue;

/** The absolute path of the CommonJS glue, for worker threads to require (they cannot import this module). */
export function md5MultiModulePath(): string {
  return MODULE;
}

/**
 * The raw 16-byte MD5 digest of each buffer, in order (views into one Buffer; `.toString('hex')` for Cinder's form).
 * Uses the multi-buffer kernel when md5MultiAvailable() says so and there are at least 2 buffers, else node:crypto:
 * the digests are the same either way. `kernel` forces one kernel (tests, benchmarks) and throws if it is not available.
 */
export function md5Many(buffers: readonly Uint8Array[], options: { kernel?: Md5Kernel } = {}): Buffer[] {
  return glue.md5Many(buffers, options.kernel);
}

/** Whether md5Many runs the multi-buffer kernel here, and if not why (the fallback is node:crypto). */
export function md5MultiAvailable(): Md5MultiAvailability {
  return glue.available();
}
