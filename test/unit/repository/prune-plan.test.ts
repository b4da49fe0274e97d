// planPrune: Proxmox Backup Server's keep rules on backup groups (its own test scenarios give the same answers),
// protection, the parent chains of kept incrementals, scopes, time zones, and a golden plan over a synthetic history.
import { describe, expect, it } from '@jest/globals';
import { describeReason, planPrune, type PrunePlan, type PruneRecord, type KeepOptions } from '../../../src/repository/prune-plan.js';

const NOW = new Date('2026-03-01T12:00:00Z');

/** A catalog record; id, group and volume default from the time. */
function rec(createdAt: string, o: Partial<PruneRecord> = {}): PruneRecord {
  const backupId = o.backupId ?? `b-${createdAt.replace(/\D/g, '')}-${o.disk ?? 'vda'}`;
  return {
    backupId, volumeId: `vol-${o.disk ?? 'vda'}`, parentId: null, container: 'c', prefix: 'p', createdAt, name: null,
    vm: 'web', disk: 'vda', groupId: `g-${createdAt.replace(/\D/g, '')}`, dataBytes: 100, storedBytes: 50, objects: 1, fleece: true, ...o,
  };
}

/** PBS's test lists: `host/elsa/<time>` snapshots, one full backup each, no chains. */
function pbsList(times: string[]): PruneRecord[] {
  return times.map((t) => rec(t.replace('T', ' ').replace('Z', ''), { groupId: t }));
}

const kept = (plan: PrunePlan) => plan.scopes.flatMap((s) => s.groups).filter((g) => g.action === 'keep').map((g) => g.key).sort();
const removed = (plan: PrunePlan) => plan.scopes.flatMap((s) => s.groups).filter((g) => g.action === 'remove').map((g) => g.key).sort();
const lines = (plan: PrunePlan) => plan.scopes.flatMap((s) => s.groups.map((g) => `${s.scope} ${g.createdAt.slice(0, 16)} ${g.disks.join(',')} ${g.action} ${describeReason(g.reason)}`));

