// chooseBackupLevel: per disk, incremental since the newest valid checkpoint with a complete backup of that disk, else full with the reason.
import { describe, expect, test } from '@jest/globals';
import { chooseBackupLevel, fallBackToCompare, type LevelInput } from '../../../src/backup/level.js';
import type { CheckpointCheck } from '../../../src/checkpoint/manager.js';
import type { Checkpoint } from '../../../src/checkpoint/model.js';
import type { BackupRecord } from '../../../src/repository/index.js';
import { ConflictError } from '../../../src/util/errors.js';

const MiB = 1024 * 1024;
const disks = [{ target: 'vda', virtualSize: 16 * MiB, format: 'qcow2' }, { target: 'vdb', virtualSize: 8 * MiB, format: 'qcow2' }];

function cp(name: string, time: number, targets = ['vda', 'vdb']): Checkpoint {
  return { name, creationTime: time, disks: targets.map((t) => ({ name: t, checkpoint: 'bitmap' as const })) };
}
function ok(name: string, targets = ['vda', 'vdb']): CheckpointCheck {
  return { name, valid: true, disks: targets.map((disk) => ({ checkpoint: name, disk, bitmap: name, state: 'ok' as const })) };
}
function rec(id: string, disk: string, checkpoint: string, createdAt: string, size = disk === 'vda' ? 16 * MiB : 8 * MiB): BackupRecord {
  return {
    backupId: id, volumeId: `vol-${disk}`, parentId: null, container: 'c', prefix: 'p', createdAt, name: null, vm: 'vm1', disk,
    checkpoint, size, shaBlockSize: 32768, dataBytes: 0, objects: 0, fleece: true,
  };
}
const base = (over: Partial<LevelInput>): LevelInput => ({ vm: 'vm1', requested: 'auto', disks, checkpoints: [], checks: [], records: [], ...over });

