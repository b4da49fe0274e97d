#!/usr/bin/env node
// `npm run bench:md5`: MD5 throughput on one thread, node:crypto (OpenSSL, one buffer at a time) vs md5Many
// (native/md5-multi: several buffers at once), over 8 buffers of 4 MiB (a Cinder object each); medians of 5 runs.
// Also md5Many over 2, 3 and 4 buffers (what a repository worker usually has queued) and each kernel this CPU runs.
// MB/s by wall time and by the process's CPU time (this 2-core host is shared: CPU time is the steadier figure).
// Env: FLEECE_BENCH_MD5_RUNS (default 5). Needs the library built (npm install, or node scripts/build-md5-multi.mjs).
import { createHash, randomFillSync } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { cpus } from 'node:os';

const require = createRequire(import.meta.url);
const { md5Many, available } = require('../native/md5-multi/md5-multi.cjs');
const MiB = 1024 * 1024;
const runs = Number(process.env.FLEECE_BENCH_MD5_RUNS ?? 5);
const buffers = Array.from({ length: 8 }, () => randomFillSync(Buffer.allocUnsafe(4 * MiB)));
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

/** Medians of `runs` timings of fn over `bytes`: { wall, cpu } in MB/s (10^6 bytes per second). */
function measure(fn, bytes) {
  fn(); // warm up (page faults, JIT, library load)
  const wall = [];
  const cpu = [];
  for (let i = 0; i < runs; i++) {
    const c0 = process.cpuUsage();
    const t0 = process.hrtime.bigint();
    fn();
    const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
    const c = process.cpuUsage(c0);
    wall.push(bytes / 1e6 / seconds);
    cpu.push(bytes / 1e6 / ((c.user + c.system) / 1e6));
  }
  return { wall: median(wall), cpu: median(cpu) };
}

const model = /^model name\s*:\s*(.*)$/m.exec(readFileSync('/proc/cpuinfo', 'utf8'))?.[1] ?? cpus()[0]?.model ?? 'unknown CPU';
const a = available();
console.log(`${model}, ${cpus().length} cores, Node ${process.version}; md5-multi: ${a.available ? `kernels ${a.kernels.join(', ')} (default ${a.kernel})` : `not available (${a.why})`}`);
console.log(`medians of ${runs} runs, 1 thread; MB/s by wall time / by CPU time\n`);

const rows = [];
const show = (what, r, base) => {
  rows.push(r);
  const ratio = base ? `  ${(r.cpu / base.cpu).toFixed(2)}× (CPU time)` : '';
  console.log(`${what.padEnd(44)} ${r.wall.toFixed(0).padStart(6)} / ${r.cpu.toFixed(0).padStart(6)} MB/s${ratio}`);
};

const base = measure(() => { for (const b of buffers) createHash('md5').update(b).digest(); }, 8 * 4 * MiB);
show('node:crypto md5, 8 × 4 MiB one after another', base);
if (a.available) {
  for (const kernel of a.kernels) {
    for (const n of [8, 4, 3, 2]) {
      const some = buffers.slice(0, n);
      show(`md5Many ${kernel}, ${n} × 4 MiB in one call`, measure(() => md5Many(some, kernel), n * 4 * MiB), base);
    }
  }
}
