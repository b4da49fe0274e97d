// Repository commands shared by the CLI and the daemon: list, find a backup (by id, or VM + disk + point in time),
// restore to a raw/qcow2 file, verify, delete, gc.
import { access, lstat, rm } from 'node:fs/promises';
import {
  isS3Location,
  openRepository,
  readProtections,
  type BackupRecord,
  type DeleteReport,
  type GcReport,
  type GuestConfigExtra,
  type Repository,
  type ScanProblem,
  type VerifyReport,
  MARKER_NAME,
  type RepositoryMarker,
} from '../repository/index.js';
// The restore code (and execa, for qemu-img) loads in restoreToFile only: `fleece list` and the daemon start without it.
import type { RestoreSummary } from '../restore/index.js';
import { ConflictError, IntegrityError, InvalidInputError, NotFoundError } from '../util/errors.js';

/** Which backup: an id, or the newest backup of a VM's disk (at or before `at`). */
export interface BackupSelector {
  backupId?: string;
  vm?: string;
  disk?: string;
  /** A point in time: the newest backup created at or before it. */
  at?: Date;
}

/** The creation time of a record as a Date (Cinder's `YYYY-MM-DD HH:MM:SS[.ffffff]`, UTC). */
export function createdAtDate(record: Pick<BackupRecord, 'createdAt'>): Date {
  return new Date(`${record.createdAt.replace(' ', 'T')}Z`);
}

/**
 * Parses `--at`: an ISO 8601 time (`2025-01-02T03:04:05Z`, `2025-01-02 03:04`); without a zone it is UTC.
 * @throws InvalidInputError naming the text and the expected form.
 */
export function parsePointInTime(text: string): Date {
  const trimmed = text.trim();
  const withZone = /[zZ]|[+-]\d\d:?\d\d$/.test(trimmed) || !/\d\d:\d\d/.test(trimmed) ? trimmed : `${trimmed}Z`;
  const date = new Date(withZone.replace(' ', 'T'));
  if (Number.isNaN(date.getTime())) {
    throw new InvalidInputError(`--at '${text}' is not a point in time`, { hint: 'use ISO 8601, e.g. --at 2025-01-02T03:04:05Z' });
  }
  return date;
}

async function open(repo: string | Repository): Promise<Repository> {
  if (typeof repo !== 'string') return repo;
  if (isS3Location(repo)) return openRepository(repo); // checks the bucket at once, with a clear error
  try {
    await access(repo);
  } catch {
    throw new NotFoundError(`repository ${repo} does not exist`, { hint: 'check --repo (a backup creates the directory)' });
  }
  return openRepository(repo);
}

/** The repository marker of `repo`. @throws NotFoundError (no repository, or no marker), StoreError, IntegrityError. */
export async function readRepositoryMarker(repo: string | Repository): Promise<RepositoryMarker> {
  const r = await open(repo);
  const marker = await r.marker();
  if (typeof marker !== 'object') {
    throw new NotFoundError(`${r.store.location} has no repository marker (${MARKER_NAME})`, { hint: `run \`fleece repo init ${r.store.location}\`` });
  }
  return marker;
}

/** Committed backups, oldest first, filtered by VM and disk. @throws NotFoundError (no repository), StoreError. */
export async function listBackups(
  repo: string | Repository, filter: { vm?: string; disk?: string; signal?: AbortSignal; withProtection?: boolean } = {},
): Promise<(BackupRecord & { protected?: true })[]> {
  const r = await open(repo);
  const records = await r.list({
    ...(filter.vm !== undefined ? { vm: filter.vm } : {}),
    ...(filter.disk !== undefined ? { disk: filter.disk } : {}),
    ...(filter.signal ? { signal: filter.signal } : {}),
  });
  records.sort((a, b) => (a.createdAt === b.createdAt ? 0 : a.createdAt < b.createdAt ? -1 : 1));
  if (!filter.withProtection) return records;
  // One more read per backup: the mark lives in each manifest (repository/protect.ts).
  const marks = await readProtections(r, records, filter.signal);
  return records.map((x) => (marks.has(x.backupId) ? { ...x, protected: true as const } : x));
}

