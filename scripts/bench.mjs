#!/usr/bin/env node
// `npm run bench`: fleece against the tool users would pick instead, virtnbdbackup, side by side in one run on the same
// disk contents, with nbdcopy + sync of libvirt's own pull export as the floor. A private libvirtd (the test harness's)
// runs a paused TCG domain whose qcow2 disk (cache='none') holds ~70 % mixed data; a bare QEMU gets a byte-identical
// copy for fleece's QMP path. Per round: the floor; virtnbdbackup full -z and full; fleece full none and zstd (libvirt,
// then QMP); the guest writes 1 % of the disk; fleece's incrementals, virtnbdbackup's; each tool restores its plain
// chain to qcow2 and raw, checked byte for byte. Prints a table (medians over the rounds, and the spread) and writes it
// to BENCHMARKS.md; leaves nothing running on success, failure or Ctrl-C.
// Env: FLEECE_BENCH_SIZE (default 4G), FLEECE_BENCH_ROUNDS (default 3; a round starts only if it should end within
// FLEECE_BENCH_BUDGET minutes of the start, default 11: on a busy host fewer run), FLEECE_BENCH_DIR (parent of the work dir),
// FLEECE_BENCH_KEEP=1 (keep the work dir), FLEECE_BENCH_DIST (the compiled tree to run, default ./dist, built when
// stale), FLEECE_CLI (another build of the CLI only), FLEECE_BENCH_CPU_PROF=DIR (every fleece command under node
// --cpu-prof into DIR), FLEECE_BENCH_VERIFY=all (check the restores byte for byte in every round, not only the first),
// FLEECE_BENCH_NO_WRITE=1 (do not touch BENCHMARKS.md), FLEECE_BENCH_S3=0 (skip the S3 rows: fleece to and from the
// harness's Swift s3api on loopback, next to the AWS SDK's own PUT/GET rate on that server), FLEECE_BENCH_COMPARE_CLI
// (another build's CLI, e.g. the last release's: its restores of the same chain run right after fleece's and get rows
// of their own, "before" beside "after").
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { availableParallelism, cpus, release, tmpdir, totalmem } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { Worker } from 'node:worker_threads';
import {
  MiB, cpuModel, directWriteRate, endChildren, machineActivity, median, mustRun, run, startCpuAccount, startupTime, syncPaths,
} from './bench-host.mjs';
import { deleteCheckpoints, floorCopy, planWrites } from './bench-libvirt.mjs';
import { endForkedQemuNbd, peerBackup, peerRestore, peerStatus } from './bench-peer.mjs';
import { HEADERS, aims, markdownTable, metText, tableRows, timeCell } from './bench-report.mjs';
import { S3_OBJECT_SIZE, s3Env, sdkLimit, startS3 } from './bench-s3.mjs';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
process.chdir(root);
const OBJECT_SIZE = 4 * MiB; // Cinder's chunk size: one md5 per object
const SHA_BLOCK = 32 * 1024; // Cinder's sha256 block size
const DOMAIN = 'fleece-test-bench'; // the harness wants the fleece-test- prefix
const QMP_VM = 'bench';
/** The compiled tree the bench runs: FLEECE_BENCH_DIST (a build of its own, e.g. `npx tsc -p tsconfig.json --outDir DIR`
 * with DIR/node_modules a symlink to ./node_modules, immune to others rebuilding dist/ meanwhile), else ./dist. */
const DIST = resolve(process.env.FLEECE_BENCH_DIST ?? 'dist');
const CLI = resolve(process.env.FLEECE_CLI ?? join(DIST, 'src/cli/main.js'));
const ROUNDS = Math.max(1, Number(process.env.FLEECE_BENCH_ROUNDS ?? 3));
const KEEP = process.env.FLEECE_BENCH_KEEP === '1';
const BUDGET_MIN = Number(process.env.FLEECE_BENCH_BUDGET ?? 11);
const VERIFY_ALL = process.env.FLEECE_BENCH_VERIFY === 'all';
const COMPARE_CLI = process.env.FLEECE_BENCH_COMPARE_CLI ? resolve(process.env.FLEECE_BENCH_COMPARE_CLI) : undefined;
const PROF_DIR = process.env.FLEECE_BENCH_CPU_PROF ? resolve(process.env.FLEECE_BENCH_CPU_PROF) : undefined;

const log = (text) => process.stdout.write(`${text}\n`);
const fmtMiB = (b) => `${(b / MiB).toFixed(0)} MiB`;
const fmtRate = (bytes, seconds) => `${(bytes / MiB / seconds).toFixed(0)} MiB/s`;
const s2 = (s) => `${s.toFixed(2)} s`;

// ---- the build ---------------------------------------------------------------------------------------------------

/** True when a compiled file the bench imports is missing or older than a TypeScript source. */
function distIsStale() {
  const stamps = ['dist/scripts/demo/mixed-disk.js', 'dist/test/harness/libvirt.js'];
  if (stamps.some((s) => !existsSync(s)) || !existsSync(CLI)) return true;
  const built = Math.min(...stamps.map((s) => statSync(s).mtimeMs));
  const newer = (dir) => readdirSync(dir, { withFileTypes: true }).some((e) => {
    const path = join(dir, e.name);
    if (e.isDirectory()) return e.name !== 'node_modules' && newer(path);
    return e.name.endsWith('.ts') && statSync(path).mtimeMs > built;
  });
  return ['src', 'native', 'scripts', 'test'].some((d) => existsSync(d) && newer(d));
}

