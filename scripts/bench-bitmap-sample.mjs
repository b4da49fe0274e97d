// What distrusting the dirty bitmap costs, side by side in one run on this host (docs/retention.md quotes it):
//   1. an incremental at --verify-bitmap 0 against the same incremental at the default sample (0.5 %);
//   2. a compare incremental (a raw disk: read everything, store what differs) against a changed-extents one (a qcow2
//      disk with the same content and the same writes).
// A bare QEMU (test harness, paused TCG guest) with two disks of FLEECE_BENCH_SIZE (default 1 GiB, 60 % random data);
// each round the guest writes 1 % of each disk (1 MiB writes at random places) before each backup, and the order of
// the two sample settings alternates from round to round. Needs `npx tsc -p tsconfig.json` first (runs dist/).
// Usage: node scripts/bench-bitmap-sample.mjs [rounds=4]
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { startQemuSystem } from '../dist/test/harness/qemu.js';

const MiB = 1024 * 1024;
const size = Number(process.env.FLEECE_BENCH_SIZE ?? 1024 * MiB);
const rounds = Number(process.argv[2] ?? 4);
const dir = mkdtempSync(join(tmpdir(), 'fleece-bench-bitmap-'));
const cli = join(process.cwd(), 'dist', 'src', 'cli', 'main.js');
const env = { ...process.env, FLEECE_STATE_DIR: join(dir, 'state'), FLEECE_CONFIG_DIR: join(dir, 'config'), FLEECE_RUN_DIR: join(dir, 'run'), FLEECE_LOG_LEVEL: process.env.FLEECE_BENCH_LOG ?? 'silent' };

function backup(qmp, extra) {
  const t0 = performance.now();
  const r = spawnSync(process.execPath, [cli, 'backup', 'bench', '--qmp', qmp, '--repo', join(dir, 'repo'), '--json', ...extra], { env, encoding: 'utf8' });
  const wall = (performance.now() - t0) / 1000;
  if (r.status !== 0) throw new Error(`fleece backup ${extra.join(' ')} exited ${r.status}: ${r.stderr}`);
  // With FLEECE_BENCH_LOG the log lines (one JSON object each) come first on stdout; the summary is the last document.
  for (const line of r.stdout.split('\n')) if (line.includes('bitmap sample')) console.error(line);
  const json = JSON.parse(r.stdout.slice(r.stdout.startsWith('{\n') ? 0 : r.stdout.lastIndexOf('\n{\n') + 1));
  return { wall, run: json.durationMs / 1000, disk: json.disks[0] };
}

const median = (xs) => { const s = [...xs].sort((a, b) => a - b); return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2; };

let qemu;
try {
  const raw = join(dir, 'b.img');
  const qcow2 = join(dir, 'a.qcow2');
  // 60 % of the disk random data in 8 MiB pieces with holes between, the same on both disks.
  execFileSync('truncate', ['-s', String(size), raw]);
  const pieces = Math.floor((0.6 * size) / (8 * MiB));
  const stride = Math.floor(size / (8 * MiB) / pieces) * 8 * MiB;
  for (let i = 0; i < pieces; i++) {
    execFileSync('dd', ['if=/dev/urandom', `of=${raw}`, 'bs=1M', 'count=8', `seek=${(i * stride) / MiB}`, 'conv=notrunc,sparse', 'status=none']);
  }
  execFileSync('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', raw, qcow2]);
  qemu = await startQemuSystem({ dir, disks: [{ path: qcow2, target: 'vda' }, { path: raw, target: 'vdb' }], extraQmpSockets: 1 });
  const qmp = qemu.extraQmpPaths[0];
  const writeOnePercent = async (round) => {
    for (let i = 0; i < Math.max(1, Math.round(size / 100 / MiB)); i++) {
      const at = Math.floor(((i * 7919 + round * 104729) % (size / MiB - 1))) * MiB;
      for (const t of ['vda', 'vdb']) await qemu.guestWrite(t, `write -P ${(round * 16 + i) % 255 + 1} ${at} 1M`);
    }
    for (const t of ['vda', 'vdb']) await qemu.guestWrite(t, 'flush');
  };
  backup(qmp, []); // the fulls
  const times = { trusted: [], sampled: [], check: [], changed: [], compare: [] };
  let sampleBytes = 0;
  let compareRead = 0;
  let changedRead = 0;
  for (let round = 0; round < rounds; round++) {
    const order = round % 2 === 0 ? ['0', '0.5'] : ['0.5', '0'];
    for (const [k, pct] of order.entries()) {
      await writeOnePercent(round * 2 + k);
      const inc = backup(qmp, ['--disk', 'vda', '--verify-bitmap', pct]);
      if (inc.disk.level !== 'incremental') throw new Error(`vda was ${inc.disk.level}: ${inc.disk.reason}`);
      (pct === '0' ? times.trusted : times.sampled).push(inc.run);
      if (pct === '0') { times.changed.push(inc.run); changedRead = inc.disk.bytesRead; } else { sampleBytes = inc.disk.bitmapCheck.bytes; times.check.push(inc.disk.bitmapCheck.durationMs / 1000); }
      const cmp = backup(qmp, ['--disk', 'vdb']);
      if (cmp.disk.level !== 'compare') throw new Error(`vdb was ${cmp.disk.level}: ${cmp.disk.reason}`);
      times.compare.push(cmp.run);
      compareRead = cmp.disk.bytesRead;
    }
  }
  const m = Object.fromEntries(Object.entries(times).map(([k, v]) => [k, median(v)]));
  const host = `${cpus()[0]?.model ?? 'unknown CPU'}, ${cpus().length} cores, load average ${loadavg().map((x) => x.toFixed(1)).join(' ')}`;
  console.log(JSON.stringify({ host, size, rounds, medians: m, samples: times, sampleBytes, changedRead, compareRead,
    sampleRatio: m.sampled / m.trusted, compareRatio: m.compare / m.changed }, null, 2));
} finally {
  await qemu?.stop();
  rmSync(dir, { recursive: true, force: true });
}
