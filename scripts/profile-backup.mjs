// Quick, repeatable profile of the full backup, stage by stage: `node scripts/profile-backup.mjs [writer|nbd|export|e2e]...`.
// writer: the repository writer alone (fs store), fed 1 MiB Buffers of mixed data; nbd: readExtents via qemu-nbd;
// export: readExtents (and nbdcopy) on a real fleecing export (startPullBackup); e2e: the CLI (full, none and zstd) as a
// child process under /usr/bin/time -v against a throwaway QEMU, on a cached mixed qcow2 (FLEECE_PROF_SIZE, default 2G).
// Env: FLEECE_PROF_DIR (cache, default /var/tmp/fleece-prof), FLEECE_PROF_CPU=1 (node --cpu-prof into that dir),
// FLEECE_PROF_CLIS (comma-separated CLI builds run in turn: A/B on the same QEMU), FLEECE_PROF_ROUNDS, FLEECE_PROF_CODECS,
// FLEECE_PROF_ARGS (more `fleece backup` flags), FLEECE_PROF_RESTORE=1 (time `fleece restore` of each backup too).
// Needs `npx tsc -p tsconfig.json` first (uses dist/). Not part of the test suite.
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';

const MiB = 1024 * 1024;
const dir = process.env.FLEECE_PROF_DIR ?? '/var/tmp/fleece-prof';
const sizeText = process.env.FLEECE_PROF_SIZE ?? '2G';
const { createMixedDisk, parseSize } = await import('../dist/scripts/demo/mixed-disk.js');
const log = (t) => process.stdout.write(`${t}\n`);

async function disk() {
  await mkdir(dir, { recursive: true });
  const path = join(dir, `vda-${sizeText}.qcow2`);
  const meta = `${path}.json`;
  if (!existsSync(meta)) {
    const d = await createMixedDisk(path, { size: parseSize(sizeText, 'FLEECE_PROF_SIZE') });
    (await import('node:fs')).writeFileSync(meta, JSON.stringify({ allocated: d.allocated }));
  }
  return { path, size: parseSize(sizeText, 'FLEECE_PROF_SIZE'), ...JSON.parse(readFileSync(meta, 'utf8')) };
}

function timed(cmd, args, env) {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const child = spawn('/usr/bin/time', ['-v', cmd, ...args], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = ''; let err = '';
    child.stdout.on('data', (d) => { out += d; });
    child.stderr.on('data', (d) => { err += d; });
    child.on('error', reject);
    child.on('close', (code) => {
      const seconds = (performance.now() - t0) / 1000;
      if (code !== 0) return reject(new Error(`${cmd} ${args.join(' ')} exited ${code}: ${err.slice(-2000)}`));
      const rss = Number(/Maximum resident set size \(kbytes\): (\d+)/.exec(err)?.[1] ?? 0) * 1024;
      const user = Number(/User time \(seconds\): ([\d.]+)/.exec(err)?.[1] ?? 0);
      const sys = Number(/System time \(seconds\): ([\d.]+)/.exec(err)?.[1] ?? 0);
      resolve({ seconds, rss, out, cpu: user + sys, user, sys });
    });
  });
}

