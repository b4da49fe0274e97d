// Retention and chain maintenance, as the CLI (and later the daemon) runs them: prune by a keep policy, protect and
// unprotect, consolidate a chain into a synthetic full, scrub a random sample of objects.
import { access } from 'node:fs/promises';
import { randomUUID } from 'node:crypto';
import {
  consolidateBackup,
  isS3Location,
  openRepository,
  planPrune,
  readProtections,
  scrubRepository,
  setProtection,
  type BackupRecord,
  type Compression,
  type ConsolidateReport,
  type PrunePlan,
  type PrunePolicy,
  type Repository,
  type ScrubReport,
} from '../repository/index.js';
import { FleeceError, InvalidInputError, NotFoundError, describeError, isFleeceError } from '../util/errors.js';
import { pruneCheckpointsOfVm, type CheckpointRetentionReport } from './checkpoint-retention.js';
import type { PlaneEnvironment } from './open-control-plane.js';
import { findBackup, findGroup, type BackupSelector } from './repository-operations.js';
import type { VmEntry } from './vm-registry.js';

// The planner's words the CLI prints with (cli/ imports app/ only).
export { describeKeepOptions, describeReason, keepsSomething, type KeepOptions, type PruneGroup, type PrunePlan } from '../repository/index.js';

async function open(repo: string | Repository): Promise<Repository> {
  if (typeof repo !== 'string') return repo;
  if (isS3Location(repo)) return openRepository(repo);
  try {
    await access(repo);
  } catch {
    throw new NotFoundError(`repository ${repo} does not exist`, { hint: 'check --repo (a backup creates the directory)' });
  }
  return openRepository(repo);
}

/** Which backups a maintenance command is about: one disk backup, or every disk backup of a group. */
export interface BackupTarget {
  backupId?: string;
  groupId?: string;
}

/** The records a target names. @throws InvalidInputError (neither or both given), NotFoundError. */
async function resolveTarget(r: Repository, target: BackupTarget, signal?: AbortSignal): Promise<BackupRecord[]> {
  if ((target.backupId === undefined) === (target.groupId === undefined)) {
    throw new InvalidInputError(target.backupId === undefined ? 'no backup was named' : '--backup and --group name different things', { hint: 'give --backup ID (one disk backup) or --group ID (every disk of one VM backup)' });
  }
  if (target.backupId !== undefined) return [await findBackup(r, { backupId: target.backupId })];
  return findGroup(r, target.groupId!, signal ? { signal } : {});
}

export interface PruneRequest {
  repo: string | Repository;
  policy: PrunePolicy;
  dryRun?: boolean;
  now?: Date;
  signal?: AbortSignal;
  /** Called before each backup is deleted (index from 0, count). */
  onDelete?: (backupId: string, index: number, count: number) => void;
  /**
   * Then prune the checkpoints of every VM that lost backups (app/checkpoint-retention.ts), through its control
   * plane: `entry` for that VM, else the registry in `env.configDir`. A dry run plans against what would remain.
   */
  checkpoints?: { keep?: number; env: PlaneEnvironment & { configDir: string }; entry?: VmEntry };
}

export interface PruneResult {
  plan: PrunePlan;
  dryRun: boolean;
  /** Backups deleted (none on a dry run), in the order they went. */
  deleted: string[];
  objectsRemoved: number;
  /** Stored bytes of the backups removed (or that a dry run would remove). */
  bytesFreed: number;
  /** One report per VM whose checkpoints were pruned (or planned on a dry run), when asked. */
  checkpoints?: CheckpointRetentionReport[];
}

/**
 * Plans a prune over the whole catalog (protection marks read from every manifest), then, unless `dryRun`,
 * deletes the removed groups' backups, dependants first, with the repository's delete (which refuses a backup that
 * something still depends on: a backup taken meanwhile on a removed one stops the prune there).
 * @throws InvalidInputError (no keep rule, bad counts or time zone), NotFoundError (repository; --vm with no
 *   backups), FleeceError naming how far it got when a delete fails, StoreError, AbortedError.
 */
export async function pruneBackups(request: PruneRequest): Promise<PruneResult> {
  const r = await open(request.repo);
  await r.requireMarker('prune');
  const { records } = await r.scan(request.signal);
  if (request.policy.vm !== undefined && !records.some((x) => x.vm === request.policy.vm)) {
    throw new NotFoundError(`the repository ${r.store.location} has no backup of VM '${request.policy.vm}'`, { hint: `list the backups with \`fleece list --repo ${r.store.location}\`` });
  }
  const marks = await readProtections(r, records, request.signal);
  const plan = planPrune(records.map((x) => (marks.has(x.backupId) ? { ...x, protected: true } : x)), request.policy, request.now ?? new Date());
  const removed = new Map(plan.scopes.flatMap((s) => s.groups).filter((g) => g.action === 'remove').flatMap((g) => g.backups).map((b) => [b.backupId, b]));
  const result: PruneResult = {
    plan, dryRun: request.dryRun ?? false, deleted: [], objectsRemoved: 0,
    bytesFreed: [...removed.values()].reduce((n, b) => n + (b.storedBytes ?? b.dataBytes), 0),
  };
  const pruneCheckpoints = async (): Promise<PruneResult> => {
    if (!request.checkpoints) return result;
    const { keep, env, entry } = request.checkpoints;
    const vmOf = new Map(records.map((x) => [x.backupId, x.vm]));
    const vms = [...new Set([...removed.keys()].flatMap((id) => { const vm = vmOf.get(id); return vm !== undefined ? [vm] : []; }))];
    result.checkpoints = [];
    for (const vm of vms) {
      const remaining = records.filter((x) => x.vm === vm && !removed.has(x.backupId));
      const forgotten = new Set(records.flatMap((x) => (x.vm === vm && removed.has(x.backupId) && x.checkpoint ? [x.checkpoint] : [])));
      result.checkpoints.push(await pruneCheckpointsOfVm(vm, r, { ...env, ...(entry?.name === vm ? { entry } : {}) }, {
        ...(keep !== undefined ? { keep } : {}), ...(result.dryRun ? { dryRun: true, records: remaining } : {}), forgotten,
        ...(request.signal ? { signal: request.signal } : {}),
      }));
    }
    return result;
  };
  if (result.dryRun) return pruneCheckpoints();
  result.bytesFreed = 0;
  for (const [i, backupId] of plan.removeOrder.entries()) {
    request.onDelete?.(backupId, i, plan.removeOrder.length);
    try {
      const report = await r.delete(backupId, request.signal ? { signal: request.signal } : {});
      result.deleted.push(...report.deleted);
      result.objectsRemoved += report.objectsRemoved;
      const b = removed.get(backupId)!;
      result.bytesFreed += b.storedBytes ?? b.dataBytes;
    } catch (error) {
      throw new FleeceError(isFleeceError(error) ? error.code : 'INTERNAL', `prune stopped after deleting ${result.deleted.length} of ${plan.removeOrder.length} backup(s): deleting backup ${backupId} failed: ${describeError(error)}`, {
        cause: error, hint: 'run the prune again (its plan is made afresh)',
      });
    }
  }
  return pruneCheckpoints();
}

