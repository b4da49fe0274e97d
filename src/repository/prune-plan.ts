// Prune planning (pure, no I/O): which backup groups a retention policy keeps, with Proxmox Backup Server's rules,
// plus what Cinder's chains add: the parent chain of every kept backup is kept too ("needed by …").
//
// The unit is a backup group: every disk backup of one `fleece backup` run (BackupRecord.groupId); a record without a
// group is a group of its own. Groups are planned per scope: a VM (or, for backups that name none, their volume).
// PBS's algorithm, over a scope's groups sorted newest first, in the order last, hourly, daily, weekly, monthly,
// yearly: each rule with count N walks the groups not yet marked and keeps the newest group of each period (the
// period: the group itself for keep-last, else its hour / day / ISO week / month / year in `timeZone`) until it has
// kept N periods; a group in a period that it kept already is marked "remove" (a newer one of that period is kept);
// a period that an earlier rule already kept is skipped and does not count. Protected groups are kept, skipped by
// the rules and never count. Whatever no rule marked is removed. With no rule of count > 0 everything is kept.
// Then the chains: a kept group keeps every group holding a parent (transitively) of one of its backups.
import { InvalidInputError } from '../util/errors.js';
import type { BackupRecord } from './catalog.js';

/** A backup as prune sees it: its catalog record, and whether it carries a protection mark (see protect.ts). */
export type PruneRecord = BackupRecord & { protected?: boolean };

/** How many periods each rule keeps (absent or 0: the rule is off), as PBS's `keep-*` options. */
export interface KeepOptions {
  last?: number;
  hourly?: number;
  daily?: number;
  weekly?: number;
  monthly?: number;
  yearly?: number;
}

export interface PrunePolicy {
  keep: KeepOptions;
  /** Plan only this VM's groups (others are kept, and still keep the parents they need). */
  vm?: string;
  /** The IANA time zone whose calendar defines hours, days, weeks, months and years; default 'UTC'. */
  timeZone?: string;
}

export type PruneRule = 'keep-last' | 'keep-hourly' | 'keep-daily' | 'keep-weekly' | 'keep-monthly' | 'keep-yearly';

/** Why a group is kept or removed. */
export type PruneReason =
  | { kind: 'rule'; rule: PruneRule; period: string }
  | { kind: 'protected' }
  /** Kept only because kept groups' backups are incrementals on it (group keys, newest first). */
  | { kind: 'needed'; by: string[] }
  | { kind: 'keep-all' }
  /** Removed: `rule` kept a newer group of the same period. */
  | { kind: 'superseded'; rule: PruneRule; period: string }
  | { kind: 'unselected' };

export interface PruneGroup {
  /** The group id, or the backup id of a record without a group. */
  key: string;
  groupId: string | null;
  scope: string;
  vm: string | null;
  /** The group's time: its oldest backup's created_at (Cinder's text, UTC). */
  createdAt: string;
  disks: string[];
  backups: PruneRecord[];
  action: 'keep' | 'remove';
  reason: PruneReason;
}

export interface PrunePlan {
  /** When it was planned (ISO 8601). */
  at: string;
  policy: PrunePolicy;
  /** Scopes in name order, each with its groups newest first. */
  scopes: { scope: string; vm: string | null; groups: PruneGroup[] }[];
  /** Backup ids to delete, each after every backup that depends on it (dependants first). */
  removeOrder: string[];
}

const RULES: { rule: PruneRule; option: keyof KeepOptions }[] = [
  { rule: 'keep-last', option: 'last' }, { rule: 'keep-hourly', option: 'hourly' }, { rule: 'keep-daily', option: 'daily' },
  { rule: 'keep-weekly', option: 'weekly' }, { rule: 'keep-monthly', option: 'monthly' }, { rule: 'keep-yearly', option: 'yearly' },
];

/** Whether any rule keeps something (PBS's keeps_something). */
export function keepsSomething(keep: KeepOptions): boolean {
  return RULES.some(({ option }) => (keep[option] ?? 0) > 0);
}

