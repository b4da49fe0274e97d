// Chooses the level of a repository backup (pure): incremental since the newest valid checkpoint that has a
// complete backup of every included disk in this repository, full otherwise, always with the reason.
import type { CheckpointCheck } from '../checkpoint/manager.js';
import { checkpointBitmaps, type Checkpoint } from '../checkpoint/model.js';
import type { BackupRecord } from '../repository/index.js';
import { ConflictError } from '../util/errors.js';

export type RequestedLevel = 'auto' | 'full' | 'incremental';

/** A disk to back up, as the level choice needs it. */
export interface LevelDisk {
  target: string;
  virtualSize: number;
  /** Image format of the disk's top node; only qcow2 holds checkpoint bitmaps. */
  format: string;
}

export interface LevelInput {
  vm: string;
  requested: RequestedLevel;
  disks: readonly LevelDisk[];
  /** The VM's checkpoints, any order. */
  checkpoints: readonly Checkpoint[];
  /** CheckpointManager.validate() of those checkpoints. */
  checks: readonly CheckpointCheck[];
  /** Committed backups of this VM in the repository. */
  records: readonly BackupRecord[];
}

export type LevelDecision =
  | { level: 'full'; reason: string }
  | {
      level: 'incremental';
      reason: string;
      /** The checkpoint the incremental starts from. */
      checkpoint: string;
      /** Per disk target: the backup in this repository that ended at `checkpoint` (the parent). */
      parents: Record<string, BackupRecord>;
    };

/** Newest first by created_at text (same fixed format, so text order is time order), then by id. */
function newestFirst(a: BackupRecord, b: BackupRecord): number {
  return a.createdAt === b.createdAt ? b.backupId.localeCompare(a.backupId) : b.createdAt < a.createdAt ? -1 : 1;
}

/**
 * Decides full or incremental. `--full` always gives full; `auto` gives an incremental when it can and a full
 * with the reason otherwise; `incremental` throws when it cannot be done.
 * @throws ConflictError (forced incremental impossible), naming why and what to do.
 */
export function chooseBackupLevel(input: LevelInput): LevelDecision {
  const decision = decide(input);
  if (input.requested === 'incremental' && decision.level === 'full') {
    throw new ConflictError(`cannot take an incremental backup of VM '${input.vm}': ${decision.reason}`, {
      hint: 'run without --incremental to let fleece choose the level, or with --full',
    });
  }
  return decision;
}

function decide({ vm, requested, disks, checkpoints, checks, records }: LevelInput): LevelDecision {
  if (requested === 'full') return { level: 'full', reason: '--full was given' };
  const raw = disks.filter((d) => d.format !== 'qcow2');
  if (raw.length > 0) {
    return { level: 'full', reason: `disk ${raw.map((d) => `${d.target} (${d.format})`).join(', ')} cannot hold checkpoint bitmaps (only qcow2 can)` };
  }
  const targets = new Set(disks.map((d) => d.target));
  const mine = records.filter((r) => r.vm === vm && r.disk !== undefined && targets.has(r.disk)).sort(newestFirst);
  if (mine.length === 0) return { level: 'full', reason: `this repository has no backup of VM '${vm}' yet` };

  // Newest first: creation time (whole seconds), ties broken by the newest backup that ended at the checkpoint.
  const lastBackup = (name: string) => mine.find((r) => r.checkpoint === name)?.createdAt ?? '';
  const ordered = [...checkpoints].sort((a, b) => b.creationTime - a.creationTime
    || (lastBackup(a.name) === lastBackup(b.name) ? 0 : lastBackup(a.name) < lastBackup(b.name) ? 1 : -1));
  const notes: string[] = [];
  for (const cp of ordered) {
    const atCp = mine.filter((r) => r.checkpoint === cp.name);
    if (atCp.length === 0) continue;
    const covered = new Set(checkpointBitmaps(cp).map((b) => b.disk));
    const uncovered = disks.filter((d) => !covered.has(d.target)).map((d) => d.target);
    if (uncovered.length > 0) {
      notes.push(`checkpoint ${cp.name} has no bitmap for disk ${uncovered.join(', ')}`);
      continue;
    }
    const parents: Record<string, BackupRecord> = {};
    const missing: string[] = [];
    const resized: string[] = [];
    for (const d of disks) {
      const parent = atCp.find((r) => r.disk === d.target);
      if (!parent) missing.push(d.target);
      else if (parent.size !== undefined && parent.size !== d.virtualSize) resized.push(`${d.target} (${parent.size} → ${d.virtualSize} bytes)`);
      else parents[d.target] = parent;
    }
    if (missing.length > 0) {
      notes.push(`checkpoint ${cp.name} has no complete backup of disk ${missing.join(', ')} in this repository`);
      continue;
    }
    if (resized.length > 0) {
      notes.push(`disk ${resized.join(', ')} changed size since checkpoint ${cp.name}`);
      continue;
    }
    const check = checks.find((c) => c.name === cp.name);
    const bad = check ? check.disks.filter((c) => targets.has(c.disk) && c.state !== 'ok') : [];
    if (!check || bad.length > 0) {
      const why = bad.length > 0 ? bad.map((c) => `disk ${c.disk}: bitmap ${c.bitmap} ${c.state}`).join(', ') : 'it was not validated';
      notes.push(`checkpoint ${cp.name} is not valid (${why})`);
      continue;
    }
    const skipped = notes.length > 0 ? ` (newer ones skipped: ${notes.join('; ')})` : '';
    return { level: 'incremental', reason: `incremental since checkpoint ${cp.name}, the newest valid checkpoint with a complete backup in this repository${skipped}`, checkpoint: cp.name, parents };
  }
  if (notes.length > 0) return { level: 'full', reason: notes.join('; ') };
  const newest = mine[0]!;
  const known = new Set(checkpoints.map((c) => c.name));
  if (newest.checkpoint !== undefined && !known.has(newest.checkpoint)) {
    return { level: 'full', reason: `checkpoint ${newest.checkpoint}, where the newest backup in this repository (${newest.backupId}) ended, no longer exists in VM '${vm}'` };
  }
  return { level: 'full', reason: `no checkpoint of VM '${vm}' has a backup in this repository` };
}