describe('PBS semantics (the scenarios of proxmox-backup tests/prune.rs)', () => {
  const hourly = pbsList(['2019-11-15T09:39:15Z', '2019-11-15T10:49:15Z', '2019-11-15T10:59:15Z', '2019-11-15T11:39:15Z', '2019-11-15T11:49:15Z', '2019-11-15T11:59:15Z']);
  it('keep-hourly', () => {
    expect(removed(planPrune(hourly, { keep: { hourly: 3 } }, NOW))).toEqual(['2019-11-15T10:49:15Z', '2019-11-15T11:39:15Z', '2019-11-15T11:49:15Z']);
    expect(kept(planPrune(hourly, { keep: { hourly: 2 } }, NOW))).toEqual(['2019-11-15T10:59:15Z', '2019-11-15T11:59:15Z']);
  });

  const simple2 = pbsList(['2018-11-15T11:59:15Z', '2019-11-15T11:59:15Z', '2019-11-21T11:59:15Z', '2019-11-22T11:59:15Z', '2019-11-29T11:59:15Z',
    '2019-12-01T11:59:15Z', '2019-12-02T11:59:15Z', '2019-12-03T11:59:15Z', '2019-12-04T11:59:15Z']);
  it.each<[KeepOptions, string[]]>([
    [{ daily: 1 }, ['2019-12-04T11:59:15Z']],
    [{ last: 1, daily: 1 }, ['2019-12-03T11:59:15Z', '2019-12-04T11:59:15Z']],
    [{ daily: 1, weekly: 1 }, ['2019-12-01T11:59:15Z', '2019-12-04T11:59:15Z']],
    [{ daily: 1, weekly: 1, monthly: 1 }, ['2019-11-22T11:59:15Z', '2019-12-01T11:59:15Z', '2019-12-04T11:59:15Z']],
    [{ monthly: 1, yearly: 1 }, ['2018-11-15T11:59:15Z', '2019-12-04T11:59:15Z']],
  ])('simple2 %j keeps %j', (keep, want) => {
    expect(kept(planPrune(simple2, { keep }, NOW))).toEqual(want);
  });

  const simple = pbsList(['2019-12-02T11:59:15Z', '2019-12-03T11:59:15Z', '2019-12-04T11:59:15Z', '2019-12-04T12:59:15Z']);
  it.each<[KeepOptions, string[]]>([
    [{ last: 4 }, []],
    [{ last: 3 }, ['2019-12-02T11:59:15Z']],
    [{ last: 2 }, ['2019-12-02T11:59:15Z', '2019-12-03T11:59:15Z']],
    [{ last: 1 }, ['2019-12-02T11:59:15Z', '2019-12-03T11:59:15Z', '2019-12-04T11:59:15Z']],
    [{ last: 2, daily: 2 }, []],
    [{ daily: 3 }, ['2019-12-04T11:59:15Z']],
    [{ daily: 2 }, ['2019-12-02T11:59:15Z', '2019-12-04T11:59:15Z']],
    [{ weekly: 5 }, ['2019-12-02T11:59:15Z', '2019-12-03T11:59:15Z', '2019-12-04T11:59:15Z']],
    [{ daily: 1, weekly: 5 }, ['2019-12-02T11:59:15Z', '2019-12-03T11:59:15Z', '2019-12-04T11:59:15Z']],
    [{ monthly: 6 }, ['2019-12-02T11:59:15Z', '2019-12-03T11:59:15Z', '2019-12-04T11:59:15Z']],
    [{ yearly: 7 }, ['2019-12-02T11:59:15Z', '2019-12-03T11:59:15Z', '2019-12-04T11:59:15Z']],
    [{ weekly: 5, monthly: 6, yearly: 7 }, ['2019-12-02T11:59:15Z', '2019-12-03T11:59:15Z', '2019-12-04T11:59:15Z']],
  ])('simple %j removes %j', (keep, want) => {
    expect(removed(planPrune(simple, { keep }, NOW))).toEqual(want);
  });

  it('no rule of 1 or more keeps everything (PBS\'s keep-all), and says so', () => {
    const plan = planPrune(simple, { keep: { last: 0 } }, NOW);
    expect(removed(plan)).toEqual([]);
    expect(describeReason(plan.scopes[0]!.groups[0]!.reason)).toBe('no keep rule given: everything is kept');
  });

  it('refuses negative and fractional counts, and unknown time zones', () => {
    expect(() => planPrune(simple, { keep: { daily: -1 } }, NOW)).toThrow(/--keep-daily -1 is not a count/);
    expect(() => planPrune(simple, { keep: { last: 1.5 } }, NOW)).toThrow(/--keep-last 1.5 is not a count/);
    expect(() => planPrune(simple, { keep: { last: 1 }, timeZone: 'Mars/Olympus' }, NOW)).toThrow(/time zone 'Mars\/Olympus' is not known/);
  });
});

describe('periods', () => {
  it('ISO weeks across a year end: Thu 2020-12-31 and Sun 2021-01-03 are one week (2020-W53), Mon 2021-01-04 the next', () => {
    const list = [rec('2020-12-31 10:00:00'), rec('2021-01-03 10:00:00'), rec('2021-01-04 10:00:00')];
    const plan = planPrune(list, { keep: { weekly: 5 } }, NOW);
    expect(lines(plan)).toEqual([
      'web 2021-01-04 10:00 vda keep keep-weekly 2021-W01',
      'web 2021-01-03 10:00 vda keep keep-weekly 2020-W53',
      'web 2020-12-31 10:00 vda remove keep-weekly keeps a newer group of 2020-W53',
    ]);
  });

  it('days in the given time zone: 23:30 UTC is the next day in Vienna', () => {
    const list = [rec('2026-01-10 22:30:00'), rec('2026-01-10 23:30:00')];
    expect(removed(planPrune(list, { keep: { daily: 5 } }, NOW))).toEqual(['g-20260110223000']);
    expect(removed(planPrune(list, { keep: { daily: 5 }, timeZone: 'Europe/Vienna' }, NOW))).toEqual([]);
    expect(lines(planPrune(list, { keep: { daily: 5 }, timeZone: 'Europe/Vienna' }, NOW))[0]).toBe('web 2026-01-10 23:30 vda keep keep-daily 2026-01-11');
  });
});

