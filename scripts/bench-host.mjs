// Helpers of `npm run bench` (scripts/bench.mjs): child processes it runs and tracks (so Ctrl-C can end them), facts
// about the host (CPU model, the disk's direct-write rate, fleece's start-up times), CPU accounting of other processes,
// and medians. Plain Node, no build needed.
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';

export const MiB = 1024 * 1024;
const TIME_BINARY = '/usr/bin/time';

/** Child processes running now (pid → name); cleanup ends them by pid. */
const live = new Map();

/**
 * Runs `command args` to its end (no stdin, C locale) and resolves whatever its status: { code, signal, stdout, stderr,
 * seconds, peakRss } (peakRss: bytes, from `/usr/bin/time -v` when `timeV` and it exists, else 0). Rejects only when it
 * cannot be started.
 */
export function run(command, args, { env, timeV = false, cwd } = {}) {
  const useTime = timeV && existsSync(TIME_BINARY);
  const timeFile = useTime ? join(mkdtempSync(join(tmpdir(), 'fleece-bench-time-')), 'time.txt') : undefined;
  const [cmd, argv] = useTime ? [TIME_BINARY, ['-v', '-o', timeFile, command, ...args]] : [command, args];
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const child = spawn(cmd, argv, { stdio: ['ignore', 'pipe', 'pipe'], env: { LC_ALL: 'C', ...(env ?? process.env) }, ...(cwd ? { cwd } : {}) });
    live.set(child.pid, command);
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => { stdout += d; });
    child.stderr.on('data', (d) => { stderr += d; if (stderr.length > 1 << 20) stderr = stderr.slice(-(1 << 19)); });
    child.once('error', (error) => { live.delete(child.pid); reject(new Error(`could not run ${command}: ${error.message}`)); });
    child.once('close', (code, signal) => {
      const seconds = (performance.now() - t0) / 1000;
      live.delete(child.pid);
      let peakRss = 0;
      if (timeFile) {
        try {
          const text = readFileSync(timeFile, 'utf8');
          peakRss = Number(/Maximum resident set size \(kbytes\): (\d+)/.exec(text)?.[1] ?? 0) * 1024;
          const status = /Exit status: (\d+)/.exec(text);
          if (status) code = Number(status[1]);
        } catch { /* time wrote nothing: the command was killed */ }
        rmSync(dirname(timeFile), { recursive: true, force: true });
      }
      resolve({ code, signal, stdout, stderr, seconds, peakRss });
    });
  });
}

/** run(), throwing an Error with the command line and the tail of its output unless it exited 0. */
export async function mustRun(command, args, options) {
  const r = await run(command, args, options);
  if (r.code !== 0) {
    const tail = (r.stderr.trim() || r.stdout.trim()).split('\n').slice(-25).join('\n');
    throw new Error(`${command} ${args.join(' ')} ${r.signal ? `was killed by ${r.signal}` : `exited ${r.code}`}:\n${tail}`);
  }
  return r;
}

/** SIGTERM to every child still running, SIGKILL after `graceMs`; resolves once they have gone. */
export async function endChildren(graceMs = 5000) {
  const signalAll = (sig) => { for (const pid of live.keys()) { try { process.kill(pid, sig); } catch { /* gone */ } } };
  signalAll('SIGTERM');
  const deadline = Date.now() + graceMs;
  while (live.size > 0 && Date.now() < deadline) await sleep(50);
  if (live.size > 0) {
    signalAll('SIGKILL');
    const killDeadline = Date.now() + 2000;
    while (live.size > 0 && Date.now() < killDeadline) await sleep(50);
  }
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Pids of processes named `comm` whose command line mentions `needle` (e.g. a qemu-nbd a tool forked on our files). */
export function pidsMentioning(comm, needle) {
  const found = [];
  for (const pid of readdirSync('/proc').filter((n) => /^\d+$/.test(n))) {
    try {
      if (readFileSync(`/proc/${pid}/comm`, 'utf8').trim() !== comm) continue;
      if (readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(needle)) found.push(Number(pid));
    } catch { /* gone */ }
  }
  return found;
}

/** `sync FILE…`: fsync of each file and directory named (durable without flushing what other processes wrote). */
export async function syncPaths(paths) {
  const r = await mustRun('sync', paths);
  return r.seconds;
}

/** The CPU's model name as lscpu prints it. */
export async function cpuModel() {
  const r = await run('lscpu', []);
  return /^Model name:\s*(.+)$/m.exec(r.stdout)?.[1]?.trim() ?? cpus()[0]?.model ?? 'unknown CPU';
}

/** The disk's direct-write rate in `dir`: fio when installed, else dd of 1 GiB with oflag=direct (then removed). */
export async function directWriteRate(dir) {
  const file = join(dir, 'direct-write.test');
  try {
    const fio = await run('fio', ['--version']).catch(() => undefined);
    if (fio?.code === 0) {
      const r = await mustRun('fio', ['--name=direct-write', `--filename=${file}`, '--rw=write', '--bs=4M', '--size=1G', '--direct=1',
        '--ioengine=libaio', '--iodepth=4', '--end_fsync=1', '--output-format=json']);
      const job = JSON.parse(r.stdout).jobs[0];
      return { tool: `fio (${fio.stdout.trim()}, 4 MiB writes, iodepth 4, O_DIRECT, 1 GiB)`, mibps: job.write.bw_bytes / MiB };
    }
    const r = await mustRun('dd', ['if=/dev/zero', `of=${file}`, 'bs=4M', 'count=256', 'oflag=direct', 'conv=fsync']);
    return { tool: 'dd if=/dev/zero bs=4M count=256 oflag=direct conv=fsync (1 GiB)', mibps: 1024 / r.seconds };
  } finally {
    rmSync(file, { force: true });
  }
}

/** Median of a list of numbers (mean of the middle two for an even count); NaN for none. */
export function median(values) {
  const s = values.filter((v) => Number.isFinite(v)).sort((a, b) => a - b);
  if (s.length === 0) return NaN;
  const mid = Math.floor(s.length / 2);
  return s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
}

/**
 * Wall time of `node cli ...args` (a child process, output discarded), median of `times` runs; the first run is
 * made once before and not counted (it warms the page cache, as on any host where fleece was run before).
 */
export async function startupTime(cli, args, env, times = 5) {
  await mustRun(process.execPath, [cli, ...args], { env });
  const seconds = [];
  for (let i = 0; i < times; i++) seconds.push((await mustRun(process.execPath, [cli, ...args], { env })).seconds);
  return { median: median(seconds), min: Math.min(...seconds), max: Math.max(...seconds) };
}

// ---- what else the machine is doing ----------------------------------------------------------------------------

/** CPU ticks per process (utime + stime), the machine's busy/total ticks and this process's (with waited children). */
export function cpuSnapshot() {
  const procs = new Map();
  for (const pid of readdirSync('/proc').filter((n) => /^\d+$/.test(n))) {
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      const comm = stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')'));
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      procs.set(pid, { comm, ticks: Number(fields[11]) + Number(fields[12]) });
    } catch { /* gone */ }
  }
  const cpu = readFileSync('/proc/stat', 'utf8').split('\n')[0].split(/\s+/).slice(1).map(Number);
  const self = readFileSync('/proc/self/stat', 'utf8');
  const f = self.slice(self.lastIndexOf(')') + 2).split(' ').map(Number);
  return { procs, total: cpu.reduce((a, b) => a + b, 0), idle: cpu[3] + cpu[4], ours: f[11] + f[12] + f[13] + f[14] };
}

