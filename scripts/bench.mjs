#!/usr/bin/env node
// `npm run bench`: fleece backup (full none / full zstd / incremental) and restore on a multi-GiB guest disk, against the
// two limits of this machine measured in the same run (nbdcopy reading a fleecing export, Cinder hashing on all cores).
// Prints the figures and writes them to BENCHMARKS.md. Env: FLEECE_BENCH_SIZE (default 4G), FLEECE_BENCH_DIR (parent of
// the work dir), FLEECE_BENCH_KEEP=1 (keep it), FLEECE_BENCH_LIMITS_ONLY=1 (measure the two limits only, write nothing).
import { spawnSync, execFileSync } from 'node:child_process';
import { existsSync, readFileSync, rmSync, statSync, writeFileSync, readdirSync } from 'node:fs';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { availableParallelism, cpus, loadavg, tmpdir, totalmem } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
process.chdir(root);
const MiB = 1024 * 1024;
const OBJECT_SIZE = 4 * MiB; // Cinder's chunk size: one md5 per object
const SHA_BLOCK = 32 * 1024; // Cinder's sha256 block size
const VM = 'bench';
const LIMITS_ONLY = process.env.FLEECE_BENCH_LIMITS_ONLY === '1';
/** The CLI benchmarked: FLEECE_CLI (another build) or this tree's. */
const CLI = process.env.FLEECE_CLI ?? 'dist/src/cli/main.js';
/** The work directory, removed on exit and on Ctrl-C (unless FLEECE_BENCH_KEEP=1). */
let work;

const log = (text) => process.stdout.write(`${text}\n`);

/** True when a compiled file is missing or older than a TypeScript source. */
function distIsStale() {
  const stamp = 'dist/scripts/demo/run-fleece.js';
  if (!existsSync(stamp) || (!LIMITS_ONLY && !existsSync(CLI))) return true;
  const built = statSync(stamp).mtimeMs;
  const newer = (dir) => readdirSync(dir, { withFileTypes: true }).some((e) => {
    const path = join(dir, e.name);
    if (e.isDirectory()) return e.name !== 'node_modules' && newer(path);
    return e.name.endsWith('.ts') && statSync(path).mtimeMs > built;
  });
  return ['src', 'native', 'scripts', 'test'].some((d) => existsSync(d) && newer(d));
}

if (distIsStale()) {
  log('dist/ is missing or older than the sources: npm run build');
  const built = spawnSync('npm', ['run', '--silent', 'build'], { stdio: 'inherit' });
  if (built.status !== 0) {
    if ((!LIMITS_ONLY && !existsSync(CLI)) || !existsSync('dist/scripts/demo/run-fleece.js')) {
      console.error('the build failed and dist/ lacks the CLI or the demo helpers: fix the errors above');
      process.exit(1);
    }
    log('warning: the typecheck reported errors (above); benchmarking the JavaScript it emitted');
  }
}

const { createMixedDisk, parseSize } = await import('../dist/scripts/demo/mixed-disk.js');
const { planGuestActivity, writeRandomPatternFile, coveredBytes } = await import('../dist/scripts/demo/guest-activity.js');
const { rawCopy, sha256File } = await import('../dist/scripts/demo/reference.js');
const { runFleece, assertSucceeded, describeRun } = await import('../dist/scripts/demo/run-fleece.js');
const { formatBytes, formatTable } = await import('../dist/scripts/demo/table.js');
const { startQemuSystem } = await import('../dist/test/harness/qemu.js');
const { queryDisks } = await import('../dist/src/qemu/block-graph.js');
const { startPullBackup } = await import('../dist/src/backup/pull-backup.js');
const { BackupRegistry } = await import('../dist/src/backup/backup-registry.js');

const rate = (bytes, seconds) => bytes / MiB / seconds;
const fmtRate = (r) => `${r.toFixed(0)} MiB/s`;
const fmtMiB = (b) => `${(b / MiB).toFixed(0)} MiB`;

