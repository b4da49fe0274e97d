// Restore into an existing file (uncovered ranges zeroed) and into qcow2 through real qemu-img.
import { readFile, writeFile } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { execFileSync } from 'node:child_process';
import { makeTempDir, removeTempDir } from '../../harness/temp-dir.js';
import { openRepository } from '../../../src/repository/repository.js';
import { openExistingSink } from '../../../src/restore/file-sink.js';
import { restoreBackup } from '../../../src/restore/restore.js';
import { restoreToQcow2 } from '../../../src/restore/qcow2-output.js';
import { allocatedExtents, mixedDisk, sha } from '../../unit/repository/disk-images.js';

let dir: string;
beforeEach(async () => { dir = await makeTempDir('restore'); });
afterEach(async () => { await removeTempDir(dir); });

/** A repository holding a full backup of a generated disk, and a target file of garbage of the disk's size. */
async function backedUpDisk(size: number, seed: number, workers: number) {
  const disk = mixedDisk(size, seed);
  const repo = await openRepository(join(dir, 'repo'));
  const w = await repo.startBackup({ volumeId: 'v', size, workers });
  for (const e of allocatedExtents(disk)) await w.write(e);
  const { backupId } = await w.finish();
  const target = join(dir, 'existing.raw');
  await writeFile(target, randomBytes(size));
  return { disk, repo, backupId, target };
}

it('restores into an existing file full of garbage and into a qcow2 image, byte-identically', async () => {
  const size = 4 * 1024 * 1024 + 512;
  const { disk, repo, backupId, target } = await backedUpDisk(size, 77, 1);
  const sink = await openExistingSink(target, size);
  const progress: number[] = [];
  try {
    const s = await restoreBackup(repo, backupId, sink, { workers: 1, onProgress: (done) => progress.push(done) });
    expect(s.verified).toBe(true);
    expect(s.bytesZeroed).toBeGreaterThan(0);
  } finally {
    await sink.close();
  }
  expect(sha(await readFile(target))).toBe(sha(disk));
  expect(progress.length).toBeGreaterThan(0);

  const qcow2 = join(dir, 'out.qcow2');
  await restoreToQcow2(repo, backupId, qcow2, { workers: 1 });
  expect(JSON.parse(execFileSync('qemu-img', ['info', '--output=json', qcow2], { encoding: 'utf8' })).format).toBe('qcow2');
  execFileSync('qemu-img', ['convert', '-f', 'qcow2', '-O', 'raw', qcow2, join(dir, 'back.raw')]);
  expect(sha(await readFile(join(dir, 'back.raw')))).toBe(sha(disk));
});

it('the final re-hash reuses its read buffers and still names the first differing block of a later piece', async () => {
  const MiB = 1024 * 1024;
  const size = 22 * MiB + 4096; // six 4 MiB pieces and a short one: buffers come back from the workers and are reused
  const { disk, repo, backupId, target } = await backedUpDisk(size, 78, 2);
  const ok = await openExistingSink(target, size);
  try {
    expect((await restoreBackup(repo, backupId, ok, { workers: 2 })).verified).toBe(true);
  } finally {
    await ok.close();
  }
  expect(sha(await readFile(target))).toBe(sha(disk));

  // The target as read back differs in one byte of block 500 (offset 16 MiB + 65 KiB … in the fifth piece).
  const badOffset = 500 * 32768 + 1234;
  const inner = await openExistingSink(target, size);
  const given: boolean[] = [];
  const flaky = Object.assign(Object.create(Object.getPrototypeOf(inner) as object) as typeof inner, inner, {
    read: async (offset: number, length: number, into?: Buffer) => {
      const data = await inner.read!(offset, length, into);
      given.push(into !== undefined);
      if (badOffset >= offset && badOffset < offset + length) data[badOffset - offset] ^= 0xff;
      return data;
    },
  });
  try {
    const error = await restoreBackup(repo, backupId, flaky, { workers: 2 }).catch((e: unknown) => e);
    expect((error as Error).message).toMatch(/differs from .*_sha256file at block 500 \(offset 16384000\)/);
  } finally {
    await inner.close();
  }
  // The first reads get new memory; later ones read into buffers the workers handed back.
  expect(given[0]).toBe(false);
  expect(given.filter(Boolean).length).toBeGreaterThan(0);
});
