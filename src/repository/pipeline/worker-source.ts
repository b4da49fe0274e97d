// The code of the hashing/compression worker threads, as CommonJS text run with `eval: true` (works from ts-jest and dist alike).

/**
 * Tasks (postMessage {id, task}); replies {id, ok, result | error}:
 * - encode: hash each sha block of a segment, compare with the baseline digests, and for each run of changed
 *   blocks (cut at maxObjectBytes) compute md5 and compress; raw when compression does not make it smaller.
 * - decode: decompress one object, check its length and md5.
 * - hash: sha256 of each block of a buffer; replies the digests, or { digests, input } with the buffer handed back
 *   when it was transferred whole.
 * md5 of objects: with the multi-buffer library (native/md5-multi: 8 lanes of AVX2, one object per lane; when it is
 * built and runs on this CPU), the encode tasks waiting for this worker are taken together (up to 8; those arriving
 * during their sha256 passes join), and their objects' md5s come from one md5Many call after those passes (a single
 * object: node:crypto, as fast in a pass of its own); without it, each object's md5 is fed block by block during the
 * sha256 pass (node:crypto).
 * workerData: { zstdPath, zstdBindingPath, bunzipPath, md5MultiPath (null: node:crypto only) }.
 */
export const WORKER_SOURCE = String.raw`
'use strict';
const { parentPort, workerData, receiveMessageOnPort } = require('node:worker_threads');
const crypto = require('node:crypto');
// The codecs are loaded on first use: a worker boots while the backup takes its point in time, and an incremental
// of codec none needs none of them (node:child_process alone pulls in net, dns and streams; seek-bzip only reads
// Cinder's bz2 objects).
let zlibModule = null, childProcessModule = null, zstdModule = null, zstdBindingModule = null, bunzipModule = null;
const zlib = () => (zlibModule ??= require('node:zlib'));
const childProcess = () => (childProcessModule ??= require('node:child_process'));
const zstd = () => (zstdModule ??= require(workerData.zstdPath));
const zstdBinding = () => (zstdBindingModule ??= require(workerData.zstdBindingPath));
const bunzip = () => (bunzipModule ??= require(workerData.bunzipPath));
// Multi-buffer md5 (native/md5-multi/md5-multi.cjs), or null: node:crypto. The pool has logged why it is off.
let md5Multi = null;
if (workerData.md5MultiPath) {
  try {
    const m = require(workerData.md5MultiPath);
    if (m.available().available) md5Multi = m;
  } catch (e) { /* node:crypto */ }
}
/** Encode tasks hashed together at most (the multi-buffer kernels have 8 lanes). */
const MAX_BATCH = 8;

const zeroDigests = new Map();
let zeroBlock = Buffer.alloc(0);
function zeroDigest(len) {
  let d = zeroDigests.get(len);
  if (!d) {
    d = crypto.createHash('sha256').update(Buffer.alloc(len)).digest();
    zeroDigests.set(len, d);
  }
  return d;
}
/** Whether a view spans its whole ArrayBuffer (so transferring the buffer moves exactly this data). */
function owns(view) {
  return view.byteOffset === 0 && view.byteLength === view.buffer.byteLength;
}
function isZero(view) {
  if (zeroBlock.length < view.length) zeroBlock = Buffer.alloc(view.length);
  return view.equals(zeroBlock.subarray(0, view.length));
}
// zstd compresses into one scratch buffer per worker, reused: a fresh compressBound-sized buffer per object (what
// zstd.compress does) leaves megabytes of garbage per object and lifted the peak RSS of a backup by tens of MiB.
let cctx = null;
let zstdScratch = Buffer.alloc(0);
function compressZstd(data, level) {
  cctx ??= new (zstdBinding().CCtx)();
  const bound = zstdBinding().compressBound(data.length);
  if (zstdScratch.length < bound) zstdScratch = Buffer.allocUnsafeSlow(bound);
  const n = cctx.compress(zstdScratch, data, level);
  if (n >= data.length) return null;
  const out = Buffer.allocUnsafeSlow(n);
  zstdScratch.copy(out, 0, 0, n);
  return out;
}
function compress(codec, level, data) {
  switch (codec) {
    case 'none': return null;
    case 'zstd': return compressZstd(data, level);
    case 'zlib': return zlib().deflateSync(data, { level });
    case 'bz2': {
      const r = childProcess().spawnSync('bzip2', ['-c', '-' + Math.min(9, Math.max(1, level))], { input: data, maxBuffer: data.length * 2 + (1 << 20) });
      if (r.status !== 0) throw new Error('bzip2 failed: ' + (r.stderr ? r.stderr.toString() : r.error));
      return r.stdout;
    }
    default: throw new Error('unknown compression ' + codec);
  }
}
function decompress(codec, data, length) {
  switch (codec) {
    case 'none': return data;
    case 'zstd': return zstd().decompress(data);
    case 'zlib': return zlib().inflateSync(data);
    case 'bz2': return bunzip().decode(data);
    default: throw new Error('unknown compression ' + codec);
  }
}
/**
 * The sha256 pass of an encode task: each block's digest, and the runs of changed blocks (the objects). With
 * streamMd5 each run's md5 is fed block by block while the block is in cache; else md5 is left to finishEncode's caller.
 */
function scanEncode(t, streamMd5) {
  const data = Buffer.from(t.data.buffer, t.data.byteOffset, t.length === undefined ? t.data.byteLength : t.length);
  const bs = t.blockSize;
  const blocks = Math.ceil(data.length / bs);
  const baseline = Buffer.from(t.baseline.buffer, t.baseline.byteOffset, t.baseline.byteLength);
  const digests = Buffer.alloc(blocks * 32);
  const maxBlocks = Math.max(1, Math.floor(t.maxObjectBytes / bs));
  // One pass: each block is hashed (sha256) and, when changed, fed to its object's md5 while still in cache.
  // Objects are the runs of changed blocks, cut at maxBlocks.
  const runs = [];
  let run = null;
  for (let b = 0; b < blocks; b++) {
    const view = data.subarray(b * bs, Math.min(data.length, (b + 1) * bs));
    const d = isZero(view) ? zeroDigest(view.length) : crypto.createHash('sha256').update(view).digest();
    d.copy(digests, b * 32);
    if (d.equals(baseline.subarray(b * 32, b * 32 + 32))) {
      if (run) { runs.push(run); run = null; }
      continue;
    }
    if (run && b - run.start >= maxBlocks) { runs.push(run); run = null; }
    if (!run) run = { start: b, end: b, md5: streamMd5 ? crypto.createHash('md5') : null, raw: null };
    if (streamMd5) run.md5.update(view);
    run.end = b + 1;
  }
  if (run) runs.push(run);
  for (const r of runs) r.raw = data.subarray(r.start * bs, Math.min(data.length, r.end * bs));
  return { t, digests, runs };
}
/** Compresses the runs of a scanned task into its objects; md5s: their hex md5s when not streamed. */
function finishEncode(scan, md5s) {
  const t = scan.t;
  const objects = [];
  scan.runs.forEach((r, i) => {
    const raw = r.raw;
    const md5 = md5s ? md5s[i] : r.md5.digest('hex');
    let packed = compress(t.codec, t.level, raw);
    let compression = t.codec;
    if (packed === null || packed.length >= raw.length) { packed = raw; compression = 'none'; }
    objects.push({ block: r.start, length: raw.length, md5, compression, data: new Uint8Array(packed.buffer, packed.byteOffset, packed.byteLength) });
  });
  return { digests: scan.digests, objects };
}
function encode(t) {
  return finishEncode(scanEncode(t, true), null);
}
function decode(t) {
  const input = Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength);
  let out;
  try {
    out = decompress(t.compression, input, t.length);
  } catch (e) {
    return { error: 'cannot decompress (' + t.compression + '): ' + (e && e.message) };
  }
  if (out.length !== t.length) return { error: 'decompressed length ' + out.length + ' is not the listed ' + t.length };
  const md5 = crypto.createHash('md5').update(out).digest('hex');
  if (md5 !== t.md5) return { error: 'md5 ' + md5 + ' is not the listed ' + t.md5, found: md5 };
  const digests = t.blockSize ? hash({ data: out, blockSize: t.blockSize }) : null;
  return { data: new Uint8Array(out.buffer, out.byteOffset, out.byteLength), digests };
}
function hash(t) {
  const data = Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength);
  const bs = t.blockSize;
  const blocks = Math.ceil(data.length / bs);
  const digests = Buffer.alloc(blocks * 32);
  for (let b = 0; b < blocks; b++) {
    const view = data.subarray(b * bs, Math.min(data.length, (b + 1) * bs));
    (isZero(view) ? zeroDigest(view.length) : crypto.createHash('sha256').update(view).digest()).copy(digests, b * 32);
  }
  return digests;
}
function reply(msg, result) {
  const t = msg.task;
  // Buffers that own their memory move back instead of being copied: the segment (the writer reuses its memory
  // once the objects are stored), a hashed buffer (read into again), decoded data and compressed objects.
  const transfer = [];
  if (t.kind === 'encode') {
    if (owns(t.data)) { result.input = t.data; transfer.push(t.data.buffer); }
    for (const o of result.objects) if (owns(o.data) && !transfer.includes(o.data.buffer)) transfer.push(o.data.buffer);
  } else if (t.kind === 'hash' && owns(t.data)) {
    result = { digests: result, input: t.data };
    transfer.push(t.data.buffer);
  } else if (t.kind === 'decode' && result.data && owns(result.data)) {
    transfer.push(result.data.buffer);
  }
  parentPort.postMessage({ id: msg.id, ok: true, result }, transfer);
}
function failed(msg, e) {
  parentPort.postMessage({ id: msg.id, ok: false, error: String(e && e.stack || e) });
}
function handle(msg) {
  try {
    const t = msg.task;
    reply(msg, t.kind === 'encode' ? encode(t) : t.kind === 'decode' ? decode(t) : hash(t));
  } catch (e) {
    failed(msg, e);
  }
}
// With md5Multi, messages wait in a queue handled once every message already sent has arrived (setImmediate runs
// after the port has delivered them); pull() also takes, synchronously, those that came in since. Without it, each
// message is handled as it comes.
const queue = [];
let draining = false;
function schedule() {
  if (!draining && queue.length) { draining = true; setImmediate(drain); }
}
function pull() {
  for (let m = receiveMessageOnPort(parentPort); m; m = receiveMessageOnPort(parentPort)) queue.push(m.message);
}
/**
 * Encode tasks together: the sha256 pass of each (tasks that arrived meanwhile join, up to MAX_BATCH), then one
 * md5Many over all their objects (one lane each), then each task's compression and reply in turn.
 */
function encodeTogether(msgs) {
  const scans = [];
  const scan = (msg) => {
    try {
      scans.push({ msg, scan: scanEncode(msg.task, false) });
    } catch (e) {
      failed(msg, e);
    }
  };
  for (const msg of msgs) scan(msg);
  while (scans.length < MAX_BATCH) {
    pull();
    const i = queue.findIndex((m) => m.task.kind === 'encode');
    if (i < 0) break;
    scan(queue.splice(i, 1)[0]);
  }
  const raws = [];
  for (const s of scans) for (const r of s.scan.runs) raws.push(r.raw);
  let hex;
  try {
    hex = md5Multi.md5Many(raws).map((d) => d.toString('hex'));
  } catch (e) {
    hex = raws.map((raw) => crypto.createHash('md5').update(raw).digest('hex'));
  }
  let at = 0;
  for (const s of scans) {
    const md5s = hex.slice(at, at + s.scan.runs.length);
    at += s.scan.runs.length;
    try {
      reply(s.msg, finishEncode(s.scan, md5s));
    } catch (e) {
      failed(s.msg, e);
    }
  }
}
function drain() {
  draining = false;
  pull();
  const batch = queue.splice(0, queue.length);
  const encodes = [];
  for (const msg of batch) {
    if (msg.task.kind === 'encode') encodes.push(msg);
    else handle(msg);
  }
  for (let i = 0; i < encodes.length; i += MAX_BATCH) encodeTogether(encodes.slice(i, i + MAX_BATCH));
  schedule();
}
parentPort.on('message', (msg) => {
  if (!md5Multi) return handle(msg);
  queue.push(msg);
  schedule();
});
`;