/** CPU ticks per process (utime + stime) and the machine's busy/total ticks, from /proc. */
function cpuSnapshot() {
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
  const idle = cpu[3] + cpu[4];
  const self = readFileSync('/proc/self/stat', 'utf8');
  const f = self.slice(self.lastIndexOf(')') + 2).split(' ').map(Number);
  // This process and every child it waited for (fleece, nbdcopy, qemu-img, QEMU once stopped).
  const ours = f[11] + f[12] + f[13] + f[14];
  return { procs, total: cpu.reduce((a, b) => a + b, 0), idle, ours };
}

/** CPU that other processes used between two snapshots, in % of one core (ours: this process and its waited children). */
function othersCpu(a, b) {
  const ticks = b.total - a.total;
  if (ticks <= 0) return 0;
  const busy = ticks - (b.idle - a.idle);
  return Math.max(0, 100 * (busy - (b.ours - a.ours)) / (ticks / cpus().length));
}

/** What else this machine is doing, measured over one second: busy %, load average, the busiest other processes. */
async function machineActivity() {
  const a = cpuSnapshot();
  await new Promise((resolve) => setTimeout(resolve, 1000));
  const b = cpuSnapshot();
  const ticks = b.total - a.total;
  const busyPercent = ticks > 0 ? 100 * (1 - (b.idle - a.idle) / ticks) * cpus().length : 0;
  const perCore = ticks / cpus().length;
  const busy = [...b.procs].map(([pid, p]) => ({ pid, comm: p.comm, pct: 100 * (p.ticks - (a.procs.get(pid)?.ticks ?? p.ticks)) / perCore }))
    .filter((p) => p.pct >= 5 && Number(p.pid) !== process.pid).sort((x, y) => y.pct - x.pct).slice(0, 5)
    .map((p) => `${p.comm} ${p.pct.toFixed(0)} %`);
  return { load: loadavg().map((l) => l.toFixed(2)).join(' '), cpuBusy: `${busyPercent.toFixed(0)} % of one core`, busy };
}