if (process.env.FLEECE_BENCH_DIST === undefined && distIsStale()) {
  log('dist/ is missing or older than the sources: npx tsc -p tsconfig.json');
  const built = spawnSync('npx', ['tsc', '-p', 'tsconfig.json'], { stdio: 'inherit' });
  if (built.status !== 0) {
    if (!existsSync(CLI) || !existsSync('dist/scripts/demo/mixed-disk.js') || !existsSync('dist/test/harness/libvirt.js')) {
      console.error('the build failed and dist/ lacks the CLI, the demo helpers or the libvirt harness: fix the errors above');
      process.exit(1);
    }
    log('warning: the typecheck reported errors (above); benchmarking the JavaScript it emitted');
  }
}

const fromDist = (path) => import(pathToFileURL(join(DIST, path)).href);
const { createMixedDisk, parseSize, seededRandom } = await fromDist('scripts/demo/mixed-disk.js');
const { writeRandomPatternFile } = await fromDist('scripts/demo/guest-activity.js');
const { rawCopy, sha256File } = await fromDist('scripts/demo/reference.js');
const { formatBytes, formatTable } = await fromDist('scripts/demo/table.js');
const { startQemuSystem } = await fromDist('test/harness/qemu.js');
const { dedicatedLibvirt, defineTestDomain, libvirtAvailability } = await fromDist('test/harness/libvirt.js');

// ---- what must be ended on success, failure and Ctrl-C -------------------------------------------------------------

const held = { work: undefined, qemu: undefined, libvirt: undefined, s3: undefined };
let cleaning;

/** Ends the children, any qemu-nbd virtnbdrestore forked, the bare QEMU, the domain and libvirtd; removes the work dir. Once. */
function cleanup() {
  cleaning ??= (async () => {
    const warn = (what) => (error) => console.error(`cleanup: ${what}: ${error?.message ?? error}`);
    await endChildren();
    if (held.work) await endForkedQemuNbd(held.work).catch(warn('qemu-nbd'));
    await held.qemu?.stop().catch(warn('the bare QEMU'));
    await held.s3?.stop().catch(warn('Swift'));
    const h = await held.libvirt?.catch(() => undefined);
    await h?.stop().catch(warn('the private libvirtd')); // destroys and undefines the domain, stops libvirtd, removes its dir
    if (held.work && !KEEP) await rm(held.work, { recursive: true, force: true }).catch(warn('the work directory'));
    else if (held.work) log(`kept ${held.work}`);
  })();
  return cleaning;
}

for (const name of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.on(name, () => {
    if (cleaning) return;
    log(`\n${name}: stopping the children, the domain and libvirtd, removing the work directory`);
    cleanup().finally(() => process.exit(130));
  });
}

// ---- measurements ------------------------------------------------------------------------------------------------

/** Aggregate hashing rate on all cores: sha256 per 32 KiB + md5 per 4 MiB over the allocated data of `file`. */
async function hashLimit(file, regions, threads) {
  const pieces = [];
  for (const r of regions) {
    if (r.kind === 'hole' || r.kind === 'zero-clusters') continue;
    for (let at = 0; at < r.length; at += OBJECT_SIZE) pieces.push([r.offset + at, Math.min(OBJECT_SIZE, r.length - at)]);
  }
  const shares = Array.from({ length: threads }, (_, i) => pieces.filter((_, j) => j % threads === i));
  const results = await Promise.all(shares.map((share) => new Promise((done, fail) => {
    const worker = new Worker(new URL('./bench/hash-worker.mjs', import.meta.url), {
      workerData: { file, pieces: share, objectSize: OBJECT_SIZE, shaBlockSize: SHA_BLOCK },
    });
    worker.once('message', done);
    worker.once('error', fail);
  })));
  return results.reduce((sum, r) => sum + r.bytes / MiB / r.hashSeconds, 0);
}

function fleeceEnv(work) {
  return {
    ...process.env,
    FLEECE_RUN_DIR: join(work, 'run'), FLEECE_STATE_DIR: join(work, 'state'), FLEECE_CONFIG_DIR: join(work, 'config'),
    FLEECE_DAEMON_SOCKET: join(work, 'run', 'fleeced.sock'),
  };
}

/** `node dist/src/cli/main.js <args>` under /usr/bin/time -v; throws with its output unless it exited 0. */
let profiled = 0;
async function fleece(work, args, extraEnv = {}, cli = CLI) {
  // One directory per command (01-backup-full-none…): the main thread's profile and one per worker thread.
  const label = [args[0], args.includes('--full') ? 'full' : args[0] === 'backup' ? 'auto' : '', args.includes('--qmp') ? 'qmp' : '',
    args.includes('none') ? 'none' : args[0] === 'backup' ? 'zstd' : args[args.indexOf('--format') + 1]].filter(Boolean).join('-');
  const prof = PROF_DIR ? ['--cpu-prof', '--cpu-prof-dir', join(PROF_DIR, `${String(++profiled).padStart(2, '0')}-${label}`)] : [];
  return mustRun(process.execPath, [...prof, cli, ...args], { timeV: true, env: { ...fleeceEnv(work), ...extraEnv } });
}

async function fleeceBackup(work, label, args, extraEnv) {
  // One domain, a repository per variant, most removed right after their backup: the bench removes fleece's
  // checkpoints itself before the peer runs, so every variant runs without checkpoint pruning (the same for all).
  const r = await fleece(work, ['backup', ...args, '--no-prune-checkpoints', '--json'], extraEnv);
  const report = JSON.parse(r.stdout);
  const out = {
    seconds: r.seconds, peakRss: r.peakRss, level: report.level, backupId: report.disks?.[0]?.backupId,
    bytesRead: report.bytesRead ?? 0, bytesStored: report.bytesStored ?? 0, durationMs: report.durationMs,
  };
  log(`  fleece ${label}: ${out.level}, read ${fmtMiB(out.bytesRead)}, stored ${fmtMiB(out.bytesStored)}, ${s2(r.seconds)}`
    + ` (${fmtRate(out.bytesRead, r.seconds)}; its own duration ${(out.durationMs / 1000).toFixed(2)} s), peak RSS ${fmtMiB(r.peakRss)}`);
  return out;
}

