#!/usr/bin/env node
// Encryption benchmark: the same full backup (and its restore) into a plain and an encrypted repository, side by side,
// alternating rounds so that a busy machine slows both alike; prints the ratio. Not run by the tests.
// Needs the compiled output: `npx tsc -p tsconfig.json` first (imports dist/src/...).
// Usage: node scripts/bench-encryption.mjs [sizeGiB=1] [rounds=3] [dir=/tmp] [compression=zstd]
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';

const { openRepository } = await import('../dist/src/repository/repository.js');
const { initRepository, generateKeyFile } = await import('../dist/src/app/repo-init.js');
const { restoreBackup } = await import('../dist/src/restore/restore.js');
const { createSparseFileSink } = await import('../dist/src/restore/file-sink.js');

const MiB = 1024 * 1024;
const PIECE = 4 * MiB;
const sizeGiB = Number(process.argv[2] ?? 1);
const rounds = Number(process.argv[3] ?? 3);
const base = process.argv[4] ?? tmpdir();
const compression = process.argv[5] ?? 'zstd';
const size = Math.round(sizeGiB * 1024 ** 3);

const cpuinfo = await readFile('/proc/cpuinfo', 'utf8').catch(() => '');
const aesNi = /^flags\s*:.*\baes\b/m.test(cpuinfo);
const vaes = /^flags\s*:.*\bvaes\b/m.test(cpuinfo);
const model = /^model name\s*:\s*(.*)$/m.exec(cpuinfo)?.[1] ?? 'unknown CPU';

// Per 4 MiB piece: half random (incompressible: what encryption costs most on), half text-like.
const random = randomBytes(PIECE);
const text = Buffer.alloc(PIECE);
for (let i = 0, n = 0; i < PIECE; n++) i += text.write(`${n} the quick brown fox jumps over the lazy dog ${n * 7919 % 10007}\n`, i);
function* extents() {
  for (let offset = 0, i = 0; offset < size; offset += PIECE, i++) {
    const src = i % 2 === 0 ? random : text;
    src[0] = i & 0xff;
    const length = Math.min(PIECE, size - offset);
    yield { offset, length, data: Buffer.from(src.subarray(0, length)) };
  }
}

const seconds = (start) => Number(process.hrtime.bigint() - start) / 1e9;

const dir = await mkdtemp(join(base, 'fleece-bench-enc-'));
try {
  const key = join(dir, 'bench.key');
  await generateKeyFile(key);
  console.log(`${model}; AES-NI ${aesNi ? 'yes' : 'NO'}${vaes ? ' (VAES too)' : ''}; node ${process.version}`);
  // the cipher alone, on one core: what encryption adds per byte, without the pipeline around it
  {
    const { sealObject } = await import('../dist/src/repository/crypto/object-seal.js');
    const k = randomBytes(32);
    const place = { repositoryId: 'bench', container: 'c', name: 'n', offset: 0 };
    let bytes = 0;
    const start = process.hrtime.bigint();
    while (seconds(start) < 2) { sealObject(k, random, place); bytes += random.length; }
    console.log(`AES-256-GCM sealing 4 MiB objects on one core: ${(bytes / MiB / seconds(start)).toFixed(0)} MiB/s`);
  }
  console.log(`source: ${sizeGiB} GiB (half random, half text), ${compression}, ${rounds} rounds alternating plain and encrypted, in ${dir}`);
  const results = { plain: { backup: [], restore: [] }, encrypted: { backup: [], restore: [] } };
  for (let round = 0; round < rounds; round++) {
    for (const kind of round % 2 === 0 ? ['plain', 'encrypted'] : ['encrypted', 'plain']) {
      const location = join(dir, `${kind}-${round}`);
      if (kind === 'encrypted') await initRepository({ location, encrypt: true, key: { kind: 'key-file', path: key } });
      const repo = await openRepository(location, { key: { kind: 'key-file', path: key } });
      let start = process.hrtime.bigint();
      const writer = await repo.startBackup({ volumeId: 'bench', size, compression });
      for (const e of extents()) await writer.write(e);
      const summary = await writer.finish();
      results[kind].backup.push(seconds(start));
      const out = join(dir, `${kind}-${round}.raw`);
      const sink = await createSparseFileSink(out, size);
      start = process.hrtime.bigint();
      await restoreBackup(repo, summary.backupId, sink);
      await sink.close();
      results[kind].restore.push(seconds(start));
      await rm(out, { force: true });
      await rm(location, { recursive: true, force: true });
    }
  }
  const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
  for (const phase of ['backup', 'restore']) {
    const p = median(results.plain[phase]);
    const e = median(results.encrypted[phase]);
    console.log(`${phase.padEnd(7)}: plain ${(size / MiB / p).toFixed(0)} MiB/s (${p.toFixed(2)} s), encrypted ${(size / MiB / e).toFixed(0)} MiB/s (${e.toFixed(2)} s): encrypted/plain time ${(e / p).toFixed(3)}`);
  }
  console.log('(medians; the ratio is what to read on a shared machine, not the absolute rates)');
} finally {
  await rm(dir, { recursive: true, force: true });
}