/** PBS's command line spelling of the options given: `--keep-last 3 --keep-daily 7`. */
export function describeKeepOptions(keep: KeepOptions): string {
  return RULES.filter(({ option }) => (keep[option] ?? 0) > 0).map(({ rule, option }) => `--${rule} ${keep[option]}`).join(' ');
}

/** A one-line text of a reason ("keep-daily 2026-01-04", "parent of …"), the same in the CLI and in tests. */
export function describeReason(reason: PruneReason): string {
  switch (reason.kind) {
    case 'rule': return reason.rule === 'keep-last' ? 'keep-last' : `${reason.rule} ${reason.period}`;
    case 'protected': return 'protected';
    case 'needed': return `parent of ${reason.by.join(', ')}`;
    case 'keep-all': return 'no keep rule given: everything is kept';
    case 'superseded': return `${reason.rule} keeps a newer group of ${reason.period}`;
    case 'unselected': return 'no rule keeps it';
  }
}

interface Calendar { year: number; month: number; day: number; hour: number }

const pad = (n: number, w = 2) => String(n).padStart(w, '0');

/** The calendar fields of an instant in a time zone. Throws InvalidInputError for an unknown zone. */
function calendarOf(timeZone: string): (date: Date) => Calendar {
  if (timeZone === 'UTC') return (d) => ({ year: d.getUTCFullYear(), month: d.getUTCMonth() + 1, day: d.getUTCDate(), hour: d.getUTCHours() });
  let format: Intl.DateTimeFormat;
  try {
    format = new Intl.DateTimeFormat('en-US', { timeZone, year: 'numeric', month: 'numeric', day: 'numeric', hour: 'numeric', hourCycle: 'h23' });
  } catch (error) {
    throw new InvalidInputError(`time zone '${timeZone}' is not known`, { hint: 'use an IANA name such as UTC or Europe/Vienna', cause: error });
  }
  return (d) => {
    const parts = Object.fromEntries(format.formatToParts(d).map((p) => [p.type, p.value]));
    return { year: Number(parts.year), month: Number(parts.month), day: Number(parts.day), hour: Number(parts.hour) % 24 };
  };
}

/** ISO 8601 week-numbering year and week of a calendar date (weeks start on Monday; week 1 holds a Thursday). */
function isoWeek({ year, month, day }: Calendar): { year: number; week: number } {
  const date = Date.UTC(year, month - 1, day);
  const weekday = (new Date(date).getUTCDay() + 6) % 7; // Monday 0 … Sunday 6
  const thursday = new Date(date + (3 - weekday) * 86_400_000);
  const isoYear = thursday.getUTCFullYear();
  const week = 1 + Math.floor((thursday.getTime() - Date.UTC(isoYear, 0, 1)) / (7 * 86_400_000));
  return { year: isoYear, week };
}

/** The period id of a group for a rule (PBS: %Y/%m/%d/%H, %Y/%m/%d, %G/%V, %Y/%m, %Y; keep-last: the group). */
function periodOf(rule: PruneRule, c: Calendar, key: string): string {
  switch (rule) {
    case 'keep-last': return key;
    case 'keep-hourly': return `${c.year}-${pad(c.month)}-${pad(c.day)} ${pad(c.hour)}h`;
    case 'keep-daily': return `${c.year}-${pad(c.month)}-${pad(c.day)}`;
    case 'keep-weekly': { const w = isoWeek(c); return `${w.year}-W${pad(w.week)}`; }
    case 'keep-monthly': return `${c.year}-${pad(c.month)}`;
    case 'keep-yearly': return String(c.year);
  }
}

/** Cinder's created_at (`YYYY-MM-DD HH:MM:SS[.ffffff]`, UTC) as a Date. Throws InvalidInputError when it is not one. */
export function createdAtInstant(createdAt: string): Date {
  const m = /^(\d{4})-(\d\d)-(\d\d)[ T](\d\d):(\d\d):(\d\d)(?:\.(\d{1,6}))?/.exec(createdAt);
  if (!m) throw new InvalidInputError(`created_at '${createdAt}' is not a Cinder time`, { hint: 'the manifest is damaged or foreign' });
  const ms = m[7] ? Math.floor(Number(m[7].padEnd(6, '0')) / 1000) : 0;
  return new Date(Date.UTC(Number(m[1]), Number(m[2]) - 1, Number(m[3]), Number(m[4]), Number(m[5]), Number(m[6]), ms));
}

