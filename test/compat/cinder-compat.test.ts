// Cinder compatibility: an independent Python reader restores fleece chains, and fleece restores chains the Python writer made.
import { execFileSync } from 'node:child_process';
import { readFile, writeFile, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { randomUUID } from 'node:crypto';
import { makeTempDir, removeTempDir } from '../harness/temp-dir.js';
import { openRepository, type Repository } from '../../src/repository/repository.js';
import { alignRangesToBlocks, type Extent } from '../../src/repository/extents.js';
import { createSparseFileSink } from '../../src/restore/file-sink.js';
import { restoreBackup } from '../../src/restore/restore.js';
import { initRepository } from '../../src/app/repo-init.js';
import { allocatedExtents, mixedDisk, sha } from '../unit/repository/disk-images.js';

const SCRIPT = join(process.cwd(), 'test/compat/cinder_restore.py');
const python = (...args: string[]) => execFileSync('python3', [SCRIPT, ...args], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });

let dir: string;
beforeEach(async () => { dir = await makeTempDir('compat'); });
afterEach(async () => { await removeTempDir(dir); });

async function write(repo: Repository, extents: Extent[], opts: Parameters<Repository['startBackup']>[0]) {
  const w = await repo.startBackup({ workers: 2, ...opts });
  for (const e of extents) await w.write(e);
  return w.finish();
}

function overwrite(disk: Buffer, at: number[], len: number, fill: number): { disk: Buffer; ranges: { offset: number; length: number }[] } {
  const next = Buffer.from(disk);
  for (const offset of at) next.fill(fill, offset, offset + len);
  return { disk: next, ranges: at.map((offset) => ({ offset, length: len })) };
}

it('the Python Cinder reader restores a fleece chain (zstd, zlib, none) byte-identically, manifests are json.dumps-exact', async () => {
  const size = 3 * 1024 * 1024 + 12345;
  const repo = await openRepository(join(dir, 'repo'));
  const d0 = mixedDisk(size, 21);
  const full = await write(repo, allocatedExtents(d0), { volumeId: 'vol-a', size, compression: 'zstd', chunkSize: 512 * 1024, vm: 'vm1', disk: 'vda' });
  const m1 = overwrite(d0, [0, 100000, 2 * 1024 * 1024 + 5], 7000, 0x5a);
  const inc1 = await write(repo, alignRangesToBlocks(m1.ranges, 32768, size).map((r) => ({ ...r, data: m1.disk.subarray(r.offset, r.offset + r.length) })),
    { volumeId: 'vol-a', size, parent: full.backupId, mode: 'changed-extents', compression: 'zlib' });
  const m2 = overwrite(m1.disk, [50000, size - 3000], 3000, 0);
  const inc2 = await write(repo, allocatedExtents(m2.disk), { volumeId: 'vol-a', size, parent: inc1.backupId, mode: 'compare', compression: 'none' });
  for (const [id, disk] of [[full.backupId, d0], [inc1.backupId, m1.disk], [inc2.backupId, m2.disk]] as const) {
    const out = join(dir, `${id}.raw`);
    python('restore', join(dir, 'repo'), id, out, String(size));
    expect(sha(await readFile(out))).toBe(sha(disk));
  }
  const container = join(dir, 'repo', inc1.container);
  for (const name of (await readdir(container)).filter((n) => n.endsWith('_metadata') || n.endsWith('_sha256file'))) {
    const text = await readFile(join(container, name), 'utf8');
    expect(python('canon', join(container, name))).toBe(text);
  }
});

it('fleece restores a chain written by the Python Cinder writer (bz2 and zlib objects, Cinder naming)', async () => {
  const size = 2 * 1024 * 1024 + 777;
  const root = join(dir, 'repo');
  const d0 = mixedDisk(size, 33);
  const m1 = overwrite(d0, [4096, 1500000], 40000, 0x33);
  await writeFile(join(dir, 'd0.raw'), d0);
  await writeFile(join(dir, 'd1.raw'), m1.disk);
  const fullId = randomUUID();
  const incId = randomUUID();
  python('write', root, join(dir, 'd0.raw'), 'vol-b', fullId, '--compression', 'bz2', '--chunk-size', String(512 * 1024));
  python('write', root, join(dir, 'd1.raw'), 'vol-b', incId, '--parent', fullId, '--compression', 'zlib', '--chunk-size', String(512 * 1024));
  const repo = await openRepository(root);
  const { metadata } = await repo.load(incId);
  expect(metadata.objects.length).toBeGreaterThan(0);
  expect((await repo.load(fullId)).metadata.objects.some((o) => o.compression === 'bz2')).toBe(true);
  for (const [id, disk] of [[fullId, d0], [incId, m1.disk]] as const) {
    const sink = await createSparseFileSink(join(dir, `${id}.out`), size);
    try {
      const summary = await restoreBackup(repo, id, sink, { workers: 2 });
      expect(summary.verified).toBe(true);
    } finally {
      await sink.close();
    }
    expect(sha(await readFile(join(dir, `${id}.out`)))).toBe(sha(disk));
  }
  // verify acts on repositories only: Cinder's directory is one once `fleece repo init` adopted it
  expect(String(await repo.verify(incId).catch((e: unknown) => e))).toContain(`run \`fleece repo init ${root}\``);
  expect((await initRepository({ location: root })).adopted).toBe(true);
  const report = await repo.verify(incId, { deep: true });
  expect(report.problems).toEqual([]);
  expect((await repo.list()).map((r) => r.backupId).sort()).toEqual([fullId, incId].sort());
});