describe('groups, protection and chains', () => {
  it('a group is every disk of one run, timed by its oldest backup; a record without a group is its own', () => {
    const list = [
      rec('2026-01-01 03:00:00', { disk: 'vda' }), rec('2026-01-01 03:00:05', { disk: 'vdb', groupId: 'g-20260101030000' }),
      rec('2026-01-02 03:00:00', { groupId: undefined, backupId: 'lonely' }),
    ];
    const plan = planPrune(list, { keep: { last: 1 } }, NOW);
    expect(plan.scopes[0]!.groups.map((g) => [g.key, g.groupId, g.disks, g.action])).toEqual([
      ['lonely', null, ['vda'], 'keep'],
      ['g-20260101030000', 'g-20260101030000', ['vda', 'vdb'], 'remove'],
    ]);
    expect(plan.removeOrder.sort()).toEqual(['b-20260101030000-vda', 'b-20260101030005-vdb']);
  });

  it('a protected group is kept, counts for no rule, and keeps its parents', () => {
    const full = rec('2026-01-01 03:00:00');
    const inc = rec('2026-01-02 03:00:00', { parentId: full.backupId, protected: true });
    const later = [rec('2026-01-03 03:00:00'), rec('2026-01-04 03:00:00')];
    const plan = planPrune([full, inc, ...later], { keep: { last: 1 } }, NOW);
    expect(lines(plan)).toEqual([
      'web 2026-01-04 03:00 vda keep keep-last',
      'web 2026-01-03 03:00 vda remove no rule keeps it',
      'web 2026-01-02 03:00 vda keep protected',
      'web 2026-01-01 03:00 vda keep parent of g-20260102030000',
    ]);
  });

  it('a kept incremental keeps its whole chain; removal goes dependants first', () => {
    const f = rec('2026-01-01 03:00:00');
    const i1 = rec('2026-01-02 03:00:00', { parentId: f.backupId });
    const i2 = rec('2026-01-03 03:00:00', { parentId: i1.backupId });
    const f2 = rec('2026-01-04 03:00:00');
    const j1 = rec('2026-01-05 03:00:00', { parentId: f2.backupId });
    const j2 = rec('2026-01-06 03:00:00', { parentId: j1.backupId });
    const plan = planPrune([f, i1, i2, f2, j1, j2], { keep: { last: 1 } }, NOW);
    expect(lines(plan)).toEqual([
      'web 2026-01-06 03:00 vda keep keep-last',
      'web 2026-01-05 03:00 vda keep parent of g-20260106030000',
      'web 2026-01-04 03:00 vda keep parent of g-20260106030000',
      'web 2026-01-03 03:00 vda remove no rule keeps it',
      'web 2026-01-02 03:00 vda remove no rule keeps it',
      'web 2026-01-01 03:00 vda remove no rule keeps it',
    ]);
    expect(plan.removeOrder).toEqual([i2.backupId, i1.backupId, f.backupId]);
  });

  it('a group kept for one disk\'s chain is kept whole, so its other disks\' parents stay too (per-disk levels)', () => {
    // run 1: vda full, vdb full; run 2: vda full (bitmap lost), vdb incremental on run 1; run 3: both incremental on run 2
    const a1 = rec('2026-01-01 03:00:00', { disk: 'vda' });
    const b1 = rec('2026-01-01 03:00:01', { disk: 'vdb', groupId: a1.groupId });
    const a2 = rec('2026-01-02 03:00:00', { disk: 'vda' });
    const b2 = rec('2026-01-02 03:00:01', { disk: 'vdb', groupId: a2.groupId, parentId: b1.backupId });
    const a3 = rec('2026-01-03 03:00:00', { disk: 'vda', parentId: a2.backupId });
    const b3 = rec('2026-01-03 03:00:01', { disk: 'vdb', groupId: a3.groupId, parentId: b2.backupId });
    const plan = planPrune([a1, b1, a2, b2, a3, b3], { keep: { last: 1 } }, NOW);
    expect(lines(plan)).toEqual([
      'web 2026-01-03 03:00 vda,vdb keep keep-last',
      'web 2026-01-02 03:00 vda,vdb keep parent of g-20260103030000',
      'web 2026-01-01 03:00 vda,vdb keep parent of g-20260103030000',
    ]);
  });

  it('plans per VM (and per volume for backups that name none); --vm leaves other VMs alone but they keep their parents', () => {
    const list = [
      rec('2026-01-01 03:00:00'), rec('2026-01-02 03:00:00'),
      rec('2026-01-01 04:00:00', { vm: 'db', volumeId: 'vol-db' }), rec('2026-01-02 04:00:00', { vm: 'db', volumeId: 'vol-db' }),
      rec('2026-01-01 05:00:00', { vm: undefined, disk: undefined, volumeId: 'cinder-vol', groupId: undefined, backupId: 'c1' }),
      rec('2026-01-02 05:00:00', { vm: undefined, disk: undefined, volumeId: 'cinder-vol', groupId: undefined, backupId: 'c2' }),
    ];
    const all = planPrune(list, { keep: { last: 1 } }, NOW);
    expect(all.scopes.map((s) => [s.scope, s.vm, s.groups.map((g) => g.action)])).toEqual([
      ['db', 'db', ['keep', 'remove']],
      ['volume cinder-vol', null, ['keep', 'remove']],
      ['web', 'web', ['keep', 'remove']],
    ]);
    const web = planPrune(list, { keep: { last: 1 }, vm: 'web' }, NOW);
    expect(web.scopes.map((s) => s.scope)).toEqual(['web']);
    expect(web.removeOrder).toEqual(['b-20260101030000-vda']);
  });
});