const keyOf = (r: BackupRecord) => r.groupId ?? r.backupId;
const scopeOf = (r: BackupRecord) => (r.vm !== undefined ? r.vm : `volume ${r.volumeId}`);
const newestFirst = (a: { createdAt: string; key: string }, b: { createdAt: string; key: string }) =>
  (a.createdAt === b.createdAt ? (a.key < b.key ? 1 : a.key > b.key ? -1 : 0) : a.createdAt < b.createdAt ? 1 : -1);

interface Marked { group: PruneGroup; mark?: 'keep' | 'remove' | 'protected'; reason?: PruneReason }

/** PBS's mark_selections for one rule over one scope's groups (newest first). */
function markRule(groups: Marked[], rule: PruneRule, count: number, periods: Map<PruneGroup, Calendar>): void {
  const period = (g: PruneGroup) => periodOf(rule, periods.get(g)!, g.key);
  const alreadyKept = new Set(groups.filter((g) => g.mark === 'keep').map((g) => period(g.group)));
  const kept = new Set<string>();
  for (const g of groups) {
    if (g.mark !== undefined) continue;
    if (g.group.backups.some((b) => b.protected)) {
      g.mark = 'protected';
      g.reason = { kind: 'protected' };
      continue;
    }
    const p = period(g.group);
    if (alreadyKept.has(p)) continue;
    if (!kept.has(p)) {
      if (kept.size >= count) break;
      kept.add(p);
      g.mark = 'keep';
      g.reason = { kind: 'rule', rule, period: p };
    } else {
      g.mark = 'remove';
      g.reason = { kind: 'superseded', rule, period: p };
    }
  }
}

/**
 * Plans a prune of `records` (the repository's whole catalog: backups outside `policy.vm` are kept but still
 * keep their parents). `now` dates the plan. Throws InvalidInputError for a negative or fractional count, an
 * unknown time zone, or a created_at that is not a time.
 */
