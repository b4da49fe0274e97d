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

it('restores into an existing file full of garbage and into a qcow2 image, byte-identically', async () => {
  const size = 4 * 1024 * 1024 + 512;
  const disk = mixedDisk(size, 77);
  const repo = await openRepository(join(dir, 'repo'));
  const w = await repo.startBackup({ volumeId: 'v', size, workers: 1 });
  for (const e of allocatedExtents(disk)) await w.write(e);
  const { backupId } = await w.finish();

  const target = join(dir, 'existing.raw');
  await writeFile(target, randomBytes(size));
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