/** `fleece restore` of `backupId` (its chain) into `out`, then `sync` of it; checks it against the reference. */
async function fleeceRestore(work, repo, backupId, out, format, reference, extraEnv = {}, cli = CLI) {
  const r = await fleece(work, ['restore', '--repo', repo, '--backup', backupId, '--out', out, '--format', format, '--json'], extraEnv, cli);
  const syncSeconds = await syncPaths([out, dirname(out)]);
  const ok = reference ? await sameDisk(out, format, reference) : undefined;
  const result = { seconds: r.seconds + syncSeconds, syncSeconds, peakRss: r.peakRss, ok };
  log(`  fleece${cli === CLI ? '' : ` (${cli})`} restore → ${format}: ${s2(result.seconds)} (sync ${s2(syncSeconds)}), peak RSS ${fmtMiB(r.peakRss)}${matches(ok)}`);
  return result;
}

const matches = (ok) => (ok === undefined ? '' : `; matches the guest disk: ${ok ? 'yes' : 'NO'}`);

/** Whether `image` reads the same as the raw reference: sha256 for raw, qemu-img compare (of contents) for qcow2. */
async function sameDisk(image, format, reference) {
  if (!reference) return undefined;
  if (format === 'raw') return (await sha256File(image)) === reference.sha;
  const r = await run('qemu-img', ['compare', '-f', format, '-F', 'raw', image, reference.file]);
  if (r.code !== 0 && r.code !== 1) throw new Error(`qemu-img compare ${image} ${reference.file} failed: ${r.stderr.trim()}`);
  return r.code === 0;
}

// ---- one round ---------------------------------------------------------------------------------------------------

