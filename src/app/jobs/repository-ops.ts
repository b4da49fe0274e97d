// Repository requests of the daemon (list, restore, verify), through app/repository-operations with the API's checks.
import type { BackupRecord, VerifyReport } from '../../repository/index.js';
import type { RestoreSummary } from '../../restore/index.js';
import { InvalidInputError } from '../../util/errors.js';
import { listRepository, restoreToFile, verifyBackup, type UnreadableBackup } from '../repository-operations.js';
import { isAcceptedRepoLocation } from '../repo-location.js';

function absolute(field: string, path: string): void {
  if (field === 'repo' && isAcceptedRepoLocation(path)) return; // a directory or s3://bucket[/prefix]
  if (!path.startsWith('/')) throw new InvalidInputError(`${field}: '${path}' is not an absolute path`, { hint: `give ${field} as an absolute path` });
}

/**
 * The backups of a repository, filtered, and (as `fleece list` shows them, never hidden) every backup whose
 * `_metadata` cannot be read: damaged, or written by a newer fleece. Throws InvalidInputError (repo), the store's errors.
 */
export async function listRepositoryBackups(
  repo: string, filter: { vm?: string; disk?: string },
): Promise<{ backups: BackupRecord[]; unreadable: UnreadableBackup[] }> {
  absolute('repo', repo);
  const { records, unreadable } = await listRepository(repo, filter);
  return { backups: records, unreadable };
}

/**
 * Restores a backup (its chain) into a new file `out`, raw (default) or qcow2; `force` replaces an existing one.
 * @throws InvalidInputError (paths, unknown size), NotFoundError (backup), ConflictError (out exists), IntegrityError.
 */
export async function restoreFromRepository(
  request: { repo: string; backupId: string; out: string; format?: 'raw' | 'qcow2'; force?: boolean },
  signal?: AbortSignal,
): Promise<RestoreSummary> {
  absolute('repo', request.repo);
  absolute('out', request.out);
  const { summary } = await restoreToFile(
    {
      repo: request.repo, selector: { backupId: request.backupId }, out: request.out,
      ...(request.format ? { format: request.format } : {}), ...(request.force ? { overwrite: true } : {}),
    },
    signal ? { signal } : {},
  );
  return summary;
}

/** Verifies a backup (and its chain). @throws InvalidInputError (repo), NotFoundError (backup). */
export async function verifyRepositoryBackup(request: { repo: string; backupId: string; deep?: boolean }, signal?: AbortSignal): Promise<VerifyReport> {
  absolute('repo', request.repo);
  const { report } = await verifyBackup(request.repo, { backupId: request.backupId }, { ...(request.deep !== undefined ? { deep: request.deep } : {}), ...(signal ? { signal } : {}) });
  return report;
}
