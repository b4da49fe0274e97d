#!/usr/bin/env node
// What recording dirty bitmaps cost the guest's writes: a QEMU (qemu-system-x86_64, TCG) with one qcow2 disk holding
// 0, 1 or 10 enabled persistent bitmaps (as fleece's checkpoints are), written from the guest device's side with
// HMP `qemu-io -d vda "write …"` over QMP human-monitor-command, and the same image under `qemu-img bench` (the block
// layer alone, no monitor round trip per request). Rounds alternate the variants side by side, so the ratios hold
// on a loaded machine; the absolute MB/s do not. Not a test: prints a table and a JSON line.
//
//   node scripts/bench-bitmaps.mjs [--rounds 3] [--writes 1024] [--size 64k] [--bench-count 100000]
import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { connect } from 'node:net';
import { cpus, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';

const arg = (name, fallback) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : fallback;
};
const ROUNDS = Number(arg('rounds', '3'));
const WRITES = Number(arg('writes', '1024'));
const SIZE = arg('size', '64k');
const SIZE_BYTES = Number.parseInt(SIZE, 10) * (SIZE.endsWith('k') ? 1024 : SIZE.endsWith('M') ? 1024 * 1024 : 1);
const BENCH_COUNT = Number(arg('bench-count', '100000'));
const DISK = 256 * 1024 * 1024;
const VARIANTS = [0, 1, 10];

const dir = mkdtempSync(join(tmpdir(), 'fleece-bench-bitmaps-'));
const run = (cmd, args) => execFileSync(cmd, args, { encoding: 'utf8' });