async function oneRound(n, ctx) {
  const { work, disk, qmpImage, qemu, h, domain, peer, size, pattern, threads } = ctx;
  const dir = join(work, `round-${n}`);
  await mkdir(dir, { recursive: true });
  const R = { n };
  const repo = (name) => join(dir, `repo-${name}`);
  const qmpArgs = [QMP_VM, '--qmp', qemu.extraQmpPaths[0]];
  const lvArgs = h ? [DOMAIN, '--connect', h.uri] : undefined;
  const peerDirs = { socket: join(dir, 'peer.sock'), scratchDir: join(dir, 'scratch') };
  await mkdir(peerDirs.scratchDir, { recursive: true });
  log(`\n== round ${n} of ${ROUNDS}`);
  const started = performance.now();
  const account = startCpuAccount(work);

  if (h) {
    const floor = await floorCopy(h, DOMAIN, 'vda', dir);
    R.floor = floor.seconds;
    R.hash = await hashLimit(floor.file, disk.regions, threads);
    log(`  floor: nbdcopy of libvirt's pull export ${s2(floor.copySeconds)} + sync ${s2(floor.syncSeconds)} = ${s2(floor.seconds)}`
      + ` (${fmtRate(disk.allocated, floor.seconds)}); hashing limit ${R.hash.toFixed(0)} MiB/s`);
    await rm(floor.file, { force: true });
  }

  if (h && peer.ok) {
    const peerFull = async (label, compress, out) => {
      const p = await peerBackup({ uri: h.uri, domain: DOMAIN, level: 'full', compress, out, ...peerDirs });
      log(`  virtnbdbackup ${label}: ${s2(p.backupSeconds)} + sync ${s2(p.syncSeconds)} = ${s2(p.seconds)} (${fmtRate(p.dataBytes, p.seconds)}), peak RSS ${fmtMiB(p.peakRss)}`);
      return p;
    };
    R.peerFullZ = await peerFull('full -z', true, join(dir, 'peer-lz4'));
    await rm(join(dir, 'peer-lz4'), { recursive: true, force: true });
    R.peerFull = await peerFull('full', false, join(dir, 'peer-plain'));
  }

  if (h) {
    R.lvNone = await fleeceBackup(work, 'libvirt full --compression none', [...lvArgs, '--repo', repo('lv-none'), '--full', '--compression', 'none']);
    R.lvZstd = await fleeceBackup(work, 'libvirt full zstd', [...lvArgs, '--repo', repo('lv-zstd'), '--full']);
    await rm(repo('lv-zstd'), { recursive: true, force: true });
  }
  R.qNone = await fleeceBackup(work, 'QMP full --compression none', [...qmpArgs, '--repo', repo('qmp-none'), '--full', '--compression', 'none']);
  R.qZstd = await fleeceBackup(work, 'QMP full zstd', [...qmpArgs, '--repo', repo('qmp-zstd'), '--full']);
  await rm(repo('qmp-zstd'), { recursive: true, force: true });
  // The same full into an encrypted repository (AES-256-GCM, a key file): what encryption at rest costs.
  const keyEnv = { FLEECE_KEY_FILE: join(dir, 'repo.key') };
  await fleece(work, ['repo', 'key-generate', keyEnv.FLEECE_KEY_FILE]);
  await fleece(work, ['repo', 'init', repo('qmp-enc'), '--encrypt'], keyEnv);
  R.qEnc = await fleeceBackup(work, 'QMP full --compression none, encrypted', [...qmpArgs, '--repo', repo('qmp-enc'), '--full', '--compression', 'none'], keyEnv);
  await rm(repo('qmp-enc'), { recursive: true, force: true });

  // The guest writes 1 % of the disk, the same writes on both copies.
  const writes = planWrites(size, pattern, seededRandom, { percent: 1, seed: 10 + n });
  for (const w of writes) {
    if (domain) await domain.qemuIo('vda', w.command);
    await qemu.guestWrite('vda', w.command);
  }
  if (domain) await domain.qemuIo('vda', 'flush');
  await qemu.guestWrite('vda', 'flush');
  R.written = writes.reduce((sum, w) => sum + w.length, 0);
  R.writes = writes.length;
  log(`  the guest wrote ${fmtMiB(R.written)} (${(100 * R.written / size).toFixed(1)} % of the disk) in ${writes.length} writes`);
  // The restores are checked byte for byte against a raw copy of the guest disk as it is now (round 1, or all).
  const reference = n === 1 || VERIFY_ALL ? { file: join(dir, 'reference.raw') } : undefined;
  if (reference) {
    await rawCopy(h ? disk.path : qmpImage, reference.file);
    reference.sha = await sha256File(reference.file);
  }

  if (h) {
    R.lvInc = await fleeceBackup(work, 'libvirt incremental --compression none', [...lvArgs, '--repo', repo('lv-none'), '--compression', 'none']);
    if (R.lvInc.level !== 'incremental') throw new Error(`fleece's second libvirt backup was ${R.lvInc.level}, not incremental`);
  }
  R.qInc = await fleeceBackup(work, 'QMP incremental --compression none', [...qmpArgs, '--repo', repo('qmp-none'), '--compression', 'none']);
  if (R.qInc.level !== 'incremental') throw new Error(`fleece's second QMP backup was ${R.qInc.level}, not incremental`);

  if (h) {
    // virtnbdbackup refuses to run while a checkpoint it did not make exists: fleece's go (fleece is done with them).
    await deleteCheckpoints(h, DOMAIN, 'fleece-');
    if (peer.ok) {
      R.peerInc = await peerBackup({ uri: h.uri, domain: DOMAIN, level: 'inc', compress: false, out: join(dir, 'peer-plain'), ...peerDirs });
      log(`  virtnbdbackup inc: read ${fmtMiB(R.peerInc.dataBytes)}, ${s2(R.peerInc.backupSeconds)} + sync ${s2(R.peerInc.syncSeconds)} = ${s2(R.peerInc.seconds)}, peak RSS ${fmtMiB(R.peerInc.peakRss)}`);
    }
  }

  // Restores of the plain chains (full + incremental): fleece's libvirt one (the QMP one without libvirt), the peer's.
  const [chainRepo, chainId] = h ? [repo('lv-none'), R.lvInc.backupId] : [repo('qmp-none'), R.qInc.backupId];
  if (h) await rm(repo('qmp-none'), { recursive: true, force: true });
  R.restoreQcow2 = await fleeceRestore(work, chainRepo, chainId, join(dir, 'fleece-restored.qcow2'), 'qcow2', reference);
  await rm(join(dir, 'fleece-restored.qcow2'), { force: true });
  R.restoreRaw = await fleeceRestore(work, chainRepo, chainId, join(dir, 'fleece-restored.raw'), 'raw', reference);
  await rm(join(dir, 'fleece-restored.raw'), { force: true });
  if (COMPARE_CLI) {
    R.compareQcow2 = await fleeceRestore(work, chainRepo, chainId, join(dir, 'compare-restored.qcow2'), 'qcow2', reference, {}, COMPARE_CLI);
    await rm(join(dir, 'compare-restored.qcow2'), { force: true });
    R.compareRaw = await fleeceRestore(work, chainRepo, chainId, join(dir, 'compare-restored.raw'), 'raw', reference, {}, COMPARE_CLI);
    await rm(join(dir, 'compare-restored.raw'), { force: true });
  }

  if (h && peer.ok) {
    const outDir = join(dir, 'peer-restored');
    const p = await peerRestore({ uri: h.uri, input: join(dir, 'peer-plain'), outDir, socket: peerDirs.socket, logFile: join(dir, 'virtnbdrestore.log') });
    const qcow2Ok = await sameDisk(p.image, 'qcow2', reference);
    R.peerRestoreQcow2 = { seconds: p.seconds, peakRss: p.peakRss, ok: qcow2Ok };
    log(`  virtnbdrestore → qcow2: ${s2(p.restoreSeconds)} + its qemu-nbd's exit ${s2(p.waitSeconds)} + sync ${s2(p.syncSeconds)} = ${s2(p.seconds)}, `
      + `peak RSS ${fmtMiB(p.peakRss)}${matches(qcow2Ok)}`);
    // virtnbdrestore writes the format the disk had (qcow2); to raw a user converts: qemu-img convert + sync.
    const raw = join(dir, 'peer-restored.raw');
    const convert = await mustRun('qemu-img', ['convert', '-f', 'qcow2', '-O', 'raw', p.image, raw], { timeV: true });
    const syncSeconds = await syncPaths([raw, dir]);
    const rawOk = await sameDisk(raw, 'raw', reference);
    R.peerRestoreRaw = { seconds: p.restoreSeconds + p.waitSeconds + convert.seconds + syncSeconds, peakRss: Math.max(p.peakRss, convert.peakRss), ok: rawOk };
    log(`  virtnbdrestore → qcow2, qemu-img convert → raw, sync: ${s2(R.peerRestoreRaw.seconds)} (convert ${s2(convert.seconds)}, sync ${s2(syncSeconds)})${matches(rawOk)}`);
    await rm(outDir, { recursive: true, force: true });
    await rm(raw, { force: true });
  }
  if (reference) await rm(reference.file, { force: true });

  if (n === 1) {
    const env = fleeceEnv(work);
    R.startup = {
      '--version': await startupTime(CLI, ['--version'], env),
      '--help': await startupTime(CLI, ['--help'], env),
      list: await startupTime(CLI, ['list', '--repo', chainRepo], env),
    };
    log(`  start-up (median of 5): ${Object.entries(R.startup).map(([k, t]) => `${k} ${(t.median * 1000).toFixed(0)} ms`).join(', ')}`);
  }
  if (!KEEP) await rm(dir, { recursive: true, force: true });
  R.others = account.stop();
  R.seconds = (performance.now() - started) / 1000;
  log(`  round ${n}: ${(R.seconds / 60).toFixed(1)} min; other processes used ${R.others.toFixed(0)} % of one core meanwhile`);
  return R;
}