/** nbdcopy of the export to a file (and to null:), best of `runs`. */
function nbdcopy(uri, destination, runs) {
  const times = [];
  for (let i = 0; i < runs; i++) {
    if (destination !== 'null:') execFileSync('truncate', ['-s', '0', destination]);
    const t0 = performance.now();
    const r = spawnSync('nbdcopy', [uri, destination], { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`nbdcopy ${uri} ${destination} failed: ${r.stderr}`);
    times.push((performance.now() - t0) / 1000);
  }
  return Math.min(...times);
}

/** Aggregate hashing rate on all cores: sha256 per 32 KiB + md5 per 4 MiB over the allocated data of `file`. */
async function hashLimit(file, regions, threads) {
  const pieces = [];
  for (const r of regions) {
    if (r.kind === 'hole' || r.kind === 'zero-clusters') continue;
    for (let at = 0; at < r.length; at += OBJECT_SIZE) pieces.push([r.offset + at, Math.min(OBJECT_SIZE, r.length - at)]);
  }
  const shares = Array.from({ length: threads }, (_, i) => pieces.filter((_, j) => j % threads === i));
  const results = await Promise.all(shares.map((share) => new Promise((resolve, reject) => {
    const worker = new Worker(new URL('./bench/hash-worker.mjs', import.meta.url), {
      workerData: { file, pieces: share, objectSize: OBJECT_SIZE, shaBlockSize: SHA_BLOCK },
    });
    worker.once('message', resolve);
    worker.once('error', reject);
  })));
  const bytes = results.reduce((s, r) => s + r.bytes, 0);
  return { bytes, mibps: results.reduce((s, r) => s + rate(r.bytes, r.hashSeconds), 0) };
}

async function backup(work, qmpPath, repo, extra) {
  const args = ['backup', VM, '--qmp', qmpPath, '--repo', repo, '--state-dir', join(work, 'state'), '--json', ...extra];
  log(`  $ ${describeRun(args)}`);
  const run = await runFleece(args, { output: 'capture-stdout', timeV: true, env: { ...process.env, FLEECE_RUN_DIR: join(work, 'run') } });
  assertSucceeded(run);
  const report = JSON.parse(run.stdout);
  const bytesRead = report.bytesRead ?? report.disks?.reduce((s, d) => s + d.bytesRead, 0) ?? 0;
  const bytesStored = report.bytesStored ?? report.disks?.reduce((s, d) => s + d.bytesStored, 0) ?? 0;
  const result = {
    level: report.level, backupId: report.disks?.[0]?.backupId, bytesRead, bytesStored,
    seconds: run.seconds, cliSeconds: (report.durationMs ?? run.seconds * 1000) / 1000, peakRss: run.peakRssBytes, rssSource: run.rssSource,
  };
  log(`    ${result.level}: read ${fmtMiB(bytesRead)}, stored ${fmtMiB(bytesStored)}, ${run.seconds.toFixed(2)} s `
    + `(${fmtRate(rate(bytesRead, run.seconds))}), peak RSS ${fmtMiB(run.peakRssBytes)}`);
  return result;
}

function markdown(f) {
  const row = (cells) => `| ${cells.join(' | ')} |`;
  const lines = [
    `Run of ${f.date} on ${f.machine.cpu}, ${f.machine.nproc} cores, ${f.machine.memGiB} GiB RAM, Node ${process.versions.node}, `
      + `${f.machine.qemu}, ${f.machine.nbdcopy}. Before the run: CPU in use ${f.activity.cpuBusy}, load average ${f.activity.load}`
      + `${f.activity.busy.length ? `; busy processes: ${f.activity.busy.join(', ')}` : '; nothing else busy'}. `
      + `During the run, other processes used ${f.activity.during} on average.`,
    '',
    `Disk: ${formatBytes(f.disk.size)} virtual qcow2, ${formatBytes(f.disk.allocated)} allocated (${formatBytes(f.disk.totals.random)} random, `
      + `${formatBytes(f.disk.totals.text)} text, ${formatBytes(f.disk.totals['zero-data'])} zero bytes; plus ${formatBytes(f.disk.totals['zero-clusters'])} `
      + `zero clusters and ${formatBytes(f.disk.totals.hole)} holes). The guest then wrote ${formatBytes(f.changed)} before the incremental.`,
    '',
    row(['what', 'data', 'time', 'MiB/s', 'vs lower limit', 'stored', 'peak RSS']),
    row(['---', '---:', '---:', '---:', '---:', '---:', '---:']),
    row(['limit: nbdcopy fleecing export → file', fmtMiB(f.disk.allocated), `${f.nbdcopyFile.toFixed(2)} s`, fmtRate(f.nbdcopyRate), '', '', '']),
    row(['limit: nbdcopy fleecing export → null:', fmtMiB(f.disk.allocated), `${f.nbdcopyNull.toFixed(2)} s`, fmtRate(rate(f.disk.allocated, f.nbdcopyNull)), '', '', '']),
    row([`limit: sha256/32 KiB + md5/4 MiB, ${f.machine.threads} threads`, fmtMiB(f.hash.bytes), '', fmtRate(f.hash.mibps), '', '', '']),
  ];
  for (const r of f.runs) {
    lines.push(row([r.label, fmtMiB(r.bytesRead), `${r.seconds.toFixed(2)} s`, fmtRate(rate(r.bytesRead, r.seconds)),
      r.ratio !== undefined ? `${(100 * r.ratio).toFixed(0)} %` : '', r.bytesStored !== undefined ? fmtMiB(r.bytesStored) : '', fmtMiB(r.peakRss)]));
  }
  lines.push('', ...f.notes.map((n) => `- ${n}`));
  return lines.join('\n');
}

const MARKER = '<!-- Everything below is written by `npm run bench` (scripts/bench.mjs); edit above this line only. -->';

function writeBenchmarks(text) {
  const path = join(root, 'BENCHMARKS.md');
  const existing = existsSync(path) ? readFileSync(path, 'utf8') : '# Benchmarks\n\n';
  const head = existing.includes(MARKER) ? existing.slice(0, existing.indexOf(MARKER)) : `${existing.trimEnd()}\n\n`;
  writeFileSync(path, `${head}${MARKER}\n\n## Latest run\n\n${text}\n`);
  return path;
}

async function main() {
  const size = parseSize(process.env.FLEECE_BENCH_SIZE ?? '4G', 'FLEECE_BENCH_SIZE');
  const keep = process.env.FLEECE_BENCH_KEEP === '1';
  const threads = availableParallelism();
  const activity = await machineActivity();
  work = await mkdtemp(join(process.env.FLEECE_BENCH_DIR ?? tmpdir(), 'fleece-bench-'));
  for (const sub of ['run', 'scratch', 'qemu']) await mkdir(join(work, sub));
  const cpuAtStart = cpuSnapshot();
  log(`fleece benchmark in ${work}: ${formatBytes(size)} disk, ${threads} cores; CPU in use before the run ${activity.cpuBusy}, load ${activity.load}${activity.busy.length ? `; busy: ${activity.busy.join(', ')}` : ''}`);
  let qemu;
  try {
    log('\nbuilding the disk (offline)');
    const disk = await createMixedDisk(join(work, 'vda.qcow2'), { size });
    log(`  ${formatBytes(disk.allocated)} allocated of ${formatBytes(size)}`);
    qemu = await startQemuSystem({ disks: [{ path: disk.path, format: 'qcow2', target: 'vda' }], dir: join(work, 'qemu'), extraQmpSockets: 1 });
    const fleeceQmp = qemu.extraQmpPaths[0];

    log('\nlimit 1: nbdcopy reading a fleecing export (startPullBackup, as fleece starts it: scratch overlay + sync:none + NBD export)');
    const [vda] = (await queryDisks(qemu.client)).filter((d) => d.target === 'vda');
    const session = await startPullBackup({
      vm: VM, qmp: qemu.client, registry: new BackupRegistry(), disks: [{ disk: vda }],
      scratchDir: join(work, 'scratch'), runDir: join(work, 'run'),
    });
    const copy = join(work, 'nbdcopy.raw');
    let nbdcopyFile, nbdcopyNull;
    try {
      const uri = session.exports[0].uri;
      nbdcopyFile = nbdcopy(uri, copy, 2);
      nbdcopyNull = nbdcopy(uri, 'null:', 2);
    } finally {
      await session.abort();
    }
    const nbdcopyRate = rate(disk.allocated, nbdcopyFile);
    log(`  → file ${fmtRate(nbdcopyRate)} (${nbdcopyFile.toFixed(2)} s), → null: ${fmtRate(rate(disk.allocated, nbdcopyNull))}`);

    log(`\nlimit 2: Cinder hashing (sha256 per 32 KiB block + md5 per 4 MiB object) on ${threads} worker threads`);
    // Best of several runs (two now, one after the fleece runs): other load on the machine only lowers it.
    const hashRuns = [await hashLimit(copy, disk.regions, threads), await hashLimit(copy, disk.regions, threads)];
    let hash = hashRuns.reduce((a, b) => (a.mibps >= b.mibps ? a : b));
    log(`  ${fmtRate(hash.mibps)} over ${fmtMiB(hash.bytes)} (runs: ${hashRuns.map((r) => fmtRate(r.mibps)).join(', ')})`);
    await rm(copy, { force: true });
    let lower = Math.min(nbdcopyRate, hash.mibps);
    let lowerName = nbdcopyRate <= hash.mibps ? 'nbdcopy → file' : 'hashing';
    if (LIMITS_ONLY) {
      log(`\nlower limit: ${lowerName}, ${fmtRate(lower)} (FLEECE_BENCH_LIMITS_ONLY=1: no fleece runs, BENCHMARKS.md untouched)`);
      return 0;
    }

    log('\nfleece backup (the CLI as a child process, --json; peak RSS of that process)');
    const fullNone = await backup(work, fleeceQmp, join(work, 'repo-none'), ['--full', '--compression', 'none']);
    const fullZstd = await backup(work, fleeceQmp, join(work, 'repo-zstd'), ['--full']);

    log('\nthe guest writes');
    const pattern = join(work, 'random-4m.bin');
    writeRandomPatternFile(pattern);
    const writes = planGuestActivity(disk.regions, size, pattern);
    for (const w of writes) await qemu.guestWrite('vda', w.command);
    await qemu.guestWrite('vda', 'flush');
    const changed = coveredBytes(writes);
    log(`  ${writes.length} writes covering ${fmtMiB(changed)}`);
    const reference = join(work, 'reference.raw');
    await rawCopy(disk.path, reference);
    const referenceSha = await sha256File(reference);
    await rm(reference, { force: true });

    // Each repository has its own checkpoint (fleece picks the newest one with a complete backup in that repository).
    const incrementalNone = await backup(work, fleeceQmp, join(work, 'repo-none'), ['--compression', 'none']);
    const incremental = await backup(work, fleeceQmp, join(work, 'repo-zstd'), []);
    for (const [name, r] of [['none', incrementalNone], ['zstd', incremental]]) {
      if (r.level !== 'incremental') throw new Error(`the second ${name} backup was ${r.level}, not incremental`);
    }
    await qemu.stop();

    log('\nfleece restore (the incremental: its chain, full + incremental, into a raw file)');
    const restored = join(work, 'restored.raw');
    const restoreArgs = ['restore', '--repo', join(work, 'repo-zstd'), '--backup', incremental.backupId, '--out', restored, '--format', 'raw'];
    log(`  $ ${describeRun(restoreArgs)}`);
    const restore = await runFleece(restoreArgs, { output: 'capture', timeV: true });
    assertSucceeded(restore);
    const restoredOk = (await sha256File(restored)) === referenceSha;
    const lastHash = await hashLimit(restored, disk.regions, threads);
    log(`  hashing limit again, after the fleece runs: ${fmtRate(lastHash.mibps)}`);
    if (lastHash.mibps > hash.mibps) hash = lastHash;
    lower = Math.min(nbdcopyRate, hash.mibps);
    lowerName = nbdcopyRate <= hash.mibps ? 'nbdcopy → file' : 'hashing';
    await rm(restored, { force: true });
    log(`  ${restore.seconds.toFixed(2)} s, ${fmtRate(rate(size, restore.seconds))} of disk; byte-for-byte ${restoredOk ? 'OK' : 'MISMATCH'}`);

    const runs = [
      { label: 'fleece full, --compression none', ...fullNone, ratio: rate(fullNone.bytesRead, fullNone.seconds) / lower },
      { label: 'fleece full, zstd (default)', ...fullZstd, ratio: rate(fullZstd.bytesRead, fullZstd.seconds) / lower },
      // No ratio: an incremental's time is mostly fixed costs (process start, QMP, fleecing setup); see the note.
      { label: 'fleece incremental, --compression none', ...incrementalNone },
      { label: 'fleece incremental, zstd', ...incremental },
      { label: 'fleece restore of the incremental (chain) → raw', bytesRead: size, seconds: restore.seconds, peakRss: restore.peakRssBytes },
    ];
    activity.during = `${othersCpu(cpuAtStart, cpuSnapshot()).toFixed(0)} % of one core`;
    const cpu = cpus()[0]?.model ?? 'unknown CPU';
    const qemuVersion = execFileSync('qemu-system-x86_64', ['--version'], { encoding: 'utf8' }).split('\n')[0].replace(/ \(.*\)/, '');
    const nbdcopyVersion = execFileSync('nbdcopy', ['--version'], { encoding: 'utf8' }).split('\n')[0];
    const figures = {
      date: new Date().toISOString().replace(/\.\d+Z$/, 'Z'),
      machine: { cpu, nproc: cpus().length, threads, memGiB: Math.round(totalmem() / 1024 ** 3), qemu: qemuVersion, nbdcopy: nbdcopyVersion },
      activity, disk, changed, nbdcopyFile, nbdcopyNull, nbdcopyRate, hash, runs,
      notes: [
        `Lower limit: ${lowerName}, ${fmtRate(lower)}. "vs lower limit" = fleece's MiB/s ÷ that.`,
        'fleece times are the wall time of the whole `fleece backup` process (Node start, QMP, fleecing setup, NBD reads, hashing, compression, commit); MiB/s = data read ÷ that time.',
        `Incremental: read ${fmtMiB(incremental.bytesRead)} (${(100 * incremental.bytesRead / fullZstd.bytesRead).toFixed(1)} % of the full) in ${incremental.seconds.toFixed(2)} s `
          + `(${(100 * incremental.seconds / fullZstd.seconds).toFixed(0)} % of the full's time); at the zstd full's rate that data takes `
          + `${(incremental.bytesRead / (fullZstd.bytesRead / fullZstd.seconds)).toFixed(2)} s, the rest is the fixed cost of a backup command.`,
        `Wall time vs fleece's own reported duration (durationMs): full none ${fullNone.seconds.toFixed(2)} s vs ${fullNone.cliSeconds.toFixed(2)} s, `
          + `full zstd ${fullZstd.seconds.toFixed(2)} s vs ${fullZstd.cliSeconds.toFixed(2)} s, incremental ${incremental.seconds.toFixed(2)} s vs ${incremental.cliSeconds.toFixed(2)} s.`,
        `Restore: MiB/s of the virtual disk written; the restored image matched the guest disk byte for byte: ${restoredOk ? 'yes' : 'NO'}.`,
        `Peak RSS measured with ${fullNone.rssSource === 'time -v' ? '`/usr/bin/time -v` (maximum resident set size of the fleece process)' : 'VmHWM of /proc/<pid>/status sampled every 25 ms'}.`,
        'nbdcopy read the same export fleece reads: a pull backup started with startPullBackup (scratch qcow2 overlay, blockdev-backup sync:none, NBD export of the scratch node), default nbdcopy settings.',
      ],
    };
    const table = formatTable(['what', 'MiB/s', 'vs limit', 'time', 'peak RSS'], [
      ['nbdcopy → file', fmtRate(nbdcopyRate), '', `${nbdcopyFile.toFixed(2)} s`, ''],
      [`hashing, ${threads} threads`, fmtRate(hash.mibps), '', '', ''],
      ...runs.map((r) => [r.label, fmtRate(rate(r.bytesRead, r.seconds)), r.ratio !== undefined ? `${(100 * r.ratio).toFixed(0)} %` : '',
        `${r.seconds.toFixed(2)} s`, fmtMiB(r.peakRss)]),
    ]);
    log(`\n${table}\n\nlower limit: ${lowerName}; other processes used ${activity.during} during the run`);
    const path = writeBenchmarks(markdown(figures));
    log(`written to ${path}`);
    return restoredOk ? 0 : 1;
  } finally {
    await qemu?.stop();
    if (keep) log(`kept ${work}`);
    else await rm(work, { recursive: true, force: true });
  }
}

for (const name of ['SIGINT', 'SIGTERM']) {
  process.on(name, () => {
    // QEMU and nbdcopy get the terminal's SIGINT too; the harness kills QEMU on exit in any case.
    log(`\n${name}: cleaning up`);
    if (work && process.env.FLEECE_BENCH_KEEP !== '1') rmSync(work, { recursive: true, force: true });
    process.exit(130);
  });
}
main().then((code) => { process.exitCode = code; }, (error) => {
  console.error(`\nbenchmark failed: ${error?.stack ?? error}`);
  process.exitCode = 1;
});