describe('chooseBackupLevel', () => {
  test('--full wins; an empty repository gives full with the reason', () => {
    const forced = chooseBackupLevel(base({ requested: 'full' }));
    expect([forced.level, forced.reason, forced.incrementalFrom]).toEqual(['full', '--full was given', null]);
    expect(forced.disks.map((d) => d.level)).toEqual(['full', 'full']);
    const empty = chooseBackupLevel(base({}));
    expect([empty.level, empty.reason]).toEqual(['full', "this repository has no backup of VM 'vm1' yet"]);
  });

  test('incremental since the newest checkpoint with a complete backup of every disk; parents per disk', () => {
    const records = [
      rec('a1', 'vda', 'cp1', '2025-01-01 00:00:00'), rec('b1', 'vdb', 'cp1', '2025-01-01 00:00:00'),
      rec('a2', 'vda', 'cp2', '2025-01-02 00:00:00'), rec('b2', 'vdb', 'cp2', '2025-01-02 00:00:00'),
    ];
    const d = chooseBackupLevel(base({ checkpoints: [cp('cp1', 1), cp('cp2', 2)], checks: [ok('cp1'), ok('cp2')], records }));
    expect(d.level).toBe('incremental');
    expect(d.incrementalFrom).toBe('cp2');
    const [vda, vdb] = d.disks;
    expect(vda!.level === 'incremental' && vda!.parent.backupId).toBe('a2');
    expect(vdb!.level === 'incremental' && vdb!.parent.backupId).toBe('b2');
    expect(d.reason).toBe('incremental since checkpoint cp2, the newest valid checkpoint with a complete backup in this repository');
  });

  test('each disk skips the newer checkpoints it cannot use, and says so; the others are not held back', () => {
    const records = [
      rec('a1', 'vda', 'cp1', '2025-01-01 00:00:00'), rec('b1', 'vdb', 'cp1', '2025-01-01 00:00:00'),
      rec('a2', 'vda', 'cp2', '2025-01-02 00:00:00'), // vdb of cp2 never completed
      rec('a3', 'vda', 'cp3', '2025-01-03 00:00:00'), rec('b3', 'vdb', 'cp3', '2025-01-03 00:00:00'),
    ];
    const bad: CheckpointCheck = { name: 'cp3', valid: false, disks: [
      { checkpoint: 'cp3', disk: 'vda', bitmap: 'cp3', state: 'ok' },
      { checkpoint: 'cp3', disk: 'vdb', bitmap: 'cp3', state: 'inconsistent', detail: "missing or broken bitmap 'cp3' for disk 'vdb'" },
    ] };
    const d = chooseBackupLevel(base({ checkpoints: [cp('cp1', 1), cp('cp2', 2), cp('cp3', 3)], checks: [ok('cp1'), ok('cp2'), bad], records }));
    expect(d.level).toBe('incremental');
    expect(d.incrementalFrom).toBeNull();
    const [vda, vdb] = d.disks;
    expect(vda!.level === 'incremental' && vda!.checkpoint).toBe('cp3');
    expect(vdb!.level === 'incremental' && vdb!.checkpoint).toBe('cp1');
    expect(vdb!.reason).toContain("checkpoint cp3 is not valid (disk vdb: bitmap cp3 inconsistent (missing or broken bitmap 'cp3' for disk 'vdb'))");
    expect(vdb!.reason).toContain('checkpoint cp2 has no complete backup of disk vdb in this repository');
    expect(d.reason).toMatch(/^vda: incremental since checkpoint cp3.*; vdb: incremental since checkpoint cp1/);
  });

  test('one disk whose checkpoint is broken is full, the other stays incremental', () => {
    const records = [rec('a1', 'vda', 'cp1', '2025-01-01 00:00:00'), rec('b1', 'vdb', 'cp1', '2025-01-01 00:00:00')];
    const broken: CheckpointCheck = { name: 'cp1', valid: false, disks: [
      { checkpoint: 'cp1', disk: 'vda', bitmap: 'cp1', state: 'ok' },
      { checkpoint: 'cp1', disk: 'vdb', bitmap: 'cp1', state: 'missing' },
    ] };
    const d = chooseBackupLevel(base({ checkpoints: [cp('cp1', 1)], checks: [broken], records }));
    expect(d.disks.map((x) => x.level)).toEqual(['incremental', 'full']);
    expect(d.disks[1]!.reason).toBe('checkpoint cp1 is not valid (disk vdb: bitmap cp1 missing)');
    expect(d.incrementalFrom).toBe('cp1');
    expect(() => chooseBackupLevel(base({ requested: 'incremental', checkpoints: [cp('cp1', 1)], checks: [broken], records })))
      .toThrow(/cannot take an incremental backup of VM 'vm1': checkpoint cp1 is not valid \(disk vdb: bitmap cp1 missing\)/);
  });

  test('a deleted checkpoint gives full, naming it; a forced incremental then throws the reason', () => {
    const records = [rec('a1', 'vda', 'cp1', '2025-01-01 00:00:00'), rec('b1', 'vdb', 'cp1', '2025-01-01 00:00:00')];
    const input = base({ records, disks: [disks[1]!] });
    const d = chooseBackupLevel(input);
    expect([d.level, d.reason]).toEqual(['full', "checkpoint cp1, where the newest backup of disk vdb in this repository (b1) ended, no longer exists in VM 'vm1'"]);
    expect(() => chooseBackupLevel({ ...input, requested: 'incremental' })).toThrow(ConflictError);
    expect(() => chooseBackupLevel({ ...input, requested: 'incremental' })).toThrow(/cannot take an incremental backup of VM 'vm1': checkpoint cp1.*no longer exists.*run without --incremental/);
  });

  test('full when a disk was resized, is not covered by the checkpoint, or is raw with no backup yet', () => {
    const records = [rec('a1', 'vda', 'cp1', '2025-01-01 00:00:00', 8 * MiB), rec('b1', 'vdb', 'cp1', '2025-01-01 00:00:00')];
    expect(chooseBackupLevel(base({ checkpoints: [cp('cp1', 1)], checks: [ok('cp1')], records })).disks[0]!.reason)
      .toBe(`disk vda (${8 * MiB} → ${16 * MiB} bytes) changed size since checkpoint cp1`);
    expect(chooseBackupLevel(base({ checkpoints: [cp('cp1', 1, ['vda'])], checks: [ok('cp1', ['vda'])], records })).disks[1]!.reason)
      .toBe('checkpoint cp1 has no bitmap for disk vdb');
    expect(chooseBackupLevel(base({ disks: [{ target: 'hda', virtualSize: MiB, format: 'raw' }] })).reason)
      .toBe('disk hda (raw) cannot hold checkpoint bitmaps (only qcow2 can)');
  });

  test('backing up one disk only needs that disk covered; other VMs\' backups do not count', () => {
    const records = [rec('a1', 'vda', 'cp1', '2025-01-01 00:00:00'), { ...rec('x1', 'vdb', 'cp1', '2025-01-01 00:00:00'), vm: 'other' }];
    const d = chooseBackupLevel(base({ disks: [disks[0]!], checkpoints: [cp('cp1', 1)], checks: [ok('cp1')], records }));
    expect(d.level).toBe('incremental');
    const both = chooseBackupLevel(base({ checkpoints: [cp('cp1', 1)], checks: [ok('cp1')], records }));
    expect(both.disks.map((x) => x.level)).toEqual(['incremental', 'full']);
    expect(both.disks[1]!.reason).toBe("this repository has no backup of disk vdb of VM 'vm1' yet");
  });
});