/** CPU seconds (user + system) a process has used so far. */
function cpuOf(pid) {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

async function e2e() {
  const d = await disk();
  const { startQemuSystem } = await import('../dist/test/harness/qemu.js');
  const work = join(dir, 'e2e');
  await rm(work, { recursive: true, force: true });
  await mkdir(join(work, 'qemu'), { recursive: true });
  const qemu = await startQemuSystem({ disks: [{ path: d.path, format: 'qcow2', target: 'vda' }], dir: join(work, 'qemu'), extraQmpSockets: 1 });
  try {
    // FLEECE_PROF_CLIS: comma-separated CLI paths run in turn (A/B on the same QEMU), FLEECE_PROF_ROUNDS rounds.
    const clis = (process.env.FLEECE_PROF_CLIS ?? 'dist/src/cli/main.js').split(',');
    const rounds = Number(process.env.FLEECE_PROF_ROUNDS ?? 1);
    const runs = [];
    for (let round = 0; round < rounds; round++) for (const cli of clis) for (const [codec, extra] of [['none', ['--compression', 'none']], ['zstd', []]]) {
      if (!(process.env.FLEECE_PROF_CODECS ?? 'none,zstd').split(',').includes(codec)) continue;
      const label = `${codec}${clis.length > 1 ? ` ${cli}` : ''}`;
      runs.push([label, extra, cli]);
    }
    for (const [i, [label, extra, cli]] of runs.entries()) {
      const repo = join(work, 'repo');
      const prof = process.env.FLEECE_PROF_CPU === '1' ? ['--cpu-prof', '--cpu-prof-dir', join(dir, `prof-${i}-${label.split(' ')[0]}`)] : [];
      const q0 = cpuOf(qemu.pid);
      const r = await timed('node', [...prof, cli, 'backup', 'prof', '--qmp', qemu.extraQmpPaths[0], '--repo', repo,
        '--state-dir', join(work, `state-${i}`), '--json', '--full', ...extra, ...(process.env.FLEECE_PROF_ARGS ?? '').split(' ').filter(Boolean)], { ...process.env, FLEECE_RUN_DIR: join(work, 'run') });
      const rep = JSON.parse(r.out);
      log(`e2e full ${label}: ${(rep.bytesRead / MiB).toFixed(0)} MiB in ${r.seconds.toFixed(2)} s = ${(rep.bytesRead / MiB / r.seconds).toFixed(0)} MiB/s, `
        + `stored ${(rep.bytesStored / MiB).toFixed(0)} MiB, peak RSS ${(r.rss / MiB).toFixed(0)} MiB, CPU ${r.cpu.toFixed(2)} s `
        + `(user ${r.user.toFixed(2)} sys ${r.sys.toFixed(2)}; ${(r.cpu / (rep.bytesRead / 1024 ** 3)).toFixed(2)} core-s/GiB), QEMU CPU ${(cpuOf(qemu.pid) - q0).toFixed(2)} s`);
      if (process.env.FLEECE_PROF_RESTORE === '1') {
        const out = join(work, 'restored.raw');
        const backup = rep.disks[0].backupId;
        const rr = await timed('node', [cli, 'restore', '--repo', repo, '--backup', backup, '--out', out, '--json'], process.env);
        log(`  restore ${label}: ${(d.size / MiB).toFixed(0)} MiB virtual in ${rr.seconds.toFixed(2)} s = ${(d.size / MiB / rr.seconds).toFixed(0)} MiB/s, `
          + `peak RSS ${(rr.rss / MiB).toFixed(0)} MiB, CPU user ${rr.user.toFixed(2)} sys ${rr.sys.toFixed(2)}`);
        await rm(out, { force: true });
      }
      await rm(repo, { recursive: true, force: true });
    }
  } finally {
    await qemu.stop();
  }
}

async function writer() {
  const { openRepository } = await import('../dist/src/repository/index.js');
  const total = parseSize(sizeText, 'FLEECE_PROF_SIZE');
  const pool = Buffer.alloc(64 * MiB);
  (await import('node:crypto')).randomFillSync(pool.subarray(0, 40 * MiB));
  const text = Buffer.from('2026-11-23 11:00:00 host kernel: [ 12.345] eth0: link up, 1000 Mbps, full duplex, lpa 0x45E1\n');
  for (let at = 40 * MiB; at < 64 * MiB; at += text.length) text.copy(pool, at);
  for (const codec of ['none', 'zstd']) {
    const root = join(dir, `writer-${codec}`);
    await rm(root, { recursive: true, force: true });
    const repo = await openRepository(root);
    const t0 = performance.now();
    const c0 = process.cpuUsage();
    const w = await repo.startBackup({ volumeId: 'v', size: total, mode: 'full', compression: codec });
    const piece = Buffer.allocUnsafe(MiB);
    for (let off = 0; off < total; off += MiB) {
      pool.copy(piece, 0, off % pool.length, off % pool.length + MiB);
      await w.write({ offset: off, length: MiB, data: piece });
    }
    await w.finish();
    const s = (performance.now() - t0) / 1000;
    const c = process.cpuUsage(c0);
    log(`writer alone ${codec}: ${(total / MiB / s).toFixed(0)} MiB/s (${s.toFixed(2)} s), CPU ${((c.user + c.system) / 1e6).toFixed(2)} s, rss now ${(process.memoryUsage().rss / MiB).toFixed(0)} MiB`);
    await rm(root, { recursive: true, force: true });
  }
}

async function nbd() {
  const d = await disk();
  const { NbdSource } = await import('../dist/src/nbd/nbd-source.js');
  const { allocatedExtents } = await import('../dist/src/nbd/context-extents.js');
  const { readExtents } = await import('../dist/src/nbd/read-extents.js');
  const sock = join(dir, 'nbd.sock');
  await rm(sock, { force: true });
  const server = spawn('qemu-nbd', ['-r', '-f', 'qcow2', '-t', '-e', '4', '-k', sock, d.path], { stdio: 'ignore' });
  try {
    for (let i = 0; i < 50 && !existsSync(sock); i++) await new Promise((r) => setTimeout(r, 100));
    for (const maxRequest of [MiB, 4 * MiB]) {
      const source = await NbdSource.open({ socket: sock, exportName: '' }, { connections: 2 });
      const ex = [];
      for await (const e of allocatedExtents(source)) if (!e.zero) ex.push({ offset: e.offset, length: e.length });
      const t0 = performance.now();
      let n = 0;
      for await (const p of readExtents(source, ex, { reuseBuffers: true, maxRequest })) n += p.length;
      const s = (performance.now() - t0) / 1000;
      log(`nbd read alone (qemu-nbd, ${maxRequest / MiB} MiB requests): ${(n / MiB).toFixed(0)} MiB, ${(n / MiB / s).toFixed(0)} MiB/s`);
      await source.close();
    }
  } finally {
    server.kill();
  }
}

async function exportRead() {
  const d = await disk();
  const { startQemuSystem } = await import('../dist/test/harness/qemu.js');
  const { queryDisks } = await import('../dist/src/qemu/block-graph.js');
  const { startPullBackup } = await import('../dist/src/backup/pull-backup.js');
  const { BackupRegistry } = await import('../dist/src/backup/backup-registry.js');
  const { NbdSource } = await import('../dist/src/nbd/nbd-source.js');
  const { allocatedExtents } = await import('../dist/src/nbd/context-extents.js');
  const { readExtents } = await import('../dist/src/nbd/read-extents.js');
  const work = join(dir, 'export');
  await rm(work, { recursive: true, force: true });
  for (const sub of ['qemu', 'scratch', 'run']) await mkdir(join(work, sub), { recursive: true });
  const qemu = await startQemuSystem({ disks: [{ path: d.path, format: 'qcow2', target: 'vda' }], dir: join(work, 'qemu') });
  try {
    const [vda] = (await queryDisks(qemu.client)).filter((x) => x.target === 'vda');
    const session = await startPullBackup({ vm: 'prof', qmp: qemu.client, registry: new BackupRegistry(), disks: [{ disk: vda }],
      scratchDir: join(work, 'scratch'), runDir: join(work, 'run') });
    try {
      const exp = session.exports[0];
      let t0 = performance.now();
      spawnSync('nbdcopy', [exp.uri, 'null:']);
      log(`nbdcopy → null: ${(d.allocated / MiB / ((performance.now() - t0) / 1000)).toFixed(0)} MiB/s`);
      for (const [maxRequest, concurrency, connections] of [[MiB, 8, 2], [4 * MiB, 8, 2], [4 * MiB, 16, 4], [MiB, 16, 4]]) {
        const source = await NbdSource.open({ socket: exp.socket, exportName: exp.exportName }, { connections });
        const ex = [];
        for await (const e of allocatedExtents(source)) if (!e.zero) ex.push({ offset: e.offset, length: e.length });
        t0 = performance.now();
        let n = 0;
        for await (const p of readExtents(source, ex, { reuseBuffers: true, maxRequest, concurrency })) n += p.length;
        const s = (performance.now() - t0) / 1000;
        log(`export read alone (${maxRequest / MiB} MiB × ${concurrency}, ${connections} conns): ${(n / MiB / s).toFixed(0)} MiB/s`);
        await source.close();
      }
    } finally {
      await session.abort();
    }
  } finally {
    await qemu.stop();
  }
}

for (const stage of process.argv.slice(2).length ? process.argv.slice(2) : ['writer', 'nbd', 'e2e']) {
  await ({ e2e, writer, nbd, export: exportRead })[stage]();
}