// ---- S3 -----------------------------------------------------------------------------------------------------------

/**
 * fleece's full backup (QMP, --compression none) into s3:// on the harness's Swift and its restore to raw, checked
 * byte for byte, next to the SDK's own PUT/GET rate on the same server with fleece's object size.
 */
async function s3Section(ctx) {
  const { work, qemu, qmpImage } = ctx;
  log('\n== S3: fleece to and from a real S3 server (Swift s3api on loopback), the AWS SDK\'s own rate as the limit');
  const s3 = await startS3(DIST);
  if (!s3.ok) {
    log(`  skipped: ${s3.why}`);
    return { skipped: s3.why };
  }
  held.s3 = s3;
  const env = s3Env(s3);
  const repo = `s3://${s3.bucket}/run-${Date.now()}`;
  const reference = { file: join(work, 's3-reference.raw') };
  await rawCopy(qmpImage, reference.file);
  reference.sha = await sha256File(reference.file);
  const backup = await fleeceBackup(work, 'QMP full --compression none → S3', [QMP_VM, '--qmp', qemu.extraQmpPaths[0], '--repo', repo, '--full', '--compression', 'none'], env);
  const restore = await fleeceRestore(work, repo, backup.backupId, join(work, 's3-restored.raw'), 'raw', reference, env);
  await rm(join(work, 's3-restored.raw'), { force: true });
  await rm(reference.file, { force: true });
  const limit = await sdkLimit(s3, Math.min(backup.bytesStored, 1024 * MiB), log);
  const out = {
    backup, restore, limit,
    backupRate: backup.bytesStored / MiB / backup.seconds,
    restoreRate: backup.bytesStored / MiB / restore.seconds,
  };
  log(`  fleece → S3: stored ${fmtMiB(backup.bytesStored)} at ${out.backupRate.toFixed(0)} MiB/s = ${(100 * out.backupRate / limit.put).toFixed(0)} % of the SDK's PUT rate;`
    + ` restore at ${out.restoreRate.toFixed(0)} MiB/s = ${(100 * out.restoreRate / limit.get).toFixed(0)} % of its GET rate`);
  return out;
}

function s3Markdown(s3) {
  if (!s3) return [];
  if (s3.skipped) return ['', `S3 rows: not run (${s3.skipped}).`];
  const pct = (a, b) => `${(100 * a / b).toFixed(0)} %`;
  return [
    '',
    `S3 (Debian's Swift with s3api on loopback, the test harness's single node; objects of ${S3_OBJECT_SIZE / MiB} MiB, `
      + `fleece's S3 object size): fleece backs the bare QEMU's disk up full (\`--compression none\`) into \`s3://…\` and restores it `
      + `to raw (+ sync; ${s3.restore.ok === false ? 'it DIFFERED from the disk' : 'byte-identical with the disk'}); the limit is the AWS SDK's own `
      + `PutObject (with Content-MD5) / GetObject rate on the same server, ${s3.limit.objects} objects, best of 1, 4 and 8 in flight.`,
    '',
    markdownTable(['', 'fleece', 'SDK limit', 'fleece / limit'], [
      [`backup → S3 (stored ${fmtMiB(s3.backup.bytesStored)})`, `${s2(s3.backup.seconds)}, ${s3.backupRate.toFixed(0)} MiB/s`, `PUT ${s3.limit.put.toFixed(0)} MiB/s (${s3.limit.putFlight} in flight)`, pct(s3.backupRate, s3.limit.put)],
      ['restore ← S3 → raw, + sync', `${s2(s3.restore.seconds)}, ${s3.restoreRate.toFixed(0)} MiB/s`, `GET ${s3.limit.get.toFixed(0)} MiB/s (${s3.limit.getFlight} in flight)`, pct(s3.restoreRate, s3.limit.get)],
    ]),
    '',
    `- fleece's times are whole commands (start, NBD reads, hashing, commit); peak RSS backup ${fmtMiB(s3.backup.peakRss)}, restore ${fmtMiB(s3.restore.peakRss)}.`,
  ];
}

// ---- the report --------------------------------------------------------------------------------------------------

