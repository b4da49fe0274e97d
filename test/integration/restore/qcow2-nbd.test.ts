// Restore of a chain straight into a new qcow2 through qemu-nbd (src/restore/nbd-target.ts): byte for byte, sparse, and
// an aborted restore leaves neither the image nor a qemu-nbd process.
import { access, readFile, readdir, writeFile } from 'node:fs/promises';
import { setTimeout as delay } from 'node:timers/promises';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { execFileSync } from 'node:child_process';
import { makeTempDir, removeTempDir } from '../../harness/temp-dir.js';
import { startCli } from '../../e2e/helpers.js';
import { openRepository, type Repository } from '../../../src/repository/repository.js';
import { alignRangesToBlocks, type Extent } from '../../../src/repository/extents.js';
import { restoreToQcow2 } from '../../../src/restore/qcow2-output.js';
import { createSparseFileSink } from '../../../src/restore/file-sink.js';
import { restoreBackup } from '../../../src/restore/restore.js';
import { allocatedExtents, sha } from '../../unit/repository/disk-images.js';

const MiB = 1024 * 1024;
const SIZE = 64 * MiB;
const BS = 32 * 1024;

let dir: string;
beforeEach(async () => { dir = await makeTempDir('qcow2-nbd'); });
afterEach(async () => { await removeTempDir(dir); });

function changedExtents(disk: Buffer, dirty: { offset: number; length: number }[]): Extent[] {
  return alignRangesToBlocks(dirty, BS, SIZE).map((r) => {
    const data = disk.subarray(r.offset, r.offset + r.length);
    return data.equals(Buffer.alloc(r.length)) ? { offset: r.offset, length: r.length, zero: true as const } : { offset: r.offset, length: r.length, data };
  });
}

async function backup(repo: Repository, extents: Extent[], opts: Parameters<Repository['startBackup']>[0]) {
  const writer = await repo.startBackup({ workers: 2, shaBlockSize: BS, chunkSize: 1 * MiB, ...opts });
  for (const e of extents) await writer.write(e);
  return writer.finish();
}

/** Full + 2 incrementals of a mostly empty 64 MiB disk; the first incremental zeroes 2 MiB the full had data in. */
async function chain(): Promise<{ repo: Repository; id: string; disk: Buffer }> {
  const repo = await openRepository(join(dir, 'repo'));
  const disk = Buffer.alloc(SIZE);
  randomBytes(4 * MiB).copy(disk, 1 * MiB);
  randomBytes(3 * MiB).copy(disk, 20 * MiB);
  randomBytes(512 * 1024).copy(disk, SIZE - 512 * 1024);
  const full = await backup(repo, allocatedExtents(disk), { volumeId: 'v', size: SIZE });
  // inc 1: a discard over data of the full (1.5 MiB … 3.5 MiB), and new data in the middle of an old run
  disk.fill(0, 1.5 * MiB, 3.5 * MiB);
  randomBytes(300 * 1024).copy(disk, 21 * MiB + 4096);
  const inc1 = await backup(repo, changedExtents(disk, [{ offset: 1.5 * MiB, length: 2 * MiB }, { offset: 21 * MiB + 4096, length: 300 * 1024 }]),
    { volumeId: 'v', size: SIZE, parent: full.backupId, mode: 'changed-extents' });
  // inc 2: overwrites part of what inc 1 wrote and data far away
  randomBytes(100 * 1024).copy(disk, 21 * MiB + 64 * 1024);
  randomBytes(1 * MiB).copy(disk, 40 * MiB);
  const inc2 = await backup(repo, changedExtents(disk, [{ offset: 21 * MiB + 64 * 1024, length: 100 * 1024 }, { offset: 40 * MiB, length: 1 * MiB }]),
    { volumeId: 'v', size: SIZE, parent: inc1.backupId, mode: 'changed-extents' });
  return { repo, id: inc2.backupId, disk };
}

function qemuNbdServing(path: string): number[] {
  const out = execFileSync('ps', ['-eo', 'pid=,args='], { encoding: 'utf8' });
  return out.split('\n').filter((l) => l.includes('qemu-nbd') && l.includes(path)).map((l) => Number(l.trim().split(/\s+/)[0]));
}

