#!/usr/bin/env node
// The fixed cost of an incremental (issue 11): `node scripts/bench-fixed-cost.mjs CLI...` backs up a 256 MiB qcow2 on a
// bare QEMU (QMP) with each CLI build (full, then per round 2.5 MiB written and an incremental), the builds taking turns
// on the same QEMU, and prints each incremental's wall time, fleece's own duration, CPU and peak RSS, then medians.
// An incremental of ~0 bytes is nearly all fixed cost: start-up, QMP, set-up, commit. ROUNDS (default 5); PROF=DIR adds
// --cpu-prof; WRAP runs node under a command (e.g. "strace -f -c -e trace=fsync,fdatasync -o /tmp/x"); EXTRA adds `fleece backup` flags (e.g. "--log-file /tmp/x.log -v" for timestamps of every QMP command).
// PLANE=libvirt runs the same through a private libvirtd (the test harness's) with a paused domain, `--connect`.
// SIZE (default 256M) is the disk's virtual size, FILL (default half of it) how much of it holds data (qemu-img units).
// Needs `npx tsc -p tsconfig.json` first (uses dist/test/harness). Not part of the test suite.
import { spawn, execFileSync } from 'node:child_process';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
const { startQemuSystem } = await import(new URL('../dist/test/harness/qemu.js', import.meta.url).href);
const work = await mkdtemp(join(tmpdir(), 'fleece-bench-fixed-'));
await mkdir(join(work, 'qemu'), { recursive: true });
const img = join(work, 'vda.qcow2');
const size = process.env.SIZE ?? '256M';
execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', img, size]);
const mib = (s) => { const m = /^(\d+)([MG])$/.exec(s); if (!m) throw new Error(`${s}: give a size in M or G`); return Number(m[1]) * (m[2] === 'G' ? 1024 : 1); };
const fillMiB = process.env.FILL ? mib(process.env.FILL) : Math.floor(mib(size) / 2);
// qemu-io writes at most 2 GiB at once: 1 GiB a command
const writes = [];
for (let at = 0; at < fillMiB; at += 1024) writes.push('-c', `write -P 0x5a ${at}M ${Math.min(1024, fillMiB - at)}M`);
execFileSync('qemu-io', ['-f', 'qcow2', ...writes, img], { stdio: 'ignore' });
const clis = process.argv.slice(2);
if (clis.length === 0) clis.push('dist/src/cli/main.js');
const rounds = Number(process.env.ROUNDS ?? 5);
const prof = process.env.PROF;
const wrap = (process.env.WRAP ?? '').split(' ').filter(Boolean);
function run(cli, args) {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const c = spawn('/usr/bin/time', ['-f', '%e %U %S %M', ...wrap, 'node', ...(prof ? ['--cpu-prof', '--cpu-prof-dir', prof] : []), cli, ...args], { env: { ...process.env, FLEECE_RUN_DIR: join(work, 'run') }, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '', err = '', printed = 0;
    c.stdout.on('data', (d) => { out += d; printed = performance.now(); }); c.stderr.on('data', (d) => (err += d));
    c.on('close', (code) => {
      if (code !== 0) return reject(new Error(`${cli} ${args.join(' ')}: ${code} ${err}`));
      const t = err.trim().split('\n').pop().split(' ').map(Number);
      resolve({ exitLag: (performance.now() - printed) / 1000, seconds: (performance.now() - t0) / 1000, cpu: t[1] + t[2], rssMiB: t[3] / 1024, json: JSON.parse(out) });
    });
  });
}
const libvirt = process.env.PLANE === 'libvirt';
let qemu, h, domain;
if (libvirt) {
  const lv = await import(new URL('../dist/test/harness/libvirt.js', import.meta.url).href);
  process.env.FLEECE_TEST_LIBVIRT_DIR = join(work, 'libvirt');
  h = await lv.dedicatedLibvirt('bench-fixed');
  domain = await lv.defineTestDomain(h, { name: `fleece-test-bench-fixed-${process.pid}`, disks: [{ target: 'vda', path: img, format: 'qcow2' }], start: false });
  await h.virsh(['start', '--paused', domain.name]);
  qemu = { guestWrite: (target, command) => domain.qemuIo(target, command), stop: () => h.stop() };
} else {
  qemu = await startQemuSystem({ disks: [{ path: img, format: 'qcow2', target: 'vda' }], dir: join(work, 'qemu'), extraQmpSockets: 1 });
}
const cliTarget = () => (libvirt ? [domain.name, '--connect', h.uri] : ['inc', '--qmp', qemu.extraQmpPaths[0]]);
const res = Object.fromEntries(clis.map((c) => [c, []]));
try {
  for (const [i, cli] of clis.entries()) {
    const base = ['backup', ...cliTarget(), '--repo', join(work, `repo-${i}`), '--state-dir', join(work, `state-${i}`), '--json', '--compression', 'none', ...(process.env.EXTRA ?? '').split(' ').filter(Boolean)];
    await run(cli, [...base, '--full']);
  }
  for (let r = 0; r < rounds; r++) {
    await qemu.guestWrite('vda', `write -P ${r + 1} ${r * 4}M 2560k`);
    await qemu.guestWrite('vda', 'flush');
    for (const [i, cli] of clis.entries()) {
      const base = ['backup', ...cliTarget(), '--repo', join(work, `repo-${i}`), '--state-dir', join(work, `state-${i}`), '--json', '--compression', 'none', ...(process.env.EXTRA ?? '').split(' ').filter(Boolean)];
      const x = await run(cli, base);
      if (x.json.level !== 'incremental') throw new Error('not incremental');
      res[cli].push(x);
      console.log(`round ${r} ${cli}: ${x.seconds.toFixed(2)} s wall, own ${(x.json.durationMs / 1000).toFixed(2)} s, cpu ${x.cpu.toFixed(2)} s, rss ${x.rssMiB.toFixed(0)} MiB, read ${(x.json.disks[0].bytesRead / 1048576).toFixed(1)} MiB, exit ${x.exitLag.toFixed(2)} s after the summary`);
    }
  }
} finally {
  await qemu.stop();
  await rm(work, { recursive: true, force: true });
}
const med = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
for (const c of clis) console.log(`${c}: median wall ${med(res[c].map((x) => x.seconds)).toFixed(2)} s, own ${med(res[c].map((x) => x.json.durationMs / 1000)).toFixed(2)} s, cpu ${med(res[c].map((x) => x.cpu)).toFixed(2)} s`);
