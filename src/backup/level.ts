// Chooses the level of a repository backup, disk by disk (pure): each disk is incremental since the newest valid
// checkpoint that has a complete backup of that disk in this repository, full otherwise, always with the reason.
// One disk's broken chain makes that disk full; the others stay incremental, in the same point in time. A disk that
// cannot hold a bitmap (raw) but has a previous backup gets a compare incremental: read everything, store what differs
// by sha256 from that backup (as Cinder's own incremental does); so does a disk whose bitmap a sample proved wrong.
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
  /** The state of those checkpoints' bitmaps (from the control plane). */
  checks: readonly CheckpointCheck[];
  /** Committed backups of this VM in the repository. */
  records: readonly BackupRecord[];
}

export type DiskLevel =
  | { target: string; level: 'full'; reason: string }
  | {
      target: string;
      level: 'incremental';
      reason: string;
      /** The checkpoint this disk's incremental starts from. */
      checkpoint: string;
      /** The backup of this disk in this repository that ended at `checkpoint`. */
      parent: BackupRecord;
    }
  | {
      target: string;
      level: 'compare';
      reason: string;
      /** The backup of this disk whose sha256s the new one is compared with. */
      parent: BackupRecord;
    };

export interface LevelDecision {
  /** `incremental` when at least one disk is incremental or compare; `full` when every disk is full. */
  level: 'full' | 'incremental';
  /** One reason when every disk has the same, else `vda: …; vdb: …`. */
  reason: string;
  /** The checkpoint the incremental disks start from when they share one (the usual case), else null. */
  incrementalFrom: string | null;
  disks: DiskLevel[];
}

/** Newest first by created_at text (same fixed format, so text order is time order), then by id. */
function newestFirst(a: BackupRecord, b: BackupRecord): number {
  return a.createdAt === b.createdAt ? b.backupId.localeCompare(a.backupId) : b.createdAt < a.createdAt ? -1 : 1;
}

/**
 * Decides full or incremental for each disk. `--full` always gives full; `auto` gives each disk an incremental
 * when it can and a full with the reason otherwise; `incremental` throws when some disk cannot be incremental.
 * @throws ConflictError (forced incremental impossible), naming the disk, why, and what to do.
 */
export function chooseBackupLevel(input: LevelInput): LevelDecision {
  const disks = input.disks.map((disk) => decideDisk(input, disk));
  const full = disks.filter((d) => d.level === 'full');
  if (input.requested === 'incremental' && full.length > 0) {
    throw new ConflictError(`cannot take an incremental backup of VM '${input.vm}': ${combineReasons(full)}`, {
      hint: 'run without --incremental to let fleece choose the level, or with --full',
    });
  }
  const froms = [...new Set(disks.flatMap((d) => (d.level === 'incremental' ? [d.checkpoint] : [])))];
  return {
    level: full.length === disks.length ? 'full' : 'incremental',
    reason: combineReasons(disks),
    incrementalFrom: froms.length === 1 ? froms[0]! : null,
    disks,
  };
}

function combineReasons(disks: readonly DiskLevel[]): string {
  const reasons = new Set(disks.map((d) => d.reason));
  if (reasons.size === 1) return disks[0]!.reason;
  return disks.map((d) => `${d.target}: ${d.level === 'incremental' ? '' : `${d.level}, `}${d.reason}`).join('; ');
}

/**
 * The decision with disk `target` (an incremental) turned into a compare incremental against the same parent, `why`
 * saying what proved its bitmap wrong. Disks that stay incremental keep their checkpoint.
 */
export function fallBackToCompare(decision: LevelDecision, target: string, why: string): LevelDecision {
  const disks = decision.disks.map((d): DiskLevel => (d.target === target && d.level === 'incremental'
    ? { target, level: 'compare', reason: `${why}: compare incremental against backup ${d.parent.backupId} (everything read, what differs stored)`, parent: d.parent }
    : d));
  const froms = [...new Set(disks.flatMap((d) => (d.level === 'incremental' ? [d.checkpoint] : [])))];
  return { ...decision, reason: combineReasons(disks), incrementalFrom: froms.length === 1 ? froms[0]! : null, disks };
}

