// Restore to qcow2: restore into a temporary sparse raw file, then `qemu-img convert` it (an NBD sink could stream instead).
import { rm } from 'node:fs/promises';
import { dirname, join, basename } from 'node:path';
import { randomBytes } from 'node:crypto';
import { execa } from 'execa';
import { FleeceError } from '../util/errors.js';
import type { Repository } from '../repository/repository.js';
import { createSparseFileSink } from './file-sink.js';
import { restoreBackup, type RestoreOptions, type RestoreSummary } from './restore.js';

/**
 * Restores `backupId` into a new qcow2 image at `path` (temporary raw beside it, removed afterwards).
 * Needs free space for the raw data (sparse) in the target directory. Throws like restoreBackup, and
 * FleeceError('INTERNAL') when qemu-img fails.
 */
export async function restoreToQcow2(repo: Repository, backupId: string, path: string, options: RestoreOptions & { tempDir?: string } = {}): Promise<RestoreSummary> {
  const record = await repo.get(backupId);
  // a Cinder-written backup records no size: the sha256file's block count × block size (streamed, never whole)
  const size: number = record.size ?? await repo.streamSha256(record, undefined, options.signal).then(({ header, count }) => count * header.chunk_size);
  const raw = join(options.tempDir ?? dirname(path), `.${basename(path)}.${randomBytes(4).toString('hex')}.raw`);
  const sink = await createSparseFileSink(raw, size);
  try {
    let summary: RestoreSummary;
    try {
      summary = await restoreBackup(repo, backupId, sink, options);
    } finally {
      await sink.close();
    }
    try {
      await execa('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', raw, path], { cancelSignal: options.signal });
    } catch (error) {
      throw new FleeceError('INTERNAL', `qemu-img convert to ${path} failed: ${(error as Error).message}`, { cause: error, hint: 'check that qemu-img is installed and the target directory is writable' });
    }
    return summary;
  } finally {
    await rm(raw, { force: true });
  }
}