/** A preallocated qcow2 (writes allocate nothing) with `n` enabled persistent bitmaps of 64 KiB granularity. */
function image(n) {
  const path = join(dir, `disk-${n}.qcow2`);
  rmSync(path, { force: true });
  run('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'preallocation=falloc', path, String(DISK)]);
  for (let i = 0; i < n; i++) run('qemu-img', ['bitmap', '--add', '--granularity', '65536', path, `fleece-bench-${i}`]);
  return path;
}

/** A minimal QMP client: one command at a time. */
async function qmpConnect(path) {
  for (let i = 0; ; i++) {
    try {
      const sock = await new Promise((resolve, reject) => {
        const s = connect(path, () => resolve(s));
        s.once('error', reject);
      });
      let buffer = '';
      const waiting = [];
      sock.on('data', (chunk) => {
        buffer += chunk;
        let nl;
        while ((nl = buffer.indexOf('\n')) >= 0) {
          const msg = JSON.parse(buffer.slice(0, nl));
          buffer = buffer.slice(nl + 1);
          if ('return' in msg || 'error' in msg) waiting.shift()?.(msg);
        }
      });
      const execute = (command, args) => new Promise((resolve, reject) => {
        waiting.push((msg) => (msg.error ? reject(new Error(msg.error.desc)) : resolve(msg.return)));
        sock.write(`${JSON.stringify({ execute: command, ...(args ? { arguments: args } : {}) })}\n`);
      });
      await delay(50);
      await execute('qmp_capabilities');
      return { execute, close: () => sock.destroy() };
    } catch (error) {
      if (i > 100) throw error;
      await delay(100);
    }
  }
}

/** Guest-side writes through the device's BlockBackend: MB/s over WRITES requests of SIZE, spread over the disk. */
async function guestWrites(n) {
  const path = image(n);
  const qmpPath = join(dir, `qmp-${n}.sock`);
  const qemu = spawn('qemu-system-x86_64', [
    '-S', '-nodefaults', '-display', 'none', '-machine', 'pc,accel=tcg', '-m', '64', '-qmp', `unix:${qmpPath},server=on,wait=off`,
    '-blockdev', `{"driver":"qcow2","node-name":"fmt","file":{"driver":"file","filename":"${path}","cache":{"direct":false}}}`,
    '-device', 'virtio-blk-pci,drive=fmt,id=vda',
  ], { stdio: ['ignore', 'ignore', 'inherit'] });
  const qmp = await qmpConnect(qmpPath);
  try {
    const blocks = await qmp.execute('query-block');
    const bitmaps = blocks[0]?.inserted?.['dirty-bitmaps'] ?? [];
    if (bitmaps.length !== n || bitmaps.some((b) => !b.recording)) throw new Error(`expected ${n} recording bitmaps, QEMU has ${JSON.stringify(bitmaps)}`);
    const stride = Math.floor(DISK / WRITES / SIZE_BYTES) * SIZE_BYTES || SIZE_BYTES;
    const started = process.hrtime.bigint();
    for (let i = 0; i < WRITES; i++) {
      const offset = ((i * stride) % (DISK - SIZE_BYTES));
      await qmp.execute('human-monitor-command', { 'command-line': `qemu-io -d vda "write -P 0x${((i % 200) + 16).toString(16)} ${offset} ${SIZE}"` });
    }
    await qmp.execute('human-monitor-command', { 'command-line': 'qemu-io -d vda "flush"' });
    const seconds = Number(process.hrtime.bigint() - started) / 1e9;
    await qmp.execute('quit').catch(() => undefined);
    return (WRITES * SIZE_BYTES) / seconds / 1e6;
  } finally {
    qmp.close();
    await new Promise((resolve) => (qemu.exitCode !== null ? resolve() : qemu.once('exit', resolve)));
  }
}

/** The block layer alone: qemu-img bench 4 KiB writes (the bitmaps load enabled when the image opens read-write). */
function blockLayer(n) {
  const path = image(n);
  const out = run('qemu-img', ['bench', '-w', '-f', 'qcow2', '-t', 'writeback', '-s', '4096', '-c', String(BENCH_COUNT), '-d', '16', '-S', '65536', path]);
  const seconds = Number(/Run completed in ([\d.]+) seconds/.exec(out)?.[1]);
  const bitmaps = JSON.parse(run('qemu-img', ['info', '--output=json', path]))['format-specific']?.data?.bitmaps ?? [];
  if (bitmaps.length !== n) throw new Error(`expected ${n} bitmaps in ${path} after the bench, found ${bitmaps.length}`);
  return (BENCH_COUNT * 4096) / seconds / 1e6;
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const results = { guest: Object.fromEntries(VARIANTS.map((n) => [n, []])), block: Object.fromEntries(VARIANTS.map((n) => [n, []])) };
const loadBefore = loadavg();
try {
  // A first QEMU start warms the page cache and the binaries: not counted.
  await guestWrites(1);
  blockLayer(1);
  for (let round = 0; round < ROUNDS; round++) {
    for (const n of VARIANTS) {
      results.guest[n].push(await guestWrites(n));
      results.block[n].push(blockLayer(n));
    }
  }
} finally {
  rmSync(dir, { recursive: true, force: true });
}
const qemuVersion = run('qemu-system-x86_64', ['--version']).split('\n')[0];
const host = { cpus: cpus().length, model: cpus()[0]?.model, qemu: qemuVersion, loadBefore: loadBefore.map((x) => x.toFixed(2)), loadAfter: loadavg().map((x) => x.toFixed(2)) };
console.log(`host: ${host.cpus} × ${host.model}; ${host.qemu}; load average ${host.loadBefore.join(' ')} → ${host.loadAfter.join(' ')}`);
console.log(`${ROUNDS} rounds, variants side by side; medians (MB/s) and the ratio to 1 bitmap`);
console.log('bitmaps  guest qemu-io (HMP, %s × %s)  ratio  |  qemu-img bench (4 KiB × %d, depth 16)  ratio', WRITES, SIZE, BENCH_COUNT);
const summary = {};
for (const n of VARIANTS) {
  const g = median(results.guest[n]);
  const b = median(results.block[n]);
  const g1 = median(results.guest[1]);
  const b1 = median(results.block[1]);
  summary[n] = { guestMBps: Number(g.toFixed(1)), guestRatioTo1: Number((g / g1).toFixed(3)), blockMBps: Number(b.toFixed(1)), blockRatioTo1: Number((b / b1).toFixed(3)) };
  console.log(`${String(n).padStart(7)}  ${g.toFixed(1).padStart(30)}  ${(g / g1).toFixed(3).padStart(5)}  |  ${b.toFixed(1).padStart(37)}  ${(b / b1).toFixed(3).padStart(5)}`);
}
console.log(JSON.stringify({ host, rounds: ROUNDS, writes: WRITES, size: SIZE, benchCount: BENCH_COUNT, summary, raw: results }));
