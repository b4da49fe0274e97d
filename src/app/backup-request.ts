// The one request of a repository backup, built by the CLI from its flags and by the daemon from its API body, so
// both get the same options and the same checks.
import type { QuiesceMode } from '../backup/control/control-plane.js';
import type { RequestedLevel } from '../backup/level.js';
import type { Compression } from '../repository/index.js';
import { InvalidInputError } from '../util/errors.js';

export interface BackupRequest {
  vm: string;
  /** The repository directory (absolute). */
  repo: string;
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
}

const FIELDS: Record<keyof BackupRequest, 'string' | 'number' | 'boolean' | 'string[]'> = {
  vm: 'string', repo: 'string', qmp: 'string', guestAgent: 'string', connect: 'string', level: 'string', disks: 'string[]',
  compression: 'string', bandwidth: 'number', parallel: 'number', connections: 'number', quiesce: 'string', trim: 'boolean',
  scratchDir: 'string', checkpoint: 'string',
};
const CHOICES: Partial<Record<keyof BackupRequest, readonly string[]>> = {
  level: ['auto', 'full', 'incremental'],
  compression: ['zstd', 'zlib', 'bz2', 'none'],
  quiesce: ['no', 'yes', 'try'],
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
    if (PATHS.includes(key as keyof BackupRequest) && !(value as string).startsWith('/')) {
      throw new InvalidInputError(`field '${key}' must be an absolute path, not '${String(value)}'`);
    }
    if (type === 'number' && !(Number.isSafeInteger(value) && (value as number) > 0)) {
      throw new InvalidInputError(`field '${key}' must be a positive integer, not ${String(value)}`);
    }
  }
  if (typeof body.vm !== 'string' || body.vm === '') throw new InvalidInputError("field 'vm' of the backup request is missing");
  if (typeof body.repo !== 'string') throw new InvalidInputError("field 'repo' of the backup request is missing", { hint: 'give the repository directory' });
  if (body.qmp !== undefined && body.connect !== undefined) {
    throw new InvalidInputError('a backup request has either a QMP socket or a libvirt URI, not both');
  }
  return body as unknown as BackupRequest;
}