/**
 * Refuses to delete a protected backup (prune never removes one either): the backups a delete would remove are
 * `ids` and, with cascade, every incremental built on them. @throws ConflictError naming the backup and the fix.
 */
async function refuseProtected(r: Repository, ids: readonly string[], cascade: boolean, signal?: AbortSignal): Promise<void> {
  const { records } = await r.scan(signal);
  const doomed = new Set(ids);
  for (let grew = cascade; grew;) {
    const children = records.filter((x) => x.parentId !== null && doomed.has(x.parentId) && !doomed.has(x.backupId));
    for (const x of children) doomed.add(x.backupId);
    grew = children.length > 0;
  }
  const marks = await readProtections(r, records.filter((x) => doomed.has(x.backupId)), signal);
  const [first] = marks.keys();
  if (first !== undefined) {
    const note = marks.get(first)!.note;
    throw new ConflictError(`backup ${first} is protected${note ? ` (${note})` : ''}: it is not deleted`, {
      hint: `unprotect it first: fleece unprotect --repo ${r.store.location} --backup ${first}`,
    });
  }
}

/** A backup `list` shows but cannot read: its `_metadata` is damaged, or of a format written by a newer fleece. */
export interface UnreadableBackup {
  backupId: string | null;
  container: string;
  object: string;
  state: ScanProblem['state'];
  formatVersion?: string;
  reason: string;
}

/**
 * The committed backups (as listBackups) and every backup whose `_metadata` could not be read (whatever the filter:
 * an unreadable manifest names no VM). @throws NotFoundError (no repository), StoreError.
 */
export async function listRepository(
  repo: string | Repository, filter: { vm?: string; disk?: string; signal?: AbortSignal; withProtection?: boolean } = {},
): Promise<{ records: (BackupRecord & { protected?: true })[]; unreadable: UnreadableBackup[] }> {
  const r = await open(repo);
  const records = await listBackups(r, filter);
  const { problems } = await r.scan(filter.signal);
  const unreadable = problems.map((p): UnreadableBackup => ({
    backupId: p.backupId ?? null, container: p.container, object: p.object, state: p.state,
    ...(p.formatVersion !== undefined ? { formatVersion: p.formatVersion } : {}), reason: p.error.message,
  }));
  return { records, unreadable };
}

/**
 * The one backup a selector names.
 * @throws InvalidInputError (neither id nor VM; several disks and no --disk), NotFoundError naming what was
 *   looked for and how to list what exists.
 */
export async function findBackup(repo: string | Repository, selector: BackupSelector): Promise<BackupRecord> {
  const r = await open(repo);
  if (selector.backupId !== undefined) {
    try {
      return await r.get(selector.backupId);
    } catch (error) {
      if (error instanceof NotFoundError) {
        throw new NotFoundError(`backup '${selector.backupId}' is not in the repository ${r.store.location}`, {
          hint: `list the backups with \`fleece list --repo ${r.store.location}\``,
          cause: error,
        });
      }
      throw error;
    }
  }
  if (selector.vm === undefined) {
    throw new InvalidInputError('no backup was named', { hint: 'give --backup ID, or --vm NAME [--disk TARGET] [--at TIME]' });
  }
  let records = await listBackups(r, { vm: selector.vm, ...(selector.disk !== undefined ? { disk: selector.disk } : {}) });
  const what = `VM '${selector.vm}'${selector.disk !== undefined ? ` disk ${selector.disk}` : ''}`;
  if (records.length === 0) {
    throw new NotFoundError(`the repository ${r.store.location} has no backup of ${what}`, {
      hint: `list the backups with \`fleece list --repo ${r.store.location}\``,
    });
  }
  const disks = [...new Set(records.map((rec) => rec.disk ?? ''))];
  if (selector.disk === undefined && disks.length > 1) {
    throw new InvalidInputError(`VM '${selector.vm}' has backups of several disks (${disks.join(', ')})`, { hint: 'choose one with --disk' });
  }
  if (selector.at) {
    const at = selector.at.getTime();
    records = records.filter((rec) => createdAtDate(rec).getTime() <= at);
    if (records.length === 0) {
      throw new NotFoundError(`the repository has no backup of ${what} at or before ${selector.at.toISOString()}`, {
        hint: 'list the backups to see their times (fleece list), or give a later --at',
      });
    }
  }
  return records[records.length - 1]!;
}