function decideDisk({ vm, requested, checkpoints, checks, records }: LevelInput, disk: LevelDisk): DiskLevel {
  const full = (reason: string): DiskLevel => ({ target: disk.target, level: 'full', reason });
  if (requested === 'full') return full('--full was given');
  const noBitmaps = `disk ${disk.target} (${disk.format}) cannot hold checkpoint bitmaps (only qcow2 can)`;
  const ofVm = records.filter((r) => r.vm === vm && r.disk !== undefined);
  if (ofVm.length === 0) return full(disk.format !== 'qcow2' ? noBitmaps : `this repository has no backup of VM '${vm}' yet`);
  const mine = ofVm.filter((r) => r.disk === disk.target).sort(newestFirst);
  if (mine.length === 0) return full(disk.format !== 'qcow2' ? noBitmaps : `this repository has no backup of disk ${disk.target} of VM '${vm}' yet`);
  if (disk.format !== 'qcow2') {
    const parent = mine[0]!;
    return { target: disk.target, level: 'compare', reason: `${noBitmaps}: compare incremental against backup ${parent.backupId} (everything read, what differs stored)`, parent };
  }

  // Newest first: creation time (whole seconds), ties broken by the newest backup that ended at the checkpoint.
  const lastBackup = (name: string) => mine.find((r) => r.checkpoint === name)?.createdAt ?? '';
  const ordered = [...checkpoints].sort((a, b) => b.creationTime - a.creationTime
    || (lastBackup(a.name) === lastBackup(b.name) ? 0 : lastBackup(a.name) < lastBackup(b.name) ? 1 : -1));
  const notes: string[] = [];
  for (const cp of ordered) {
    const parent = mine.find((r) => r.checkpoint === cp.name);
    if (!parent) {
      if (ofVm.some((r) => r.checkpoint === cp.name)) notes.push(`checkpoint ${cp.name} has no complete backup of disk ${disk.target} in this repository`);
      continue;
    }
    if (!checkpointBitmaps(cp).some((b) => b.disk === disk.target)) {
      notes.push(`checkpoint ${cp.name} has no bitmap for disk ${disk.target}`);
      continue;
    }
    if (parent.size !== undefined && parent.size !== disk.virtualSize) {
      notes.push(`disk ${disk.target} (${parent.size} → ${disk.virtualSize} bytes) changed size since checkpoint ${cp.name}`);
      continue;
    }
    const check = checks.find((c) => c.name === cp.name)?.disks.find((c) => c.disk === disk.target);
    if (!check || check.state !== 'ok') {
      const detail = check?.detail ?? (check?.state === 'inconsistent' ? 'QEMU stopped without saving it, so it may have missed writes' : undefined);
      const why = check ? `disk ${disk.target}: bitmap ${check.bitmap} ${check.state}${detail ? ` (${detail})` : ''}` : 'it was not validated';
      notes.push(`checkpoint ${cp.name} is not valid (${why})`);
      continue;
    }
    const skipped = notes.length > 0 ? ` (newer ones skipped: ${notes.join('; ')})` : '';
    return {
      target: disk.target,
      level: 'incremental',
      reason: `incremental since checkpoint ${cp.name}, the newest valid checkpoint with a complete backup in this repository${skipped}`,
      checkpoint: cp.name,
      parent,
    };
  }
  if (notes.length > 0) return full(notes.join('; '));
  const newest = mine[0]!;
  if (newest.checkpoint !== undefined && !checkpoints.some((c) => c.name === newest.checkpoint)) {
    return full(`checkpoint ${newest.checkpoint}, where the newest backup of disk ${disk.target} in this repository (${newest.backupId}) ended, no longer exists in VM '${vm}'`);
  }
  return full(`no checkpoint of VM '${vm}' has a backup of disk ${disk.target} in this repository`);
}
