// The one request of a repository backup, built by the CLI from its flags and by the daemon from its API body, so
// both get the same options and the same checks.
import type { QuiesceMode } from '../backup/control/control-plane.js';
import type { RequestedLevel } from '../backup/level.js';
import type { Compression } from '../repository/index.js';
import { InvalidInputError } from '../util/errors.js';
import { isAcceptedRepoLocation } from './repo-location.js';

export interface BackupRequest {
  vm: string;
  /** The repository: an absolute directory, or `s3://bucket[/prefix]`. A request names a repository or a provider. */
  repo?: string;
  /** Instead of a repository: an external backup provider registered with `fleece provider add` (docs/providers.md). */
  provider?: string;
  /** Reach the VM without (or instead of) the registry: a bare QEMU's QMP socket, or a libvirt URI. */
  qmp?: string;
  guestAgent?: string;
  connect?: string;
  level?: RequestedLevel;
  disks?: string[];
  compression?: Compression;
  /** Bytes per second over all disks. */
  bandwidth?: number;
  parallel?: number;
  connections?: number;
  quiesce?: QuiesceMode;
  trim?: boolean;
  scratchDir?: string;
  /** The new checkpoint's name. */
  checkpoint?: string;
  /**
   * How a bare QEMU fleeces: 'cbw' (copy-before-write + snapshot-access, QEMU ≥ 7.1: what a reader discards leaves
   * the scratch) or 'overlay' (scratch overlay + blockdev-backup sync:none). Default: cbw where QEMU allows it for a
   * provider backup, overlay for a repository backup.
   */
  fleecing?: 'cbw' | 'overlay';
  /** Percent of the blocks a dirty bitmap calls clean to hash against the parent (0 to 100; default 0.5, 0 disables). */
  verifyBitmap?: number;
  /** After the backup, keep at most this many checkpoints with a backup behind them per disk (default 3). */
  keepCheckpoints?: number;
  /** False: leave the VM's checkpoints alone after the backup (e.g. when other repositories use them). */
  pruneCheckpoints?: boolean;
}

const FIELDS: Record<keyof BackupRequest, 'string' | 'number' | 'boolean' | 'string[]'> = {
  vm: 'string', repo: 'string', provider: 'string', qmp: 'string', guestAgent: 'string', connect: 'string', level: 'string', disks: 'string[]',
  compression: 'string', bandwidth: 'number', parallel: 'number', connections: 'number', quiesce: 'string', trim: 'boolean',
  scratchDir: 'string', checkpoint: 'string', fleecing: 'string', verifyBitmap: 'number', keepCheckpoints: 'number',
  pruneCheckpoints: 'boolean',
};
const CHOICES: Partial<Record<keyof BackupRequest, readonly string[]>> = {
  level: ['auto', 'full', 'incremental'],
  compression: ['zstd', 'zlib', 'bz2', 'none'],
  quiesce: ['no', 'yes', 'try'],
  fleecing: ['cbw', 'overlay'],
};
const PATHS: (keyof BackupRequest)[] = ['repo', 'qmp', 'guestAgent', 'scratchDir'];

/**
 * Checks a request from any source: known fields only, each of its type, choices among the allowed values,
 * absolute paths, positive integers. Returns it typed.
 * @throws InvalidInputError naming the field and what is allowed.
 */
export function checkBackupRequest(input: unknown): BackupRequest {
  if (typeof input !== 'object' || input === null || Array.isArray(input)) throw new InvalidInputError('the backup request is not an object');
  const body = input as Record<string, unknown>;
  for (const [key, value] of Object.entries(body)) {
    const type = FIELDS[key as keyof BackupRequest];
    if (!type) throw new InvalidInputError(`unknown field '${key}' in the backup request`, { hint: `known fields: ${Object.keys(FIELDS).join(', ')}` });
    if (value === undefined) continue;
    const ok = type === 'string[]' ? Array.isArray(value) && value.every((v) => typeof v === 'string') : typeof value === type;
    if (!ok) throw new InvalidInputError(`field '${key}' of the backup request must be ${type === 'string[]' ? 'a list of strings' : `a ${type}`}`);
    const choices = CHOICES[key as keyof BackupRequest];
    if (choices && !choices.includes(value as string)) throw new InvalidInputError(`field '${key}' is '${String(value)}'`, { hint: `use one of: ${choices.join(', ')}` });
    if (key === 'repo' && !isAcceptedRepoLocation(value as string)) {
      throw new InvalidInputError(`field 'repo' must be an absolute path or an s3:// URL, not '${String(value)}'`);
    }
    if (key !== 'repo' && PATHS.includes(key as keyof BackupRequest) && !(value as string).startsWith('/')) {
      throw new InvalidInputError(`field '${key}' must be an absolute path, not '${String(value)}'`);
    }
    if (key === 'verifyBitmap') {
      if (!((value as number) >= 0 && (value as number) <= 100)) throw new InvalidInputError(`field 'verifyBitmap' must be a percentage from 0 to 100, not ${String(value)}`, { hint: '0 trusts the bitmap, 100 hashes every clean block' });
    } else if (type === 'number' && !(Number.isSafeInteger(value) && (value as number) > 0)) {
      throw new InvalidInputError(`field '${key}' must be a positive integer, not ${String(value)}`);
    }
  }
  if (typeof body.vm !== 'string' || body.vm === '') throw new InvalidInputError("field 'vm' of the backup request is missing");
  if (body.repo === undefined && body.provider === undefined) {
    throw new InvalidInputError("field 'repo' of the backup request is missing", { hint: "give the repository directory, or 'provider': the name of a registered backup provider" });
  }
  if (body.repo !== undefined && body.provider !== undefined) {
    throw new InvalidInputError("a backup request names either a repository ('repo') or a backup provider ('provider'), not both");
  }
  if (typeof body.provider === 'string' && !/^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/.test(body.provider)) {
    throw new InvalidInputError(`field 'provider' is '${body.provider}', which is no provider name`, { hint: 'see `fleece provider list`' });
  }
  if (body.qmp !== undefined && body.connect !== undefined) {
    throw new InvalidInputError('a backup request has either a QMP socket or a libvirt URI, not both');
  }
  return body as unknown as BackupRequest;
}

/**
 * The repository of a repository backup request.
 * @throws InvalidInputError when the request names a provider instead (app/provider-backup.ts runs those).
 */
export function repositoryOf(request: Pick<BackupRequest, 'repo' | 'provider'>): string {
  if (request.repo === undefined) {
    throw new InvalidInputError(`this backup request names provider '${request.provider ?? ''}', not a repository`, { hint: 'a provider backup runs through runProviderBackup (app/provider-backup.ts)' });
  }
  return request.repo;
}