it('restores full + 2 incrementals (one zeroing the full\'s data) into a sparse qcow2, byte for byte', async () => {
  const { repo, id, disk } = await chain();
  const source = join(dir, 'source.raw');
  await writeFile(source, disk);
  const out = join(dir, 'out.qcow2');
  const summary = await restoreToQcow2(repo, id, out, { workers: 2 });
  expect(summary.verified).toBe(true);
  expect(summary.chain).toHaveLength(3);
  // each byte once: 7.5 MiB of live data (the zeroed 2 MiB counted where inc 1 supplies it), never the superseded parts
  expect(summary.bytesWritten).toBeLessThan(9 * MiB);
  execFileSync('qemu-img', ['compare', '-f', 'raw', '-F', 'qcow2', source, out]);
  const raw = join(dir, 'back.raw');
  execFileSync('qemu-img', ['convert', '-f', 'qcow2', '-O', 'raw', out, raw]);
  expect(sha(await readFile(raw))).toBe(sha(disk));
  const info = JSON.parse(execFileSync('qemu-img', ['info', '--output=json', out], { encoding: 'utf8' })) as { format: string; 'virtual-size': number; 'actual-size': number };
  expect(info.format).toBe('qcow2');
  expect(info['virtual-size']).toBe(SIZE);
  // data: 2 + 3 + 0.5 + 1 MiB (+ metadata); zeros, the discarded 2 MiB included, are not allocated
  expect(info['actual-size']).toBeLessThan(10 * MiB);
  const map = JSON.parse(execFileSync('qemu-img', ['map', '--output=json', out], { encoding: 'utf8' })) as { start: number; length: number; data: boolean }[];
  const dataBytes = map.filter((m) => m.data).reduce((n, m) => n + m.length, 0);
  expect(dataBytes).toBeLessThanOrEqual(7 * MiB);
  expect(map.some((m) => m.data && m.start < 1.5 * MiB && m.start + m.length > 1 * MiB)).toBe(true); // 1 … 1.5 MiB still data
  expect(map.filter((m) => m.data).every((m) => m.start >= 3.5 * MiB || m.start + m.length <= 1.5 * MiB)).toBe(true); // the discarded part is not
  expect(qemuNbdServing(dir)).toEqual([]);
  expect((await readdir(dir)).filter((n) => n.startsWith('.'))).toEqual([]); // no temporary image left

  // the same chain to a new raw file: same bytes, sparse
  const rawOut = join(dir, 'out.raw');
  const sink = await createSparseFileSink(rawOut, SIZE);
  try {
    expect((await restoreBackup(repo, id, sink, { workers: 2 })).verified).toBe(true);
  } finally {
    await sink.close();
  }
  expect(sha(await readFile(rawOut))).toBe(sha(disk));
});

it('an aborted qcow2 restore leaves no image, no temporary file and no qemu-nbd', async () => {
  const { repo, id } = await chain();
  const out = join(dir, 'out.qcow2');
  const controller = new AbortController();
  let served: number[] = [];
  const error = await restoreToQcow2(repo, id, out, {
    workers: 1,
    signal: controller.signal,
    onProgress: () => {
      served = qemuNbdServing(dir);
      controller.abort(new Error('stop'));
    },
  }).catch((e: unknown) => e);
  expect((error as Error).name).toBe('AbortedError');
  expect(served).toHaveLength(1); // it did run while the restore wrote
  expect(qemuNbdServing(dir)).toEqual([]);
  expect(await readdir(dir)).toEqual(['repo']);
});

it('fleece restore --format qcow2 killed with SIGKILL leaves no qemu-nbd and no image at --out that is not complete', async () => {
  const { id, disk } = await chain();
  const out = join(dir, 'killed.qcow2');
  const child = startCli(dir, ['restore', '--repo', join(dir, 'repo'), '--backup', id, '--out', out, '--format', 'qcow2']);
  let seen = false;
  while (!seen && child.exitCode === null) {
    seen = qemuNbdServing(dir).length > 0;
    if (!seen) await delay(5);
  }
  child.kill('SIGKILL');
  await child;
  // its qemu-nbd sees its only client go away and exits by itself
  for (let i = 0; i < 400 && qemuNbdServing(dir).length > 0; i++) await delay(50);
  expect(qemuNbdServing(dir)).toEqual([]);
  if (await access(out).then(() => true, () => false)) {
    // the restore won the race: then the image is the whole disk
    await writeFile(join(dir, 'source.raw'), disk);
    execFileSync('qemu-img', ['compare', '-f', 'raw', '-F', 'qcow2', join(dir, 'source.raw'), out]);
  } else {
    expect(seen).toBe(true);
  }
});
