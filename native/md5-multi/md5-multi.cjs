'use strict';
// The koffi glue of build/libmd5multi.so (md5-multi.c, built at install by scripts/build-md5-multi.mjs), in plain
// CommonJS so that the repository's worker threads (eval'd CommonJS) require it by absolute path, as index.ts does.
// Without the library, or on a CPU without AVX2, md5Many answers with node:crypto (OpenSSL): same digests, and
// available() says why the fast path is off.
// FLEECE_MD5_MULTI: unset or "auto" = the best kernel this CPU runs (AVX-512VL, else AVX2); "avx2" or "avx512vl" =
// that one only; "0"/"off" = node:crypto always.
const crypto = require('node:crypto');
const fs = require('node:fs');
const path = require('node:path');

const LIBRARY = path.join(__dirname, 'build', 'libmd5multi.so');
const ABI = 1;
const KERNELS = { avx2: 1, avx512vl: 2 };
/** Below this many buffers in one call, node:crypto is faster (one lane of 8 costs as much as eight). */
const MIN_BUFFERS = 2;

let state;

function load() {
  if (state) return state;
  const setting = (process.env.FLEECE_MD5_MULTI || 'auto').toLowerCase();
  const off = (why) => (state = { available: false, why, library: LIBRARY });
  if (['0', 'off', 'no', 'false'].includes(setting)) return off('disabled by FLEECE_MD5_MULTI=' + process.env.FLEECE_MD5_MULTI);
  if (setting !== 'auto' && !(setting in KERNELS)) return off('FLEECE_MD5_MULTI=' + process.env.FLEECE_MD5_MULTI + ' is not auto, off, avx2 or avx512vl');
  if (process.platform !== 'linux' || process.arch !== 'x64') return off('no multi-buffer md5 for ' + process.platform + '-' + process.arch);
  if (!fs.existsSync(LIBRARY)) return off(LIBRARY + ' is not built (npm install builds it; or node scripts/build-md5-multi.mjs)');
  let lib;
  try {
    const koffi = require('koffi');
    lib = koffi.load(LIBRARY);
    const abi = lib.func('int md5multi_abi(void)')();
    if (abi !== ABI) return off(LIBRARY + ' has interface ' + abi + ', not ' + ABI + ' (stale build: node scripts/build-md5-multi.mjs)');
    const mask = lib.func('int md5multi_kernels(void)')();
    const kernels = Object.keys(KERNELS).filter((k) => mask & (1 << (KERNELS[k] - 1)));
    if (kernels.length === 0) return off('this CPU has no AVX2');
    const kernel = setting === 'auto' ? kernels[kernels.length - 1] : setting;
    if (!kernels.includes(kernel)) return off('this CPU has no ' + kernel + ' (it has ' + kernels.join(', ') + ')');
    const many = lib.func('int md5multi_many(const uint8_t **ptrs, const double *lens, uint32_t n, _Out_ uint8_t *out, int kernel)');
    state = { available: true, kernel, kernels, library: LIBRARY, many };
  } catch (error) {
    return off('cannot load ' + LIBRARY + ': ' + (error && error.message));
  }
  return state;
}

/** { available, why?, kernel?, kernels?, library }: whether md5Many hashes several buffers at once, and if not why. */
function available() {
  const s = load();
  return s.available ? { available: true, kernel: s.kernel, kernels: s.kernels.slice(), library: s.library } : { available: false, why: s.why, library: s.library };
}

function viaCrypto(buffers) {
  return buffers.map((b) => crypto.createHash('md5').update(b).digest());
}

/**
 * The raw 16-byte MD5 digest of each buffer, in order (views of one Buffer of 16 × n bytes). `kernel` ('avx2' or
 * 'avx512vl') forces one (tests, benchmarks); it throws when that one is not available.
 */
function md5Many(buffers, kernel) {
  const s = load();
  if (kernel !== undefined) {
    if (!s.available || !s.kernels.includes(kernel)) throw new Error('md5-multi kernel ' + kernel + ' is not available: ' + (s.why || 'this CPU has ' + s.kernels.join(', ')));
  } else if (!s.available || buffers.length < MIN_BUFFERS) {
    return viaCrypto(buffers);
  }
  const n = buffers.length;
  if (n === 0) return [];
  const lens = new Float64Array(n);
  for (let i = 0; i < n; i++) lens[i] = buffers[i].byteLength;
  const out = Buffer.alloc(16 * n);
  const used = s.many(buffers, lens, n, out, KERNELS[kernel || s.kernel]);
  if (used < 0) throw new Error('md5multi_many refused kernel ' + (kernel || s.kernel));
  const digests = new Array(n);
  for (let i = 0; i < n; i++) digests[i] = out.subarray(16 * i, 16 * i + 16);
  return digests;
}

module.exports = { md5Many, available, MIN_BUFFERS, LIBRARY };
