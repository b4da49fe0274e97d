// Restore to qcow2: straight into a new qcow2 exported over NBD by a qemu-nbd child (src/restore/nbd-target.ts), under
// a temporary name beside `path`, renamed once the restore has passed its checks and qemu-nbd has closed the image.
import { open, rename, rm } from 'node:fs/promises';
import { dirname, join, basename } from 'node:path';
import { randomBytes } from 'node:crypto';
import type { Repository } from '../repository/repository.js';
import { createQcow2Target } from './nbd-target.js';
import { restoreBackup, type RestoreOptions, type RestoreSummary } from './restore.js';

/**
 * Restores `backupId` into a new qcow2 image at `path` (sparse: zero blocks are not written). Nothing appears at
 * `path` unless everything passed; a failure or abort leaves neither a temporary image nor a qemu-nbd process.
 * Throws like restoreBackup, and FleeceError('NBD' | 'INTERNAL') when qemu-img / qemu-nbd fail.
 */
export async function restoreToQcow2(repo: Repository, backupId: string, path: string, options: RestoreOptions & { tempDir?: string } = {}): Promise<RestoreSummary> {
  const record = await repo.get(backupId);
  // a Cinder-written backup records no size: the sha256file's block count × block size (streamed, never whole)
  const size: number = record.size ?? await repo.streamSha256(record, undefined, options.signal).then(({ header, count }) => count * header.chunk_size);
  const temp = join(dirname(path), `.${basename(path)}.${randomBytes(4).toString('hex')}.tmp`);
  let done = false;
  try {
    const target = await createQcow2Target(temp, size, { ...(options.signal ? { signal: options.signal } : {}), ...(options.tempDir ? { socketDir: options.tempDir } : {}) });
    let summary: RestoreSummary;
    try {
      summary = await restoreBackup(repo, backupId, target, options);
      await target.finish();
    } finally {
      await target.close();
    }
    await rename(temp, path);
    done = true;
    await syncDirectory(dirname(path));
    return summary;
  } finally {
    if (!done) await rm(temp, { force: true });
  }
}

/** Makes a rename durable. */
async function syncDirectory(dir: string): Promise<void> {
  const handle = await open(dir, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}
