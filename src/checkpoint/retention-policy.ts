// Which checkpoints of a VM to delete (pure). A checkpoint is worth its bitmaps only while a backup in the repository
// ended at it: the next incremental of that disk can start there. Every recording bitmap costs the guest on each
// write, so fleece keeps at most N such checkpoints per disk (the newest) and deletes the others it made.
//
// Never deleted: a checkpoint fleece did not make (its name does not start with `fleece-` and no backup here ended
// at it); the checkpoint the newest backup of each disk ended at; a checkpoint newer than every backup of the VM here
// (a backup in flight is making it); a checkpoint no backup here ended at, unless the backups that did were just
// pruned from this repository (`forgotten`): it may serve another repository's chain (a VM backed up into two), and
// a failed backup's checkpoint is its journal's to remove.
import { checkpointBitmaps, type Checkpoint } from './model.js';

/** The prefix of the checkpoint names fleece makes (`fleece-<UTC time>`). */
export const FLEECE_CHECKPOINT_PREFIX = 'fleece-';

/** How many checkpoints with a backup behind them are kept per disk unless told otherwise. */
export const DEFAULT_KEEP_CHECKPOINTS = 3;

/** A backup a checkpoint serves: the next incremental of `disk` can start from the checkpoint it ended at. */
export interface ServedBackup {
  backupId: string;
  disk: string;
  createdAt: string;
}

export type CheckpointKeepReason =
  | { rule: 'newest-backup'; disk: string; backupId: string }
  | { rule: 'keep-checkpoints'; disk: string; rank: number; keep: number }
  | { rule: 'not-fleece' }
  | { rule: 'newer-than-backups' }
  | { rule: 'not-this-repository' };

export type CheckpointDeleteReason =
  | { rule: 'pruned-backups' }
  | { rule: 'beyond-keep'; keep: number };

export type CheckpointVerdict =
  | { name: string; action: 'keep'; reason: CheckpointKeepReason; serves: ServedBackup[] }
  | { name: string; action: 'delete'; reason: CheckpointDeleteReason; serves: ServedBackup[] };

/** What the policy needs of a backup in the repository (the catalog's BackupRecord has these fields). */
export interface RetentionBackup {
  backupId: string;
  /** Cinder's created_at text (`YYYY-MM-DD HH:MM:SS[.ffffff]`, UTC). */
  createdAt: string;
  /** The checkpoint this backup ended at. */
  checkpoint?: string;
  disk?: string;
  vm?: string;
}

export interface CheckpointRetentionInput {
  checkpoints: readonly Checkpoint[];
  /** The VM's committed backups in the repository (any order); other VMs' are ignored when `vm` is given. */
  records: readonly RetentionBackup[];
  vm?: string;
  /** Checkpoints with a backup behind them kept per disk (at least 1). */
  keep: number;
  /** Checkpoints that backups just pruned from this repository ended at: deleted when no remaining backup ended there. */
  forgotten?: ReadonlySet<string>;
}

/** The backups each checkpoint serves: those of a disk the checkpoint has a bitmap on that ended at it (newest first). */
export function servedBackups(
  checkpoints: readonly Checkpoint[],
  records: CheckpointRetentionInput['records'],
  vm?: string,
): Map<string, ServedBackup[]> {
  const served = new Map<string, ServedBackup[]>();
  for (const cp of checkpoints) {
    const disks = new Set(checkpointBitmaps(cp).map((b) => b.disk));
    const list = records
      .filter((r) => (vm === undefined || r.vm === vm) && r.checkpoint === cp.name && r.disk !== undefined && disks.has(r.disk))
      .map((r) => ({ backupId: r.backupId, disk: r.disk!, createdAt: r.createdAt }))
      .sort((a, b) => (a.createdAt < b.createdAt ? 1 : a.createdAt > b.createdAt ? -1 : 0));
    served.set(cp.name, list);
  }
  return served;
}

/** Cinder's created_at text (`YYYY-MM-DD HH:MM:SS[.ffffff]`, UTC) as unix seconds. */
function createdAtSeconds(createdAt: string): number {
  return Date.parse(`${createdAt.replace(' ', 'T')}Z`) / 1000;
}

