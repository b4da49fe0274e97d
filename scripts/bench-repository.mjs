#!/usr/bin/env node
// Repository benchmark: writer throughput per codec and peak RSS on a multi-GiB generated disk, then restore throughput.
// Needs the compiled output: `npx tsc -p tsconfig.json` first (imports dist/src/...).
// Usage: node scripts/bench-repository.mjs [sizeGiB=2] [dir=/tmp]
//        node scripts/bench-repository.mjs sparse [virtualGiB=256] [dataGiB=1] [dir=/tmp] [distDir=dist]
//          peak RSS (per phase, in child processes) of a full + incremental backup of a big sparse disk with
//          little data, and of a restore into a new sparse file .
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';

const MiB = 1024 * 1024;
const PIECE = 4 << 20;
if (process.argv[2] === 'sparse') {
  await sparseBench(process.argv.slice(3));
  process.exit(0);
}
const { openRepository } = await import('../dist/src/repository/repository.js');
const { restoreBackup } = await import('../dist/src/restore/restore.js');
const { createSparseFileSink } = await import('../dist/src/restore/file-sink.js');

const sizeGiB = Number(process.argv[2] ?? 2);
const base = process.argv[3] ?? tmpdir();
const size = Math.round(sizeGiB * 1024 ** 3);

// The source: per 4 MiB piece, one third random, one third text-like, one third zeros (zeros passed as holes).
const random = randomBytes(PIECE);
const text = Buffer.alloc(PIECE);
for (let i = 0, n = 0; i < PIECE; n++) i += text.write(`${n} the quick brown fox jumps over the lazy dog ${n * 7919 % 10007}\n`, i);
function* extents() {
  for (let offset = 0, i = 0; offset < size; offset += PIECE, i++) {
    const length = Math.min(PIECE, size - offset);
    const kind = i % 3;
    if (kind === 2) continue; // a hole: not passed
    const src = kind === 0 ? random : text;
    src[0] = i & 0xff; // vary so no two pieces are identical
    yield { offset, length, data: Buffer.from(src.subarray(0, length)) };
  }
}

let peakRss = 0;
const timer = setInterval(() => { peakRss = Math.max(peakRss, process.memoryUsage.rss()); }, 50);

const dir = await mkdtemp(join(base, 'fleece-bench-'));
try {
  console.log(`source: ${sizeGiB} GiB (1/3 random, 1/3 text, 1/3 holes), repository in ${dir}`);
  let lastId;
  for (const compression of ['none', 'zstd', 'zlib']) {
    const repo = await openRepository(join(dir, compression));
    peakRss = process.memoryUsage.rss();
    const start = process.hrtime.bigint();
    const writer = await repo.startBackup({ volumeId: 'bench', size, compression });
    for (const e of extents()) await writer.write(e);
    const s = await writer.finish();
    const secs = Number(process.hrtime.bigint() - start) / 1e9;
    console.log(`write ${compression.padEnd(4)}: ${(size / MiB / secs).toFixed(0)} MiB/s of disk, ${(s.bytesRead / MiB / secs).toFixed(0)} MiB/s of data read, `
      + `stored ${(s.bytesStored / MiB).toFixed(0)} MiB in ${s.objects} objects, ${secs.toFixed(1)} s, peak RSS ${(peakRss / MiB).toFixed(0)} MiB`);
    if (compression === 'zstd') lastId = { repo, id: s.backupId };
    else if (compression !== 'none') await rm(join(dir, compression), { recursive: true, force: true });
  }
  peakRss = process.memoryUsage.rss();
  const out = join(dir, 'restored.raw');
  const sink = await createSparseFileSink(out, size);
  const start = process.hrtime.bigint();
  const r = await restoreBackup(lastId.repo, lastId.id, sink);
  await sink.close();
  const secs = Number(process.hrtime.bigint() - start) / 1e9;
  console.log(`restore zstd: ${(size / MiB / secs).toFixed(0)} MiB/s of disk (${(r.bytesWritten / MiB / secs).toFixed(0)} MiB/s of data) incl. re-hash of the whole disk, ${secs.toFixed(1)} s, peak RSS ${(peakRss / MiB).toFixed(0)} MiB`);
  const start2 = process.hrtime.bigint();
  const sink2 = await createSparseFileSink(join(dir, 'restored2.raw'), size);
  await restoreBackup(lastId.repo, lastId.id, sink2, { verifyHashes: false });
  await sink2.close();
  const secs2 = Number(process.hrtime.bigint() - start2) / 1e9;
  console.log(`restore zstd without re-hash: ${(size / MiB / secs2).toFixed(0)} MiB/s of disk, ${secs2.toFixed(1)} s`);
} finally {
  clearInterval(timer);
  await rm(dir, { recursive: true, force: true });
}

/**
 * Sparse mode: a driver spawns this script once per phase (full, incremental, restore) so each phase's peak RSS
 * (getrusage maxrss) is its own. The disk: `dataGiB` of data in 4 MiB pieces scattered over `virtualGiB`;
 * the incremental rewrites 1/16 of those pieces (changed-extents); the restore goes into a new sparse file,
 * whose allocated size must stay close to the data size.
 */