function report(ctx, rounds, facts) {
  const { disk, peer, h } = ctx;
  const pick = (key) => rounds.map((r) => r[key]);
  const floor = pick('floor');
  const ops = [
    { key: 'full-plain', label: 'full, plain (fleece --compression none)', dataBytes: median(pick('lvNone').map((r) => r?.bytesRead)), peer: h && peer.ok ? pick('peerFull') : undefined, fleece: pick('lvNone'), floor },
    { key: 'full-compressed', label: 'full, compressed (peer -z lz4, fleece zstd)', dataBytes: median(pick('lvZstd').map((r) => r?.bytesRead)), peer: h && peer.ok ? pick('peerFullZ') : undefined, fleece: pick('lvZstd'), floor },
    { key: 'incremental', label: 'incremental, 1 % written', dataBytes: median(pick('lvInc').map((r) => r?.bytesRead)), peer: h && peer.ok ? pick('peerInc') : undefined, fleece: pick('lvInc') },
    { key: 'restore-qcow2', label: 'restore of the chain → qcow2, + sync', dataBytes: disk.size, peer: h && peer.ok ? pick('peerRestoreQcow2') : undefined, fleece: pick('restoreQcow2') },
    { key: 'restore-raw', label: 'restore of the chain → raw, + sync', dataBytes: disk.size, peer: h && peer.ok ? pick('peerRestoreRaw') : undefined, fleece: pick('restoreRaw') },
    ...(COMPARE_CLI ? [
      { key: 'compare-restore-qcow2', label: 'restore → qcow2 by FLEECE_BENCH_COMPARE_CLI', dataBytes: disk.size, peer: h && peer.ok ? pick('peerRestoreQcow2') : undefined, fleece: pick('compareQcow2') },
      { key: 'compare-restore-raw', label: 'restore → raw by FLEECE_BENCH_COMPARE_CLI', dataBytes: disk.size, peer: h && peer.ok ? pick('peerRestoreRaw') : undefined, fleece: pick('compareRaw') },
    ] : []),
    { key: 'qmp-full-plain', label: 'bare QEMU (QMP): full, --compression none', dataBytes: median(pick('qNone').map((r) => r.bytesRead)), peer: undefined, fleece: pick('qNone'), floor },
    { key: 'qmp-full-encrypted', label: 'bare QEMU (QMP): full, --compression none, encrypted (AES-256-GCM)', dataBytes: median(pick('qEnc').map((r) => r?.bytesRead)), peer: undefined, fleece: pick('qEnc'), floor },
    { key: 'qmp-full-compressed', label: 'bare QEMU (QMP): full, zstd', dataBytes: median(pick('qZstd').map((r) => r.bytesRead)), peer: undefined, fleece: pick('qZstd'), floor },
    { key: 'qmp-incremental', label: 'bare QEMU (QMP): incremental, 1 % written', dataBytes: median(pick('qInc').map((r) => r.bytesRead)), peer: undefined, fleece: pick('qInc') },
  ].filter((op) => op.fleece.some(Boolean));
  const rows = tableRows(ops);
  const fleeceRss = Math.max(...rows.map((r) => r.fleeceRss));
  // Fixed cost of an incremental: its wall time minus what its data takes at the plain full's rate, per round.
  const incKey = h ? 'lvInc' : 'qInc';
  const fullKey = h ? 'lvNone' : 'qNone';
  const fixedCosts = rounds.map((r) => r[incKey].seconds - r[incKey].bytesRead / (r[fullKey].bytesRead / r[fullKey].seconds));
  const fixedCost = median(fixedCosts);
  const startup = rounds[0].startup;
  const aimList = aims({ rows, fixedCost, startup, fleeceRss });
  const checks = rounds.flatMap((r) => [r.restoreQcow2, r.restoreRaw, r.compareQcow2, r.compareRaw, r.peerRestoreQcow2, r.peerRestoreRaw]).filter((x) => x?.ok !== undefined);
  const ok = checks.every((x) => x.ok);
  const hash = Math.max(...pick('hash').filter(Number.isFinite));
  const written = median(pick('written'));
  const sh = (key, field) => timeCell(pick(key).map((r) => r?.[field]));

  const hostLine = `${facts.cpu}, ${facts.nproc} cores, ${facts.memGiB} GiB RAM, Linux ${release()}; the work directory's disk takes `
    + `direct writes at ${facts.direct.mibps.toFixed(0)} MiB/s (${facts.direct.tool})`;
  const versions = [facts.fleece, `Node ${process.versions.node}`, facts.qemu, facts.libvirt, peer.ok ? peer.version : 'virtnbdbackup not installed', facts.nbdcopy].join(', ');
  const lines = [
    `Run of ${facts.date} on ${hostLine}. ${versions}. Before the run: CPU in use ${facts.activity.cpuBusy}, load average `
      + `${facts.activity.load}${facts.activity.busy.length ? `; busy: ${facts.activity.busy.join(', ')}` : '; nothing else busy'}. `
      + `During the run, other processes used ${facts.others.toFixed(0)} % of one core on average`
      + `${rounds.length > 1 ? ` (per round: ${rounds.map((r) => `${r.others.toFixed(0)} %`).join(', ')})` : ''}; the run took ${facts.minutes.toFixed(1)} min.`,
    '',
    `Disk: ${formatBytes(disk.size)} virtual qcow2, ${formatBytes(disk.allocated)} allocated (${formatBytes(disk.totals.random)} random, `
      + `${formatBytes(disk.totals.text)} text, ${formatBytes(disk.totals['zero-data'])} zero bytes; plus ${formatBytes(disk.totals['zero-clusters'])} `
      + `zero clusters and ${formatBytes(disk.totals.hole)} holes)${h ? `, a paused TCG libvirt domain with cache='${facts.cache}'` : ''}; `
      + `before the incrementals the guest wrote ${fmtMiB(written)} (${(100 * written / disk.size).toFixed(1)} % of the disk) in ${rounds[0].writes} write${rounds[0].writes === 1 ? "" : "s"}. `
      + `${rounds.length} round${rounds.length > 1 ? 's' : ''}${facts.budgetStop ? ` (${facts.budgetStop})` : ''}; a cell with a range is the median (min–max) over the rounds, a ratio is taken per round.`,
    '',
    ...(h ? [`Floor: nbdcopy + sync of libvirt's pull export of the disk (${fmtMiB(disk.allocated)}): ${timeCell(floor)}, `
      + `${fmtRate(disk.allocated, median(floor))}.`, ''] : []),
    markdownTable(HEADERS, rows.map((r) => r.cells)),
    '',
    'Aims (project issue 11):',
    '',
    ...aimList.map((a) => `- ${a.aim}: ${a.value}, ${metText(a.met)}`),
    '',
    'Notes:',
    '',
    `- Times are wall times of the whole command as a user runs it (process start included). Durable on both sides: fleece `
      + `fsyncs its objects and commit; virtnbdbackup does not, so its time includes \`sync\` of the files it wrote `
      + `(fsync of each, not a global sync, which would also flush what other processes wrote): `
      + `${h && peer.ok ? `full ${sh('peerFull', 'syncSeconds')}, full -z ${sh('peerFullZ', 'syncSeconds')}, inc ${sh('peerInc', 'syncSeconds')}` : 'not run'}.`,
    '- virtnbdbackup: `-l full` (its stream format, thin), `-l full -z` (lz4), `-l inc` on the plain chain, on the same domain '
      + 'and disk (each tool\'s checkpoints are removed before the other makes its own: virtnbdbackup refuses foreign ones). '
      + 'fleece through libvirt: `fleece backup DOMAIN --connect URI`; the incremental and the restores use the '
      + '`--compression none` chain, as the peer\'s use its plain one.',
    '- Restores: the whole chain (full + incremental), timed until the image is on disk: virtnbdrestore writes through a '
      + 'qemu-nbd it forks and does not wait for, so its time runs until that qemu-nbd has exited, then `sync`. virtnbdrestore '
      + 'writes the disk\'s own format (qcow2) only; its raw row adds `qemu-img convert -O raw` + sync (what a user would run). '
      + `fleece: \`fleece restore --format qcow2|raw\` + sync. Each restored image ${VERIFY_ALL ? '' : 'of round 1 '}was compared with a raw copy of the `
      + `guest disk (sha256; qcow2: \`qemu-img compare\`): ${checks.length} of ${checks.length} ${ok ? 'matched byte for byte' : `compared, ${checks.filter((x) => !x.ok).length} DIFFERED`}.`,
    `- Incremental: fleece read ${fmtMiB(median(pick(incKey).map((r) => r.bytesRead)))}${h && peer.ok ? `, virtnbdbackup ${fmtMiB(median(pick('peerInc').map((r) => r.dataBytes)))}` : ''}; `
      + `fleece's fixed cost (its time minus that data at its plain full's rate) ${timeCell(fixedCosts)}.`,
    `- fleece's wall time vs its own reported duration: full plain ${sh(fullKey, 'seconds')} vs ${timeCell(pick(fullKey).map((r) => r.durationMs / 1000))}, `
      + `incremental ${sh(incKey, 'seconds')} vs ${timeCell(pick(incKey).map((r) => r.durationMs / 1000))} (the rest: Node's start and module loading, exit).`,
    '- Bare QEMU rows: fleece on a `qemu-system-x86_64 -S` (TCG) with a byte-identical copy of the image and the same '
      + 'writes, opened with QEMU\'s default cache (writeback, so reads may come from the page cache); "vs nbdcopy+sync" there '
      + 'compares with the libvirt export\'s floor.',
    ...(rounds.every((r) => r.qEnc) ? [`- Encryption at rest: the QMP full into an encrypted repository (AES-256-GCM per object, a key file) took `
      + `${rounds.map((r) => (r.qEnc.seconds / r.qNone.seconds).toFixed(2)).join(', ')}× the time of the same full into a plain one (per round).`] : []),
    `- Start-up, median of 5 (min–max): ${Object.entries(startup).map(([k, t]) => `\`fleece ${k}\` ${(t.median * 1000).toFixed(0)} ms (${(t.min * 1000).toFixed(0)}–${(t.max * 1000).toFixed(0)})`).join(', ')}.`,
    `- Peak RSS: \`/usr/bin/time -v\` (maximum resident set size of the process), the highest over the rounds.`,
    ...(Number.isFinite(hash) ? [`- The Cinder hashing alone (sha256 per 32 KiB + md5 per 4 MiB on ${ctx.threads} threads, reads not timed) runs at ${hash.toFixed(0)} MiB/s here (best of the rounds).`] : []),
  ];
  return { markdown: lines.join('\n'), text: formatTable(HEADERS, rows.map((r) => r.cells)), aimList, ok };
}