export interface RestoreRequest {
  repo: string | Repository;
  selector: BackupSelector;
  out: string;
  /** Default raw. */
  format?: 'raw' | 'qcow2';
  /** Replace an existing file. */
  overwrite?: boolean;
}

/**
 * Restores a backup (its chain from the full one) into a new file, checking md5 per object and the final sha256s.
 * A partial file is removed when the restore fails.
 * @throws InvalidInputError, NotFoundError (backup, broken chain), StoreError (out exists), IntegrityError, AbortedError.
 */
export async function restoreToFile(
  request: RestoreRequest,
  hooks: { signal?: AbortSignal; onProgress?: (done: number, total: number) => void } = {},
): Promise<{ record: BackupRecord; summary: RestoreSummary; out: string; format: 'raw' | 'qcow2' }> {
  const { createSparseFileSink, restoreBackup, restoreToQcow2 } = await import('../restore/index.js');
  const repo = await open(request.repo);
  const record = await findBackup(repo, request.selector);
  const format = request.format ?? 'raw';
  const target = await lstat(request.out).catch(() => undefined);
  const exists = target !== undefined;
  if (target?.isSymbolicLink()) {
    throw new ConflictError(`the restore target ${request.out} is a symbolic link: fleece never writes through one${request.overwrite ? ', even with --force' : ''}`, {
      hint: 'restore to the path it points to, or remove the link first',
    });
  }
  if (exists && !request.overwrite) {
    throw new ConflictError(`the restore target ${request.out} already exists`, { hint: 'choose a new path, or pass --force (the API: "force": true) to replace it' });
  }
  const options = { ...(hooks.signal ? { signal: hooks.signal } : {}), ...(hooks.onProgress ? { onProgress: hooks.onProgress } : {}) };
  let created = false;
  try {
    let summary: RestoreSummary;
    if (format === 'qcow2') {
      // written under a temporary name and renamed over `out` at the end: nothing to remove on failure
      summary = await restoreToQcow2(repo, record.backupId, request.out, options);
    } else {
      const size = record.size ?? (await repo.readSha256(record.backupId)).digests.length / 32 * (record.shaBlockSize ?? 0);
      if (!(size > 0)) {
        throw new InvalidInputError(`backup ${record.backupId} does not record its disk size`, { hint: 'restore it with --format qcow2' });
      }
      const sink = await createSparseFileSink(request.out, size, { overwrite: exists });
      created = true;
      try {
        summary = await restoreBackup(repo, record.backupId, sink, options);
      } finally {
        await sink.close();
      }
    }
    return { record, summary, out: request.out, format };
  } catch (error) {
    if (created) await rm(request.out, { force: true }).catch(() => undefined);
    throw error;
  }
}

/** Verifies a backup and its chain (md5 per object; `deep`: every sha256 block too). @throws NotFoundError. */
export async function verifyBackup(
  repo: string | Repository,
  selector: BackupSelector,
  options: { deep?: boolean; signal?: AbortSignal; onProgress?: (done: number, total: number) => void } = {},
): Promise<{ record: BackupRecord; report: VerifyReport }> {
  const r = await open(repo);
  await r.requireMarker('verify');
  const record = await findBackup(r, selector);
  const report = await r.verify(record.backupId, options);
  return { record, report };
}

/**
 * Deletes one backup (with `cascade`, the incrementals built on it too), or every disk backup of a group.
 * @throws NotFoundError, ConflictError (dependants without cascade), InvalidInputError (nothing named).
 */