/**
 * The CPU other processes use while the bench runs, in % of one core: the machine's busy time minus this process and
 * its waited children (fleece, virtnbdbackup, nbdcopy, qemu-img, the bare QEMU once stopped) minus the processes that
 * are ours without being waited for (libvirtd, the domain's QEMU, a qemu-nbd a tool forked): those whose command line
 * mentions `needle` (the work directory) outside this process's tree, sampled every second.
 */
export function startCpuAccount(needle) {
  const first = cpuSnapshot();
  const seen = new Map(); // pid → { from, last } ticks
  const sample = () => {
    const parents = new Map();
    const ticks = new Map();
    for (const pid of readdirSync('/proc').filter((n) => /^\d+$/.test(n))) {
      try {
        const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
        const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
        parents.set(pid, fields[1]);
        ticks.set(pid, Number(fields[11]) + Number(fields[12]));
      } catch { /* gone */ }
    }
    const ours = (pid) => {
      for (let p = pid, depth = 0; p && p !== '0' && depth < 64; p = parents.get(p), depth++) if (p === String(process.pid)) return true;
      return false;
    };
    for (const [pid, t] of ticks) {
      if (ours(pid)) continue;
      let cmdline;
      try { cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8'); } catch { continue; }
      if (!cmdline.includes(needle)) continue;
      const entry = seen.get(pid);
      if (entry) entry.last = t;
      else seen.set(pid, { from: first.procs.has(pid) ? (first.procs.get(pid)?.ticks ?? t) : 0, last: t });
    }
  };
  const timer = setInterval(sample, 1000);
  timer.unref();
  return {
    /** Stops sampling; what other processes used since the start, in % of one core. */
    stop() {
      sample();
      clearInterval(timer);
      const last = cpuSnapshot();
      const ticks = last.total - first.total;
      if (ticks <= 0) return 0;
      const busy = ticks - (last.idle - first.idle);
      const tracked = [...seen.values()].reduce((sum, e) => sum + Math.max(0, e.last - e.from), 0);
      return Math.max(0, (100 * (busy - (last.ours - first.ours) - tracked)) / (ticks / cpus().length));
    },
  };
}

/** What else this machine is doing, measured over one second: CPU busy, load average, the busiest other processes. */
export async function machineActivity() {
  const a = cpuSnapshot();
  await sleep(1000);
  const b = cpuSnapshot();
  const ticks = b.total - a.total;
  const perCore = ticks / cpus().length;
  const busyPercent = ticks > 0 ? 100 * (1 - (b.idle - a.idle) / ticks) * cpus().length : 0;
  const busy = [...b.procs].map(([pid, p]) => ({ pid, comm: p.comm, pct: (100 * (p.ticks - (a.procs.get(pid)?.ticks ?? p.ticks))) / perCore }))
    .filter((p) => p.pct >= 5 && Number(p.pid) !== process.pid).sort((x, y) => y.pct - x.pct).slice(0, 5)
    .map((p) => `${p.comm} ${p.pct.toFixed(0)} %`);
  return { load: loadavg().map((l) => l.toFixed(2)).join(' '), cpuBusy: `${busyPercent.toFixed(0)} % of one core`, busy };
}