const MARKER = '<!-- Everything below is written by `npm run bench` (scripts/bench.mjs); edit above this line only. -->';

function writeBenchmarks(text) {
  const path = join(root, 'BENCHMARKS.md');
  const existing = existsSync(path) ? readFileSync(path, 'utf8') : '# Benchmarks\n\n';
  const head = existing.includes(MARKER) ? existing.slice(0, existing.indexOf(MARKER)) : `${existing.trimEnd()}\n\n`;
  writeFileSync(path, `${head}${MARKER}\n\n## Latest run\n\n${text}\n`);
  return path;
}

// ---- main --------------------------------------------------------------------------------------------------------

async function main() {
  const t0 = performance.now();
  const size = parseSize(process.env.FLEECE_BENCH_SIZE ?? '4G', 'FLEECE_BENCH_SIZE');
  const threads = availableParallelism();
  const activity = await machineActivity();
  const work = await mkdtemp(join(process.env.FLEECE_BENCH_DIR ?? tmpdir(), 'fleece-bench-'));
  held.work = work;
  for (const sub of ['run', 'state', 'config', 'qemu']) await mkdir(join(work, sub));
  if (PROF_DIR) await mkdir(PROF_DIR, { recursive: true });
  log(`fleece vs virtnbdbackup in ${work}: ${formatBytes(size)} disk, ${ROUNDS} round(s), ${threads} cores; CPU in use before `
    + `${activity.cpuBusy}, load ${activity.load}${activity.busy.length ? `; busy: ${activity.busy.join(', ')}` : ''}`);
  const account = startCpuAccount(work);

  const peer = await peerStatus();
  if (!peer.ok) log(`\n${peer.why}\n  the peer's column stays empty; the rest runs`);
  const libvirt = libvirtAvailability();
  if (!libvirt.ok) log(`\nno libvirt here (${libvirt.why}): only fleece's QMP path runs`);

  const version = async (cmd, args) => (await run(cmd, args).catch(() => ({ stdout: '' }))).stdout.split('\n')[0].replace(/ \(.*\)/, '').trim();
  const facts = {
    date: new Date().toISOString().replace(/\.\d+Z$/, 'Z'), cpu: await cpuModel(), nproc: cpus().length,
    memGiB: Math.round(totalmem() / 1024 ** 3), activity,
    qemu: await version('qemu-system-x86_64', ['--version']), libvirt: `libvirt ${await version('virsh', ['--version'])}`,
    nbdcopy: await version('nbdcopy', ['--version']),
    // The build benchmarked and the tree beside it (the bench's own files and this page do not count as changes).
    fleece: `fleece ${await version(process.execPath, [CLI, '--version'])} (${CLI === join(root, 'dist/src/cli/main.js') ? 'dist/' : CLI} built `
      + `${statSync(CLI).mtime.toISOString().replace(/\.\d+Z$/, 'Z')}; the tree is at ${await version('git', ['rev-parse', '--short', 'HEAD'])}`
      + `${(await run('git', ['status', '--porcelain', '--untracked-files=no'])).stdout.split('\n')
        .filter((l) => l.trim() && !/BENCHMARKS\.md|scripts\/bench|scripts\/install-bench-deps/.test(l)).length ? ' + uncommitted changes' : ''})`,
  };
  log(`host: ${facts.cpu}, ${facts.nproc} cores, ${facts.memGiB} GiB RAM`);
  facts.direct = await directWriteRate(work);
  log(`  direct writes in ${work}: ${facts.direct.mibps.toFixed(0)} MiB/s (${facts.direct.tool})`);

  log('\nbuilding the disk (offline)');
  const disk = await createMixedDisk(join(work, 'vda.qcow2'), { size });
  const qmpImage = join(work, 'vda-qmp.qcow2');
  // --sparse=never: cp's hole detection would turn the qcow2's allocated zero clusters into file holes, which QEMU then
  // reports as zeros (not read); this copy has the same bytes and the same block status.
  await mustRun('cp', ['--sparse=never', disk.path, qmpImage]);
  log(`  ${formatBytes(disk.allocated)} allocated of ${formatBytes(size)}; a byte-identical copy for the bare QEMU`);
  const pattern = join(work, 'random-4m.bin');
  writeRandomPatternFile(pattern);

  held.qemu = await startQemuSystem({ disks: [{ path: qmpImage, format: 'qcow2', target: 'vda' }], dir: join(work, 'qemu'), extraQmpSockets: 1 });
  let h;
  let domain;
  if (libvirt.ok) {
    // The private libvirtd's directory under the work dir (the harness names it after FLEECE_TEST_LIBVIRT_DIR).
    process.env.FLEECE_TEST_LIBVIRT_DIR = join(work, 'libvirt');
    held.libvirt = dedicatedLibvirt('bench');
    h = await held.libvirt;
    domain = await defineTestDomain(h, { name: DOMAIN, disks: [{ target: 'vda', path: disk.path, format: 'qcow2' }], start: false });
    await h.virsh(['start', '--paused', DOMAIN]);
    facts.cache = /cache='([^']+)'/.exec(domain.xml)?.[1] ?? '?';
    log(`  libvirt domain ${DOMAIN} (paused, cache='${facts.cache}') at ${h.uri}`);
  }

  const ctx = { work, disk, qmpImage, qemu: held.qemu, h, domain, peer, size, pattern, threads };
  // Another round only while it should end within the time budget (a round as long as the last one).
  const rounds = [];
  for (let n = 1; n <= ROUNDS; n++) {
    const started = performance.now();
    rounds.push(await oneRound(n, ctx));
    const last = performance.now() - started;
    if (n < ROUNDS && performance.now() - t0 + last > BUDGET_MIN * 60_000) {
      log(`\nstopping after round ${n} of ${ROUNDS}: another would end past the ${BUDGET_MIN}-minute budget (FLEECE_BENCH_BUDGET)`);
      facts.budgetStop = `${n} of the ${ROUNDS} rounds asked for ran: another would have ended past the ${BUDGET_MIN}-minute time budget (FLEECE_BENCH_BUDGET)`;
      break;
    }
  }
  const s3 = process.env.FLEECE_BENCH_S3 === '0' ? undefined : await s3Section(ctx);
  facts.others = account.stop();
  facts.minutes = (performance.now() - t0) / 60000;

  const { markdown: main, text: table, aimList, ok: restoresOk } = report(ctx, rounds, facts);
  const markdown = [main, ...s3Markdown(s3)].join('\n');
  const ok = restoresOk && s3?.restore?.ok !== false;
  log(`\n${table}\n`);
  for (const a of aimList) log(`  ${a.met === undefined ? ' ' : a.met ? '✓' : '✗'} ${a.aim}: ${a.value}`);
  log(`\nother processes used ${facts.others.toFixed(0)} % of one core during the run; the whole run took ${((performance.now() - t0) / 60000).toFixed(1)} min`);
  if (process.env.FLEECE_BENCH_NO_WRITE === '1') {
    const path = join(tmpdir(), 'fleece-bench-latest.md');
    writeFileSync(path, `${markdown}\n`);
    log(`FLEECE_BENCH_NO_WRITE=1: BENCHMARKS.md untouched; the Markdown is in ${path}`);
  }
  else log(`written to ${writeBenchmarks(markdown)}`);
  return ok ? 0 : 1;
}

main().then(
  async (code) => { await cleanup(); process.exitCode = code; },
  async (error) => {
    console.error(`\nbenchmark failed: ${error?.stack ?? error}`);
    await cleanup();
    process.exitCode = 1;
  },
);