describe('golden: 60 days of nightly backups of a two-disk VM, a full every Sunday, one manual and one protected', () => {
  // Nightly at 02:00 UTC from 2026-01-01 (a Thursday) to 2026-03-01; Sundays full, other nights incremental on the
  // night before (both disks); one extra manual run on 2026-02-20 14:00; the 2026-01-15 run is protected.
  const list: PruneRecord[] = [];
  let prev: Record<string, PruneRecord | undefined> = {};
  const run = (at: string, full: boolean, prot = false) => {
    const next: Record<string, PruneRecord> = {};
    for (const [i, disk] of ['vda', 'vdb'].entries()) {
      const r = rec(`${at}:0${i}`, { disk, groupId: `g-${at.replace(/\D/g, '')}`, parentId: full ? null : prev[disk]!.backupId, ...(prot ? { protected: true } : {}) });
      list.push(r);
      next[disk] = r;
    }
    prev = next;
  };
  for (let d = new Date('2026-01-01T02:00:00Z'); d <= new Date('2026-03-01T02:00:00Z'); d = new Date(d.getTime() + 86_400_000)) {
    const at = d.toISOString().slice(0, 16).replace('T', ' ');
    run(at, d.getUTCDay() === 0 || list.length === 0, at.startsWith('2026-01-15'));
    if (at.startsWith('2026-02-20')) run('2026-02-20 14:00', false);
  }

  it('keep-last 2, keep-daily 7, keep-weekly 4, keep-monthly 3', () => {
    const plan = planPrune(list, { keep: { last: 2, daily: 7, weekly: 4, monthly: 3 } }, NOW);
    expect(lines(plan).map((l) => l.replace('web ', '').replace(' vda,vdb', ''))).toEqual(GOLDEN);
    // every kept backup's chain is whole
    const keptIds = new Set(plan.scopes[0]!.groups.filter((g) => g.action === 'keep').flatMap((g) => g.backups.map((b) => b.backupId)));
    for (const r of list) if (keptIds.has(r.backupId) && r.parentId !== null) expect(keptIds.has(r.parentId)).toBe(true);
    // deletion: no backup goes before one that depends on it
    const at = new Map(plan.removeOrder.map((id, i) => [id, i]));
    for (const r of list) if (at.has(r.backupId) && r.parentId !== null && at.has(r.parentId)) expect(at.get(r.backupId)!).toBeLessThan(at.get(r.parentId)!);
    expect(plan.removeOrder).toHaveLength(2 * GOLDEN.filter((l) => l.includes(' remove ')).length);
  });
});

/** Checked by hand: keep-last covers ISO weeks 09 and 08, so keep-weekly starts at week 07; keep-monthly finds only months
 * already covered; the 02-21 run keeps its chain back to the 02-15 full, the protected 01-15 run its chain to 01-11. */
