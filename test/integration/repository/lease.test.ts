// The lease of a posix-layout backup being written: gc (even with a grace of 0) leaves its objects alone while its
// writer lives, takes them once the writer is gone, and a backup whose objects vanished before its commit fails.
import { readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { makeTempDir, removeTempDir } from '../../harness/temp-dir.js';
import { openRepository, type Repository } from '../../../src/repository/repository.js';
import type { BackupWriter } from '../../../src/repository/writer.js';
import { restoreBackup } from '../../../src/restore/restore.js';
import { MemorySink } from '../../../src/restore/memory-sink.js';
import { allocatedExtents, mixedDisk } from '../../unit/repository/disk-images.js';

const size = 2 * 1024 * 1024;
let dir: string;
let repo: Repository;

beforeEach(async () => {
  dir = await makeTempDir('lease');
  repo = await openRepository(join(dir, 'repo'));
});
afterEach(async () => { await removeTempDir(dir); });

/** A backup with all its data handed over (objects stored), not yet committed; its container's path. */
async function halfWritten(disk: Buffer): Promise<{ writer: BackupWriter; container: string }> {
  const writer = await repo.startBackup({ volumeId: 'v', size, chunkSize: 256 * 1024, compression: 'none', workers: 1 });
  for (const e of allocatedExtents(disk)) await writer.write(e);
  const container = join(dir, 'repo', writer.container);
  for (let i = 0; (await readdir(container)).filter((n) => /-\d{5}$/.test(n)).length < 4; i++) {
    if (i > 300) throw new Error('the writer stored no objects');
    await delay(10);
  }
  return { writer, container };
}

it('gc --grace 0 leaves a backup being written alone; it then commits and restores', async () => {
  const disk = mixedDisk(size, 7);
  const { writer, container } = await halfWritten(disk);
  expect((await readdir(container)).some((n) => n.startsWith('fleece_lease_'))).toBe(true);
  const report = await repo.gc({ gracePeriodMs: 0 });
  expect(report.removed).toEqual([]);
  expect(report.leased).toEqual([{ container: writer.container, backupId: writer.backupId }]);
  const summary = await writer.finish();
  expect((await readdir(container)).some((n) => n.startsWith('fleece_lease_'))).toBe(false);
  const sink = new MemorySink(size);
  await restoreBackup(repo, summary.backupId, sink, { workers: 1 });
  expect(sink.data.equals(disk)).toBe(true);
});

it('a lease whose writer is gone protects nothing: gc --grace 0 removes the objects', async () => {
  const { writer, container } = await halfWritten(mixedDisk(size, 8));
  const lease = (await readdir(container)).find((n) => n.startsWith('fleece_lease_'))!;
  const { hostname } = await import('node:os');
  await writeFile(join(container, lease), JSON.stringify({ backup_id: writer.backupId, host: hostname(), pid: 2 ** 22 + 1, start_time: '1' }));
  const report = await repo.gc({ gracePeriodMs: 0 });
  expect(report.leased ?? []).toEqual([]);
  expect(report.removed.length).toBeGreaterThanOrEqual(4);
  await writer.abort();
});

it('an object removed before the commit fails the backup clearly, and nothing is committed', async () => {
  const { writer, container } = await halfWritten(mixedDisk(size, 9));
  const victim = (await readdir(container)).filter((n) => /-\d{5}$/.test(n)).sort()[1]!;
  const { unlink } = await import('node:fs/promises');
  await unlink(join(container, victim));
  await expect(writer.finish()).rejects.toThrow(new RegExp(`objects it wrote vanished .*${victim}`));
  expect(await repo.list()).toEqual([]);
  expect((await readdir(container).catch(() => [])).filter((n) => n.endsWith('_metadata'))).toEqual([]);
});