/**
 * A verdict for every checkpoint (in the order given): keep or delete, with the rule. See the module comment.
 * @throws RangeError when `keep` is not a whole number of at least 1.
 */
export function planCheckpointRetention(input: CheckpointRetentionInput): CheckpointVerdict[] {
  if (!Number.isSafeInteger(input.keep) || input.keep < 1) throw new RangeError(`keep-checkpoints must be 1 or more, not ${input.keep}`);
  const records = input.records.filter((r) => input.vm === undefined || r.vm === input.vm);
  const served = servedBackups(input.checkpoints, records, input.vm);
  const newestBackup = records.reduce((t, r) => Math.max(t, createdAtSeconds(r.createdAt)), -Infinity);

  // Per disk: the checkpoints with a backup of that disk behind them, newest backup first.
  const kept = new Map<string, CheckpointKeepReason>();
  const disks = new Set(records.flatMap((r) => (r.disk !== undefined ? [r.disk] : [])));
  for (const disk of disks) {
    const useful = input.checkpoints
      .map((cp) => ({ cp, newest: served.get(cp.name)!.find((s) => s.disk === disk) }))
      .filter((x): x is { cp: Checkpoint; newest: ServedBackup } => x.newest !== undefined)
      .sort((a, b) => (a.newest.createdAt < b.newest.createdAt ? 1 : a.newest.createdAt > b.newest.createdAt ? -1 : b.cp.creationTime - a.cp.creationTime));
    const newestOfDisk = records.filter((r) => r.disk === disk).sort((a, b) => (a.createdAt < b.createdAt ? 1 : -1))[0];
    if (newestOfDisk?.checkpoint !== undefined && useful.some((u) => u.cp.name === newestOfDisk.checkpoint)
      && kept.get(newestOfDisk.checkpoint)?.rule !== 'newest-backup') {
      kept.set(newestOfDisk.checkpoint, { rule: 'newest-backup', disk, backupId: newestOfDisk.backupId });
    }
    useful.slice(0, input.keep).forEach((u, i) => {
      if (!kept.has(u.cp.name)) kept.set(u.cp.name, { rule: 'keep-checkpoints', disk, rank: i + 1, keep: input.keep });
    });
  }

  return input.checkpoints.map((cp): CheckpointVerdict => {
    const serves = served.get(cp.name)!;
    const reason = kept.get(cp.name);
    if (reason) return { name: cp.name, action: 'keep', reason, serves };
    if (serves.length === 0 && !cp.name.startsWith(FLEECE_CHECKPOINT_PREFIX)) return { name: cp.name, action: 'keep', reason: { rule: 'not-fleece' }, serves };
    if (serves.length === 0 && cp.creationTime >= Math.floor(newestBackup)) return { name: cp.name, action: 'keep', reason: { rule: 'newer-than-backups' }, serves };
    if (serves.length === 0 && input.forgotten?.has(cp.name)) return { name: cp.name, action: 'delete', reason: { rule: 'pruned-backups' }, serves };
    if (serves.length === 0) return { name: cp.name, action: 'keep', reason: { rule: 'not-this-repository' }, serves };
    return { name: cp.name, action: 'delete', reason: { rule: 'beyond-keep', keep: input.keep }, serves };
  });
}

/** A verdict's reason in words. */
export function describeCheckpointVerdict(v: CheckpointVerdict): string {
  const r = v.reason;
  switch (r.rule) {
    case 'newest-backup': return `the newest backup of ${r.disk} (${r.backupId}) ended at it`;
    case 'keep-checkpoints': return `${r.rank}${r.rank === 1 ? 'st' : r.rank === 2 ? 'nd' : r.rank === 3 ? 'rd' : 'th'} newest of ${r.disk} with a backup (keep ${r.keep})`;
    case 'not-fleece': return 'not made by fleece (left alone)';
    case 'newer-than-backups': return 'newer than every backup in this repository (a backup in flight, or another repository\'s)';
    case 'pruned-backups': return 'the backups that ended at it were pruned';
    case 'not-this-repository': return 'no backup in this repository ended at it (another repository\'s, or a failed backup\'s): left alone';
    case 'beyond-keep': return `older than the ${r.keep} newest checkpoints with a backup`;
  }
}