const GOLDEN: string[] = [
  '2026-03-01 02:00 keep keep-last',
  '2026-02-28 02:00 keep keep-last',
  '2026-02-27 02:00 keep keep-daily 2026-02-27',
  '2026-02-26 02:00 keep keep-daily 2026-02-26',
  '2026-02-25 02:00 keep keep-daily 2026-02-25',
  '2026-02-24 02:00 keep keep-daily 2026-02-24',
  '2026-02-23 02:00 keep keep-daily 2026-02-23',
  '2026-02-22 02:00 keep keep-daily 2026-02-22',
  '2026-02-21 02:00 keep keep-daily 2026-02-21',
  '2026-02-20 14:00 keep parent of g-202602210200',
  '2026-02-20 02:00 keep parent of g-202602210200',
  '2026-02-19 02:00 keep parent of g-202602210200',
  '2026-02-18 02:00 keep parent of g-202602210200',
  '2026-02-17 02:00 keep parent of g-202602210200',
  '2026-02-16 02:00 keep parent of g-202602210200',
  '2026-02-15 02:00 keep keep-weekly 2026-W07',
  '2026-02-14 02:00 remove keep-weekly keeps a newer group of 2026-W07',
  '2026-02-13 02:00 remove keep-weekly keeps a newer group of 2026-W07',
  '2026-02-12 02:00 remove keep-weekly keeps a newer group of 2026-W07',
  '2026-02-11 02:00 remove keep-weekly keeps a newer group of 2026-W07',
  '2026-02-10 02:00 remove keep-weekly keeps a newer group of 2026-W07',
  '2026-02-09 02:00 remove keep-weekly keeps a newer group of 2026-W07',
  '2026-02-08 02:00 keep keep-weekly 2026-W06',
  '2026-02-07 02:00 remove keep-weekly keeps a newer group of 2026-W06',
  '2026-02-06 02:00 remove keep-weekly keeps a newer group of 2026-W06',
  '2026-02-05 02:00 remove keep-weekly keeps a newer group of 2026-W06',
  '2026-02-04 02:00 remove keep-weekly keeps a newer group of 2026-W06',
  '2026-02-03 02:00 remove keep-weekly keeps a newer group of 2026-W06',
  '2026-02-02 02:00 remove keep-weekly keeps a newer group of 2026-W06',
  '2026-02-01 02:00 keep keep-weekly 2026-W05',
  '2026-01-31 02:00 remove keep-weekly keeps a newer group of 2026-W05',
  '2026-01-30 02:00 remove keep-weekly keeps a newer group of 2026-W05',
  '2026-01-29 02:00 remove keep-weekly keeps a newer group of 2026-W05',
  '2026-01-28 02:00 remove keep-weekly keeps a newer group of 2026-W05',
  '2026-01-27 02:00 remove keep-weekly keeps a newer group of 2026-W05',
  '2026-01-26 02:00 remove keep-weekly keeps a newer group of 2026-W05',
  '2026-01-25 02:00 keep keep-weekly 2026-W04',
  '2026-01-24 02:00 remove keep-weekly keeps a newer group of 2026-W04',
  '2026-01-23 02:00 remove keep-weekly keeps a newer group of 2026-W04',
  '2026-01-22 02:00 remove keep-weekly keeps a newer group of 2026-W04',
  '2026-01-21 02:00 remove keep-weekly keeps a newer group of 2026-W04',
  '2026-01-20 02:00 remove keep-weekly keeps a newer group of 2026-W04',
  '2026-01-19 02:00 remove keep-weekly keeps a newer group of 2026-W04',
  '2026-01-18 02:00 remove no rule keeps it',
  '2026-01-17 02:00 remove no rule keeps it',
  '2026-01-16 02:00 remove no rule keeps it',
  '2026-01-15 02:00 keep protected',
  '2026-01-14 02:00 keep parent of g-202601150200',
  '2026-01-13 02:00 keep parent of g-202601150200',
  '2026-01-12 02:00 keep parent of g-202601150200',
  '2026-01-11 02:00 keep parent of g-202601150200',
  '2026-01-10 02:00 remove no rule keeps it',
  '2026-01-09 02:00 remove no rule keeps it',
  '2026-01-08 02:00 remove no rule keeps it',
  '2026-01-07 02:00 remove no rule keeps it',
  '2026-01-06 02:00 remove no rule keeps it',
  '2026-01-05 02:00 remove no rule keeps it',
  '2026-01-04 02:00 remove no rule keeps it',
  '2026-01-03 02:00 remove no rule keeps it',
  '2026-01-02 02:00 remove no rule keeps it',
  '2026-01-01 02:00 remove no rule keeps it',
];