export async function deleteBackups(
  repo: string | Repository,
  target: { backupId?: string; groupId?: string; cascade?: boolean; signal?: AbortSignal },
): Promise<DeleteReport> {
  const r = await open(repo);
  await r.requireMarker('delete');
  const options = { ...(target.cascade ? { cascade: true } : {}), ...(target.signal ? { signal: target.signal } : {}) };
  if (target.backupId !== undefined) {
    await findBackup(r, { backupId: target.backupId });
    await refuseProtected(r, [target.backupId], target.cascade ?? false, target.signal);
    return r.delete(target.backupId, options);
  }
  if (target.groupId !== undefined) {
    const members = await r.list({ groupId: target.groupId });
    if (members.length === 0) {
      throw new NotFoundError(`the repository has no backup group '${target.groupId}'`, { hint: 'list the backups with `fleece list --repo DIR`' });
    }
    await refuseProtected(r, members.map((m) => m.backupId), target.cascade ?? false, target.signal);
    const report: DeleteReport = { deleted: [], objectsRemoved: 0 };
    for (const m of members) {
      if (report.deleted.includes(m.backupId)) continue;
      const one = await r.delete(m.backupId, options);
      report.deleted.push(...one.deleted);
      report.objectsRemoved += one.objectsRemoved;
    }
    return report;
  }
  throw new InvalidInputError('no backup to delete was named', { hint: 'give --backup ID or --group ID' });
}

/** Removes objects no backup references (older than the grace period). @throws NotFoundError, StoreError. */
export async function collectRepositoryGarbage(
  repo: string | Repository,
  options: { dryRun?: boolean; gracePeriodMs?: number; signal?: AbortSignal } = {},
): Promise<GcReport> {
  return (await open(repo)).gc(options);
}

/**
 * The disk backups of one VM backup group (one `fleece backup` run), ordered by disk.
 * @throws NotFoundError naming the group (and the repository) when it has no backup, StoreError.
 */
export async function findGroup(repo: string | Repository, groupId: string, options: { signal?: AbortSignal } = {}): Promise<BackupRecord[]> {
  const r = await open(repo);
  const members = await r.list({ groupId, ...(options.signal ? { signal: options.signal } : {}) });
  if (members.length === 0) {
    throw new NotFoundError(`the repository ${r.store.location} has no backup group '${groupId}'`, {
      hint: `list the backups and their groups with \`fleece list --repo ${r.store.location}\``,
    });
  }
  const key = (rec: BackupRecord) => rec.disk ?? rec.backupId;
  return members.sort((a, b) => (key(a) === key(b) ? 0 : key(a) < key(b) ? -1 : 1));
}

/**
 * The guest configuration a backup carries (`extra_metadata.fleece.guest_config`: libvirt's domain XML at backup
 * time), or undefined when it has none (Cinder-written backups, bare QEMU VMs, older fleece). `format` is
 * 'libvirt-domain-xml' today; a newer fleece may write others, so the caller checks it.
 * @throws NotFoundError (no such backup), IntegrityError (damaged manifest, or a guest_config that is not {format, text}).
 */
export async function readGuestConfig(repo: string | Repository, backupId: string): Promise<{ format: GuestConfigExtra['format'] | string; text: string } | undefined> {
  const r = await open(repo);
  const { metadata } = await r.load(backupId);
  const config: unknown = metadata.extra_metadata?.fleece?.guest_config;
  if (config === undefined || config === null) return undefined;
  const { format, text } = config as Record<string, unknown>;
  if (typeof config !== 'object' || typeof format !== 'string' || typeof text !== 'string') {
    throw new IntegrityError(`the manifest of backup ${backupId} has a damaged guest_config`, {
      hint: 'it should be {"format": "libvirt-domain-xml", "text": "<domain…>"}', expected: '{format, text}', found: JSON.stringify(config).slice(0, 80),
    });
  }
  return { format, text };
}