test('checkpoints made in the same second are ordered by their backups', () => {
  const records = [
    rec('a1', 'vda', 'cpA', '2025-01-01 00:00:00.100000'), rec('a2', 'vda', 'cpB', '2025-01-01 00:00:00.900000'),
  ];
  const d = chooseBackupLevel(base({ disks: [disks[0]!], checkpoints: [cp('cpB', 5, ['vda']), cp('cpA', 5, ['vda'])], checks: [ok('cpA', ['vda']), ok('cpB', ['vda'])], records }));
  expect(d.incrementalFrom).toBe('cpB');
  const reversed = chooseBackupLevel(base({ disks: [disks[0]!], checkpoints: [cp('cpA', 5, ['vda']), cp('cpB', 5, ['vda'])], checks: [ok('cpA', ['vda']), ok('cpB', ['vda'])], records }));
  expect(reversed.incrementalFrom).toBe('cpB');
});

describe('compare incrementals', () => {
  test('a raw disk with a previous backup is a compare incremental against the newest one; --incremental accepts it; --full wins', () => {
    const raw = [{ target: 'hda', virtualSize: MiB, format: 'raw' }];
    const records = [rec('h1', 'hda', 'cp1', '2025-01-01 00:00:00', MiB), rec('h2', 'hda', 'cp2', '2025-01-02 00:00:00', MiB)];
    const d = chooseBackupLevel(base({ disks: raw, records }));
    expect(d.level).toBe('incremental');
    expect(d.incrementalFrom).toBeNull();
    const hda = d.disks[0]!;
    expect(hda.level).toBe('compare');
    expect(hda.level === 'compare' && hda.parent.backupId).toBe('h2');
    expect(d.reason).toBe('disk hda (raw) cannot hold checkpoint bitmaps (only qcow2 can): compare incremental against backup h2 (everything read, what differs stored)');
    expect(chooseBackupLevel(base({ disks: raw, records, requested: 'incremental' })).disks[0]!.level).toBe('compare');
    expect(chooseBackupLevel(base({ disks: raw, records, requested: 'full' })).disks[0]!.level).toBe('full');
  });

  test('a qcow2 disk and a raw disk: incremental and compare in one decision, each with its reason', () => {
    const mixed = [disks[0]!, { target: 'vdb', virtualSize: 8 * MiB, format: 'raw' }];
    const records = [rec('a1', 'vda', 'cp1', '2025-01-01 00:00:00'), rec('b1', 'vdb', 'cp1', '2025-01-01 00:00:00')];
    const d = chooseBackupLevel(base({ disks: mixed, checkpoints: [cp('cp1', 1, ['vda'])], checks: [ok('cp1', ['vda'])], records }));
    expect(d.disks.map((x) => x.level)).toEqual(['incremental', 'compare']);
    expect(d.incrementalFrom).toBe('cp1');
    expect(d.reason).toMatch(/^vda: incremental since checkpoint cp1.*; vdb: compare, disk vdb \(raw\) cannot hold/);
  });

  test('fallBackToCompare: the disk whose bitmap was proved wrong becomes compare against the same parent; the others stay', () => {
    const records = [rec('a1', 'vda', 'cp1', '2025-01-01 00:00:00'), rec('b1', 'vdb', 'cp1', '2025-01-01 00:00:00')];
    const d = chooseBackupLevel(base({ checkpoints: [cp('cp1', 1)], checks: [ok('cp1')], records }));
    const f = fallBackToCompare(d, 'vda', 'the bitmap missed a write');
    expect(f.disks.map((x) => x.level)).toEqual(['compare', 'incremental']);
    expect(f.disks[0]!.level === 'compare' && f.disks[0]!.parent.backupId).toBe('a1');
    expect(f.disks[0]!.reason).toBe('the bitmap missed a write: compare incremental against backup a1 (everything read, what differs stored)');
    expect(f.level).toBe('incremental');
    expect(f.incrementalFrom).toBe('cp1');
    expect(f.reason).toMatch(/^vda: compare, the bitmap missed a write.*; vdb: incremental since checkpoint cp1/);
    const both = fallBackToCompare(f, 'vdb', 'again');
    expect(both.incrementalFrom).toBeNull();
    expect(d.disks[0]!.level).toBe('incremental'); // the original decision is unchanged
  });
});
