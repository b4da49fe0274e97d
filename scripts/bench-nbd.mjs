#!/usr/bin/env node
// Benchmark: fleece's NBD reader (dist/ build) vs nbdcopy on a multi-GiB qcow2 with mixed data exported by qemu-nbd.
// Usage: npx tsc -p tsconfig.json && node scripts/bench-nbd.mjs [--size-gib 4] [--dir /tmp/fleece-bench-nbd] [--runs 3]
import { spawn, spawnSync, execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, openSync, writeSync, ftruncateSync, closeSync, rmSync, readFileSync } from 'node:fs';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const args = process.argv.slice(2);
const opt = (name, def) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : def;
};
const MiB = 1024 * 1024;

if (args[0] === '--child') {
  // One measurement in a fresh process: prints {seconds, bytes, maxRssMiB}.
  const [, socket, connections, concurrency, maxRequestMiB, reuse] = args;
  const { NbdSource } = await import(join(root, 'dist/src/nbd/nbd-source.js'));
  const { readExtents } = await import(join(root, 'dist/src/nbd/read-extents.js'));
  const { dataExtents } = await import(join(root, 'dist/src/nbd/context-extents.js'));
  const t0 = performance.now();
  const source = await NbdSource.open({ socket }, { connections: Number(connections) });
  let bytes = 0;
  for await (const piece of readExtents(source, dataExtents(source), {
    concurrency: Number(concurrency), maxRequest: Number(maxRequestMiB) * MiB, reuseBuffers: reuse === 'reuse',
  })) bytes += piece.length;
  await source.close();
  const seconds = (performance.now() - t0) / 1000;
  console.log(JSON.stringify({ seconds, bytes, connections: source.connectionCount, maxRssMiB: Math.round(process.resourceUsage().maxRSS / 1024) }));
  process.exit(0);
}

const sizeGiB = Number(opt('size-gib', '4'));
const dir = opt('dir', '/tmp/fleece-bench-nbd');
const runs = Number(opt('runs', '3'));
mkdirSync(dir, { recursive: true });
const image = join(dir, `mixed-${sizeGiB}g.qcow2`);

if (!existsSync(image)) {
  // 64 MiB blocks, in a fixed rotation: random, text-like, random, zero bytes, hole, text-like, random, hole.
  console.error(`building ${image} (${sizeGiB} GiB of mixed data)...`);
  const raw = join(dir, 'mixed.raw');
  const fd = openSync(raw, 'w');
  const size = sizeGiB * 1024 * MiB;
  ftruncateSync(fd, size);
  const kinds = ['random', 'text', 'random', 'zero', 'hole', 'text', 'random', 'hole'];
  const block = 64 * MiB;
  const words = 'lorem ipsum dolor sit amet backup fleece qemu block nbd extent checkpoint bitmap '.split(' ');
  for (let i = 0, off = 0; off < size; i++, off += block) {
    const kind = kinds[i % kinds.length];
    if (kind === 'hole') continue;
    let buf;
    if (kind === 'random') buf = randomBytes(block);
    else if (kind === 'zero') buf = Buffer.alloc(block);
    else {
      const parts = [];
      let n = 0;
      while (n < block) { const w = `${words[(n * 7 + i) % words.length]} ${n % 9973}\n`; parts.push(w); n += w.length; }
      buf = Buffer.from(parts.join('')).subarray(0, block);
    }
    writeSync(fd, buf, 0, buf.length, off);
  }
  closeSync(fd);
  // Default sparse detection: holes and all-zero blocks become unallocated (reported hole,zero; not read by either side).
  execFileSync('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', raw, image]);
  rmSync(raw);
}

const socket = join(dir, 'bench.sock');
rmSync(socket, { force: true });
const server = spawn('qemu-nbd', ['-r', '-t', '-e', '16', '-f', 'qcow2', '-k', socket, image], { stdio: 'ignore' });
for (let i = 0; i < 100 && !existsSync(socket); i++) await new Promise((r) => setTimeout(r, 50));
await new Promise((r) => setTimeout(r, 200));
const uri = `nbd+unix:///?socket=${socket}`;
const map = execFileSync('nbdinfo', ['--map', '--totals', uri], { encoding: 'utf8' });
console.log(`image ${image}\n${map.trim()}`);

function nbdcopy() {
  const t0 = performance.now();
  const r = spawnSync('/usr/bin/time', ['-f', '%M', 'nbdcopy', uri, 'null:'], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`nbdcopy failed: ${r.stderr}`);
  return { seconds: (performance.now() - t0) / 1000, maxRssMiB: Math.round(Number(r.stderr.trim().split('\n').pop()) / 1024) };
}
function ours(connections, concurrency, maxRequestMiB, reuse) {
  const r = spawnSync(process.execPath, [fileURLToPath(import.meta.url), '--child', socket, String(connections), String(concurrency), String(maxRequestMiB), reuse], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`reader failed: ${r.stderr}`);
  return JSON.parse(r.stdout.trim().split('\n').pop());
}

try {
  // Bytes nbdcopy reads = data extents; measure ours once to know them.
  const probe = ours(2, 8, 4, 'reuse');
  const dataBytes = probe.bytes;
  const rate = (s) => dataBytes / MiB / s;
  const copies = Array.from({ length: runs }, nbdcopy);
  const bestCopy = Math.min(...copies.map((c) => c.seconds));
  console.log(`\ndata to read: ${(dataBytes / MiB).toFixed(0)} MiB`);
  console.log(`nbdcopy → null:   best ${rate(bestCopy).toFixed(0)} MiB/s (runs: ${copies.map((c) => rate(c.seconds).toFixed(0)).join(', ')}), peak RSS ${copies[0].maxRssMiB} MiB`);
  const configs = [
    [2, 8, 1, 'reuse'], [4, 8, 1, 'reuse'], [1, 8, 1, 'reuse'], [2, 16, 2, 'reuse'], [2, 8, 4, 'reuse'], [2, 8, 1, 'fresh'],
  ];
  for (const [c, q, m, reuse] of configs) {
    const results = Array.from({ length: runs }, () => ours(c, q, m, reuse));
    const best = Math.min(...results.map((r) => r.seconds));
    console.log(`fleece conns=${results[0].connections} concurrency=${q} request=${m}MiB buffers=${reuse}: best ${rate(best).toFixed(0)} MiB/s = ${(100 * bestCopy / best).toFixed(0)} % of nbdcopy (runs: ${results.map((r) => rate(r.seconds).toFixed(0)).join(', ')}), peak RSS ${Math.max(...results.map((r) => r.maxRssMiB))} MiB`);
  }
} finally {
  server.kill('SIGTERM');
}