async function sparseBench(args) {
  const { spawnSync } = await import('node:child_process');
  const { stat } = await import('node:fs/promises');
  const { fileURLToPath } = await import('node:url');
  const phase = args[0]?.startsWith('--phase=') ? args.shift().slice(8) : undefined;
  const virtualGiB = Number(args[0] ?? 256);
  const dataGiB = Number(args[1] ?? 1);
  const work = args[2] ?? tmpdir();
  const dist = args[3] ?? fileURLToPath(new URL('../dist', import.meta.url));
  const virtual = virtualGiB * 1024 ** 3;
  const pieces = Math.round(dataGiB * 256);
  const stride = Math.floor(virtual / pieces / PIECE) * PIECE;
  const { createCipheriv, createHash } = await import('node:crypto');
  const piece = (i, gen) => { // deterministic: a quarter AES-CTR keystream (incompressible), the rest text
    const b = Buffer.alloc(PIECE, `${gen}:${i} some data that compresses well ${i * 7919 % 10007}\n`);
    const key = createHash('sha256').update(`${gen}:${i}`).digest().subarray(0, 16);
    createCipheriv('aes-128-ctr', key, Buffer.alloc(16)).update(Buffer.alloc(PIECE / 4)).copy(b, 0);
    return b;
  };
  const t0 = process.hrtime.bigint();
  const secs = () => Number(process.hrtime.bigint() - t0) / 1e9;
  if (phase === undefined) {
    const dir = await mkdtemp(join(work, 'fleece-bench-sparse-'));
    console.log(`sparse disk: ${virtualGiB} GiB virtual, ${pieces} pieces of 4 MiB (${dataGiB} GiB) every ${stride / MiB} MiB; code from ${dist}`);
    try {
      for (const p of ['full', 'incremental', 'restore']) {
        const r = spawnSync(process.execPath, [fileURLToPath(import.meta.url), 'sparse', `--phase=${p}`, String(virtualGiB), String(dataGiB), dir, dist], { encoding: 'utf8', maxBuffer: 1 << 24 });
        const line = (r.stdout ?? '').trim().split('\n').pop();
        if (r.status !== 0) { console.log(`${p.padEnd(11)}: FAILED (${(r.stderr ?? '').trim().split('\n').filter((l) => /Error|error/.test(l)).slice(0, 2).join(' | ')})`); break; }
        console.log(`${p.padEnd(11)}: ${line}`);
      }
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
    return;
  }
  const { openRepository } = await import(join(dist, 'src/repository/repository.js'));
  const { restoreBackup } = await import(join(dist, 'src/restore/restore.js'));
  const { createSparseFileSink } = await import(join(dist, 'src/restore/file-sink.js'));
  const repo = await openRepository(join(work, 'repo'));
  const { writeFile, readFile } = await import('node:fs/promises');
  const rss = () => `peak RSS ${(process.resourceUsage().maxRSS / 1024).toFixed(0)} MiB`;
  if (phase === 'full' || phase === 'incremental') {
    const parent = phase === 'incremental' ? (await readFile(join(work, 'full.id'), 'utf8')) : undefined;
    const writer = await repo.startBackup({ volumeId: 'sparse', size: virtual, ...(parent ? { parent, mode: 'changed-extents' } : {}) });
    for (let i = 0; i < pieces; i++) {
      if (parent && i % 16 !== 0) continue;
      await writer.write({ offset: i * stride, length: PIECE, data: piece(i, phase) });
    }
    const s = await writer.finish();
    await writeFile(join(work, `${phase}.id`), s.backupId);
    const shaSize = (await repo.store.list(s.container, s.prefix)).find((o) => o.name.endsWith('_sha256file')).size;
    console.log(`${(s.bytesRead / MiB).toFixed(0)} MiB read, ${s.objects} objects, sha256file ${(shaSize / MiB).toFixed(0)} MiB, ${secs().toFixed(1)} s, ${rss()}`);
  } else {
    const id = await readFile(join(work, 'incremental.id'), 'utf8');
    const out = join(work, 'restored.raw');
    const sink = await createSparseFileSink(out, virtual);
    const r = await restoreBackup(repo, id, sink);
    await sink.close();
    const st = await stat(out);
    const check = await import('node:fs/promises').then(async (fs) => {
      const h = await fs.open(out, 'r');
      try {
        const got = Buffer.alloc(PIECE);
        for (const i of [0, 16, 1, pieces - 1]) {
          await h.read(got, 0, PIECE, i * stride);
          if (!got.equals(piece(i, i % 16 === 0 ? 'incremental' : 'full'))) return `piece ${i} DIFFERS`;
        }
        return 'spot-checked pieces identical';
      } finally { await h.close(); }
    });
    console.log(`${r.objects} objects, ${(r.bytesWritten / MiB).toFixed(0)} MiB written, verified ${r.verified}, file allocates ${(st.blocks * 512 / MiB).toFixed(0)} MiB of ${virtualGiB} GiB, ${check}, ${secs().toFixed(1)} s, ${rss()}`);
  }
}