export interface ProtectResult {
  protected: boolean;
  /** The backups the target named, and whether each manifest changed (false: it already was so). */
  backups: { backupId: string; vm: string | null; disk: string | null; groupId: string | null; changed: boolean }[];
}

/**
 * Sets or removes the protection mark (`extra_metadata.fleece_protected`) of a backup or of every disk backup of a
 * group. A group with any protected backup is never pruned.
 * @throws InvalidInputError, NotFoundError, IntegrityError, StoreError.
 */
export async function protectBackups(
  repo: string | Repository, target: BackupTarget, protect: boolean, options: { note?: string; signal?: AbortSignal } = {},
): Promise<ProtectResult> {
  const r = await open(repo);
  const records = await resolveTarget(r, target, options.signal);
  const result: ProtectResult = { protected: protect, backups: [] };
  for (const record of records) {
    const { changed } = await setProtection(r, record, protect, { ...(options.note !== undefined ? { note: options.note } : {}), ...(options.signal ? { signal: options.signal } : {}) });
    result.backups.push({ backupId: record.backupId, vm: record.vm ?? null, disk: record.disk ?? null, groupId: record.groupId ?? null, changed });
  }
  return result;
}

export interface ConsolidateRequest {
  repo: string | Repository;
  target: BackupTarget;
  compression?: Compression;
  workers?: number;
  signal?: AbortSignal;
  /** Per disk: bytes of data handed to the writer so far, and in all. */
  onProgress?: (disk: string, done: number, total: number) => void;
  now?: Date;
}

export interface ConsolidateResult {
  /** The new group every synthetic full of this run belongs to. */
  groupId: string;
  disks: ConsolidateReport[];
}

/**
 * Writes a synthetic full of a backup (or of every disk of a group, into one new group) from the repository alone.
 * On failure the synthetic fulls this run wrote already are deleted again.
 * @throws InvalidInputError, NotFoundError / MissingParentError (the chain), IntegrityError (damaged objects),
 *   StoreError, AbortedError.
 */
export async function consolidateBackups(request: ConsolidateRequest): Promise<ConsolidateResult> {
  const r = await open(request.repo);
  await r.requireMarker('consolidate');
  const records = await resolveTarget(r, request.target, request.signal);
  const result: ConsolidateResult = { groupId: randomUUID(), disks: [] };
  try {
    for (const record of records) {
      const disk = record.disk ?? record.backupId;
      result.disks.push(await consolidateBackup(r, record.backupId, {
        groupId: result.groupId,
        ...(request.compression !== undefined ? { compression: request.compression } : {}),
        ...(request.workers !== undefined ? { workers: request.workers } : {}),
        ...(request.signal ? { signal: request.signal } : {}),
        ...(request.now ? { now: request.now } : {}),
        ...(request.onProgress ? { onProgress: (done: number, total: number) => request.onProgress!(disk, done, total) } : {}),
      }));
    }
  } catch (error) {
    for (const done of result.disks) await r.delete(done.backupId).catch(() => undefined);
    throw error;
  }
  return result;
}

export interface ScrubRequest {
  repo: string | Repository;
  percent: number;
  /** Only this backup's chain (default: every backup). */
  selector?: BackupSelector;
  seed?: number;
  signal?: AbortSignal;
  onProgress?: (done: number, total: number) => void;
}

/**
 * Checks a random sample of objects (md5 and sha256 of each) across the repository or one chain; problems are in the
 * report with the backups each damages. @throws InvalidInputError (percent), NotFoundError, StoreError, AbortedError.
 */
export async function scrubBackups(request: ScrubRequest): Promise<{ record?: BackupRecord; report: ScrubReport }> {
  const r = await open(request.repo);
  await r.requireMarker('verify');
  await r.unlock();
  const record = request.selector ? await findBackup(r, request.selector) : undefined;
  const report = await scrubRepository(r, {
    percent: request.percent,
    ...(record ? { backupIds: [record.backupId] } : {}),
    ...(request.seed !== undefined ? { seed: request.seed } : {}),
    ...(request.signal ? { signal: request.signal } : {}),
    ...(request.onProgress ? { onProgress: request.onProgress } : {}),
  });
  return { ...(record ? { record } : {}), report };
}