export function planPrune(records: readonly PruneRecord[], policy: PrunePolicy, now: Date): PrunePlan {
  for (const { rule, option } of RULES) {
    const n = policy.keep[option];
    if (n !== undefined && (!Number.isSafeInteger(n) || n < 0)) throw new InvalidInputError(`--${rule} ${n} is not a count`, { hint: 'give a whole number of 0 or more' });
  }
  const calendar = calendarOf(policy.timeZone ?? 'UTC');

  // Groups, by key; a group's scope and time come from its oldest backup.
  const byKey = new Map<string, PruneRecord[]>();
  for (const r of records) {
    const members = byKey.get(keyOf(r));
    if (members) members.push(r); else byKey.set(keyOf(r), [r]);
  }
  const groups: PruneGroup[] = [];
  for (const [key, members] of byKey) {
    members.sort((a, b) => (a.createdAt === b.createdAt ? 0 : a.createdAt < b.createdAt ? -1 : 1));
    const first = members[0]!;
    groups.push({
      key, groupId: first.groupId ?? null, scope: scopeOf(first), vm: first.vm ?? null, createdAt: first.createdAt,
      disks: [...new Set(members.map((m) => m.disk ?? m.volumeId))].sort(),
      backups: [...members].sort((a, b) => ((a.disk ?? a.backupId) < (b.disk ?? b.backupId) ? -1 : 1)),
      action: 'keep', reason: { kind: 'keep-all' },
    });
  }
  const periods = new Map(groups.map((g) => [g, calendar(createdAtInstant(g.createdAt))]));
  const inScope = (g: PruneGroup) => policy.vm === undefined || g.vm === policy.vm;

  // PBS's marks, scope by scope.
  const scopes = new Map<string, Marked[]>();
  for (const g of groups.filter(inScope)) {
    const list = scopes.get(g.scope);
    if (list) list.push({ group: g }); else scopes.set(g.scope, [{ group: g }]);
  }
  const keepAll = !keepsSomething(policy.keep);
  for (const marked of scopes.values()) {
    marked.sort((a, b) => newestFirst(a.group, b.group));
    if (!keepAll) {
      for (const { rule, option } of RULES) {
        const count = policy.keep[option];
        if (count !== undefined) markRule(marked, rule, count, periods);
      }
    }
    for (const m of marked) {
      if (m.group.backups.some((b) => b.protected)) {
        m.group.action = 'keep';
        m.group.reason = { kind: 'protected' };
      } else if (keepAll) {
        m.group.action = 'keep';
        m.group.reason = { kind: 'keep-all' };
      } else {
        m.group.action = m.mark === 'keep' ? 'keep' : 'remove';
        m.group.reason = m.reason ?? { kind: 'unselected' };
      }
    }
  }

  // Chains: every kept group (in scope or not) keeps the groups of its backups' parents, transitively; a group kept
  // that way is kept whole, so its other backups' parents are kept too. Each is attributed to the kept groups
  // (by a rule, protected, or outside the plan) whose backups need it.
  const byBackup = new Map(records.map((r) => [r.backupId, r]));
  const groupOf = new Map(groups.flatMap((g) => g.backups.map((b) => [b.backupId, g] as const)));
  const roots = new Set(groups.filter((g) => g.action === 'keep'));
  const neededBy = new Map<PruneGroup, Set<string>>();
  const queue: [PruneGroup, string][] = [...roots].map((g) => [g, g.key]);
  while (queue.length > 0) {
    const [g, root] = queue.shift()!;
    for (const b of g.backups) {
      const parent = b.parentId !== null ? byBackup.get(b.parentId) : undefined;
      if (!parent) continue; // a full, or a broken chain: nothing more to keep
      const pg = groupOf.get(parent.backupId)!;
      if (pg === g || roots.has(pg)) continue;
      const by = neededBy.get(pg) ?? new Set<string>();
      neededBy.set(pg, by);
      if (by.has(root)) continue;
      by.add(root);
      queue.push([pg, root]);
    }
  }
  const order = new Map([...groups].sort(newestFirst).map((g, i) => [g.key, i]));
  for (const [g, by] of neededBy) {
    g.action = 'keep';
    g.reason = { kind: 'needed', by: [...by].sort((a, b) => order.get(a)! - order.get(b)!) };
  }

  // Deletion order: a backup goes after every removed backup that depends on it.
  const removed = groups.filter((g) => g.action === 'remove').flatMap((g) => g.backups);
  const removedIds = new Set(removed.map((r) => r.backupId));
  const children = new Map<string, number>();
  for (const r of removed) if (r.parentId !== null && removedIds.has(r.parentId)) children.set(r.parentId, (children.get(r.parentId) ?? 0) + 1);
  const ready = removed.filter((r) => !children.has(r.backupId));
  const removeOrder: string[] = [];
  const byTime = (a: BackupRecord, b: BackupRecord) => newestFirst({ createdAt: a.createdAt, key: a.backupId }, { createdAt: b.createdAt, key: b.backupId });
  ready.sort(byTime);
  while (ready.length > 0) {
    const r = ready.shift()!;
    removeOrder.push(r.backupId);
    if (r.parentId !== null && removedIds.has(r.parentId)) {
      const left = children.get(r.parentId)! - 1;
      children.set(r.parentId, left);
      if (left === 0) {
        ready.push(byBackup.get(r.parentId)!);
        ready.sort(byTime);
      }
    }
  }

  return {
    at: now.toISOString(),
    policy,
    scopes: [...scopes.entries()].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)).map(([scope, marked]) => ({
      scope, vm: marked[0]!.group.vm, groups: marked.map((m) => m.group),
    })),
    removeOrder,
  };
}
