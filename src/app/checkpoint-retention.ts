// Checkpoint pruning, after a backup and after a prune: the checkpoints no backup left in the repository can start an
// incremental from are deleted through the VM's own control plane (QMP bitmaps, libvirt checkpoints), at most N with a
// backup behind them kept per disk (checkpoint/retention-policy.ts decides). A failure here is a warning, never a
// failed backup or prune: a checkpoint too many costs the guest some write speed, one too few a full backup.
import type { ControlPlane } from '../backup/control/control-plane.js';
import type { Checkpoint } from '../checkpoint/model.js';
import {
  DEFAULT_KEEP_CHECKPOINTS, describeCheckpointVerdict, planCheckpointRetention, type CheckpointVerdict, type RetentionBackup, type ServedBackup,
} from '../checkpoint/retention-policy.js';
import { access } from 'node:fs/promises';
import { isS3Location, openRepository, type Repository } from '../repository/index.js';
import { NotFoundError, describeError } from '../util/errors.js';
import { getLogger } from '../util/logger.js';
import { openControlPlane, type PlaneEnvironment } from './open-control-plane.js';
import { VmRegistry, type VmEntry } from './vm-registry.js';

export { DEFAULT_KEEP_CHECKPOINTS, describeCheckpointVerdict, servedBackups, type CheckpointVerdict, type ServedBackup } from '../checkpoint/retention-policy.js';

const log = getLogger('app.checkpoint-retention');

export interface CheckpointRetentionOptions {
  /** Checkpoints with a backup behind them kept per disk (default DEFAULT_KEEP_CHECKPOINTS). */
  keep?: number;
  /** Plan only: delete nothing. */
  dryRun?: boolean;
  /** The VM's backups to plan against instead of the repository's (a prune's dry run: what would remain). */
  records?: readonly RetentionBackup[];
  /** Checkpoints that the backups a prune removed ended at (deleted when no remaining backup ended there). */
  forgotten?: ReadonlySet<string>;
  signal?: AbortSignal;
}

export interface CheckpointRetentionReport {
  vm: string;
  keep: number;
  dryRun: boolean;
  verdicts: CheckpointVerdict[];
  /** Checkpoints deleted (none on a dry run). */
  deleted: string[];
  /** Checkpoints to delete that were not, with why. */
  skipped: { name: string; reason: string }[];
  /** What went wrong, in words for the user (never thrown). */
  warnings: string[];
}

function emptyReport(vm: string, keep: number, dryRun: boolean): CheckpointRetentionReport {
  return { vm, keep, dryRun, verdicts: [], deleted: [], skipped: [], warnings: [] };
}

async function repositoryRecords(repo: string | Repository, vm: string, signal?: AbortSignal): Promise<RetentionBackup[]> {
  if (typeof repo === 'string' && !isS3Location(repo)) {
    await access(repo).catch(() => {
      throw new NotFoundError(`repository ${repo} does not exist`, { hint: 'check --repo' });
    });
  }
  const r = typeof repo === 'string' ? await openRepository(repo) : repo;
  return r.list({ vm, ...(signal ? { signal } : {}) });
}

/**
 * Plans and (unless dryRun) deletes the VM's checkpoints no backup in `repo` needs, through `plane`. Never throws:
 * whatever fails is in `warnings` (and the checkpoints not deleted in `skipped`).
 */
export async function pruneVmCheckpoints(
  plane: ControlPlane, repo: string | Repository, options: CheckpointRetentionOptions = {},
): Promise<CheckpointRetentionReport> {
  const keep = options.keep ?? DEFAULT_KEEP_CHECKPOINTS;
  const report = emptyReport(plane.vm, keep, options.dryRun ?? false);
  let checkpoints: Checkpoint[];
  let records: readonly RetentionBackup[];
  try {
    checkpoints = (await plane.inspect(options.signal ? { signal: options.signal } : {})).checkpoints;
    records = options.records ?? await repositoryRecords(repo, plane.vm, options.signal);
    report.verdicts = planCheckpointRetention({ checkpoints, records, vm: plane.vm, keep, ...(options.forgotten ? { forgotten: options.forgotten } : {}) });
  } catch (error) {
    report.warnings.push(`checkpoints of VM '${plane.vm}' were not pruned: ${describeError(error)}`);
    return report;
  }
  const doomed = report.verdicts.filter((v) => v.action === 'delete').map((v) => v.name);
  if (report.dryRun || doomed.length === 0) return report;
  try {
    const result = await plane.deleteCheckpoints(doomed, options.signal ? { signal: options.signal } : {});
    report.deleted = result.deleted;
    report.skipped = result.skipped;
    for (const s of result.skipped) report.warnings.push(`checkpoint ${s.name} of VM '${plane.vm}' was not deleted: ${s.reason}`);
  } catch (error) {
    report.warnings.push(`checkpoints of VM '${plane.vm}' were not pruned: ${describeError(error)}`);
  }
  log.info({ vm: plane.vm, keep, deleted: report.deleted, skipped: report.skipped.length }, 'checkpoints pruned');
  return report;
}

/**
 * The same for a VM by name: its control plane opened from `entry` or the registry, then closed. A VM that is not
 * registered, or cannot be reached, gets a warning. Never throws.
 */
export async function pruneCheckpointsOfVm(
  vm: string,
  repo: string | Repository,
  env: PlaneEnvironment & { configDir: string; entry?: VmEntry },
  options: CheckpointRetentionOptions = {},
): Promise<CheckpointRetentionReport> {
  const keep = options.keep ?? DEFAULT_KEEP_CHECKPOINTS;
  let plane: ControlPlane;
  try {
    const entry = env.entry ?? await new VmRegistry(env.configDir).get(vm);
    plane = await openControlPlane(entry, env);
  } catch (error) {
    const report = emptyReport(vm, keep, options.dryRun ?? false);
    report.warnings.push(`checkpoints of VM '${vm}' were not pruned: ${describeError(error)}`);
    return report;
  }
  try {
    return await pruneVmCheckpoints(plane, repo, options);
  } finally {
    await plane.close();
  }
}

/** One line per checkpoint deleted or to delete, and one per warning. */
export function describeCheckpointRetention(report: CheckpointRetentionReport): string[] {
  const lines: string[] = [];
  for (const v of report.verdicts) {
    if (v.action !== 'delete') continue;
    const done = report.deleted.includes(v.name);
    if (report.dryRun || done) lines.push(`checkpoint ${v.name} of VM '${report.vm}': ${report.dryRun ? 'would delete' : 'deleted'} (${describeCheckpointVerdict(v)})`);
  }
  return [...lines, ...report.warnings.map((w) => `warning: ${w}`)];
}

/**
 * The backups in `repo` of VM `vm` that ended at each checkpoint (by checkpoint name, newest first): the next
 * incremental of that disk can start there. @throws NotFoundError (no repository), StoreError.
 */
export async function backupsByCheckpoint(repo: string | Repository, vm: string, signal?: AbortSignal): Promise<Map<string, ServedBackup[]>> {
  const out = new Map<string, ServedBackup[]>();
  const records = [...await repositoryRecords(repo, vm, signal)].sort((a, b) => (a.createdAt < b.createdAt ? 1 : -1));
  for (const r of records) {
    if (r.checkpoint === undefined || r.disk === undefined) continue;
    out.set(r.checkpoint, [...(out.get(r.checkpoint) ?? []), { backupId: r.backupId, disk: r.disk, createdAt: r.createdAt }]);
  }
  return out;
}
