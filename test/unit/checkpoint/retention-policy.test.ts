// Checkpoint retention (pure): which checkpoints a VM keeps after a backup or a prune, and why.
import type { Checkpoint } from '../../../src/checkpoint/model.js';
import { describeCheckpointVerdict, planCheckpointRetention, servedBackups, type RetentionBackup } from '../../../src/checkpoint/retention-policy.js';

const T0 = Date.parse('2026-01-01T00:00:00Z') / 1000;

/** Checkpoint i made at T0 + i minutes, with a bitmap on each of `disks`. */
function cp(name: string, i: number, disks = ['vda', 'vdb']): Checkpoint {
  return { name, creationTime: T0 + i * 60, disks: disks.map((d) => ({ name: d, checkpoint: 'bitmap', bitmap: name })) };
}

/** The backups of one run ending at checkpoint `name`, created 10 s after it. */
function run(name: string, i: number, disks = ['vda', 'vdb'], vm = 'web'): RetentionBackup[] {
  const createdAt = new Date((T0 + i * 60 + 10) * 1000).toISOString().replace('T', ' ').replace('Z', '');
  return disks.map((disk) => ({ backupId: `${name}-${disk}`, createdAt, checkpoint: name, disk, vm }));
}

const actions = (v: ReturnType<typeof planCheckpointRetention>) => Object.fromEntries(v.map((x) => [x.name, x.action]));

describe('planCheckpointRetention', () => {
  it('keeps the N newest checkpoints with a backup behind them and deletes the older ones', () => {
    const checkpoints = [0, 1, 2, 3, 4, 5].map((i) => cp(`fleece-${i}`, i));
    const records = [0, 1, 2, 3, 4, 5].flatMap((i) => run(`fleece-${i}`, i));
    const plan = planCheckpointRetention({ checkpoints, records, vm: 'web', keep: 3 });
    expect(actions(plan)).toEqual({
      'fleece-0': 'delete', 'fleece-1': 'delete', 'fleece-2': 'delete', 'fleece-3': 'keep', 'fleece-4': 'keep', 'fleece-5': 'keep',
    });
    expect(plan[5]!.reason).toEqual({ rule: 'newest-backup', disk: 'vda', backupId: 'fleece-5-vda' });
    expect(plan[3]!.reason).toEqual({ rule: 'keep-checkpoints', disk: 'vda', rank: 3, keep: 3 });
    expect(plan[0]!.reason).toEqual({ rule: 'beyond-keep', keep: 3 });
    expect(describeCheckpointVerdict(plan[0]!)).toBe('older than the 3 newest checkpoints with a backup');
    expect(plan[4]!.serves.map((s) => s.backupId)).toEqual(['fleece-4-vda', 'fleece-4-vdb']);
  });

  it('deletes a checkpoint whose backups were pruned from this repository, not one fleece did not make', () => {
    const checkpoints = [cp('fleece-0', 0), cp('mine', 1), cp('fleece-2', 2), cp('fleece-3', 3)];
    const records = run('fleece-3', 3);
    const plan = planCheckpointRetention({ checkpoints, records, vm: 'web', keep: 3, forgotten: new Set(['fleece-0', 'fleece-2', 'mine']) });
    expect(actions(plan)).toEqual({ 'fleece-0': 'delete', mine: 'keep', 'fleece-2': 'delete', 'fleece-3': 'keep' });
    expect(plan[1]!.reason).toEqual({ rule: 'not-fleece' });
    expect(plan[0]!.reason).toEqual({ rule: 'pruned-backups' });
  });

  it('leaves a checkpoint no backup here ever ended at: another repository\'s chain (a VM backed up into two) goes on', () => {
    // Repository A holds fleece-1 and fleece-3; fleece-0 and fleece-2 are repository B's (or a failed backup's).
    const checkpoints = [0, 1, 2, 3].map((i) => cp(`fleece-${i}`, i));
    const records = [...run('fleece-1', 1), ...run('fleece-3', 3)];
    const plan = planCheckpointRetention({ checkpoints, records, vm: 'web', keep: 1 });
    expect(actions(plan)).toEqual({ 'fleece-0': 'keep', 'fleece-1': 'delete', 'fleece-2': 'keep', 'fleece-3': 'keep' });
    expect(plan[2]!.reason).toEqual({ rule: 'not-this-repository' });
    expect(plan[1]!.reason).toEqual({ rule: 'beyond-keep', keep: 1 });
  });

  it('keeps a checkpoint of another name while a backup ended at it', () => {
    const checkpoints = [cp('nightly-1', 1), cp('nightly-2', 2)];
    const records = [...run('nightly-1', 1), ...run('nightly-2', 2)];
    expect(actions(planCheckpointRetention({ checkpoints, records, vm: 'web', keep: 1 }))).toEqual({ 'nightly-1': 'delete', 'nightly-2': 'keep' });
  });

  it('never deletes the checkpoint the newest backup ended at, nor one newer than every backup', () => {
    // The newest backup (of vda only) ended at fleece-1; fleece-2 was made after it (a backup in flight).
    const checkpoints = [cp('fleece-0', 0), cp('fleece-1', 1), cp('fleece-2', 2)];
    const records = [...run('fleece-0', 0), ...run('fleece-1', 1, ['vda'])];
    const plan = planCheckpointRetention({ checkpoints, records, vm: 'web', keep: 1 });
    expect(actions(plan)).toEqual({ 'fleece-0': 'keep', 'fleece-1': 'keep', 'fleece-2': 'keep' });
    expect(plan[0]!.reason).toMatchObject({ rule: 'newest-backup', disk: 'vdb' });
    expect(plan[1]!.reason).toMatchObject({ rule: 'newest-backup', disk: 'vda' });
    expect(plan[2]!.reason).toEqual({ rule: 'newer-than-backups' });
  });

  it('counts per disk: a checkpoint serves a disk only where it has a bitmap, and only that VM\'s backups', () => {
    const checkpoints = [cp('fleece-0', 0, ['vda']), cp('fleece-1', 1, ['vda'])];
    const records = [...run('fleece-0', 0, ['vda', 'vdb']), ...run('fleece-1', 1, ['vda'], 'other')];
    const served = servedBackups(checkpoints, records, 'web');
    expect(served.get('fleece-0')!.map((s) => s.backupId)).toEqual(['fleece-0-vda']);
    expect(served.get('fleece-1')).toEqual([]);
    // fleece-1 is newer than every backup of web: kept.
    expect(actions(planCheckpointRetention({ checkpoints, records, vm: 'web', keep: 1 }))).toEqual({ 'fleece-0': 'keep', 'fleece-1': 'keep' });
  });

  it('refuses a keep count below 1', () => {
    expect(() => planCheckpointRetention({ checkpoints: [], records: [], keep: 0 })).toThrow(RangeError);
  });
});
