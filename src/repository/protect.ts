// Protection marks: a protected backup is never pruned. The mark is `extra_metadata.fleece_protected` in the
// backup's own `_metadata`, rewritten whole and atomically (put replaces the object at once: temp file + rename on
// posix, one PUT or completed multipart upload on S3).
//
// Why there and not in a marker object beside the manifest: gc removes every object of a container that no
// `_metadata` lists (posix layout), so a marker would vanish a day later; the manifest is also what travels when a
// repository is copied and what the catalog is rebuilt from. Cinder ignores extra_metadata when it restores (it only
// hands it to the driver's object reader, which the posix and S3 drivers ignore), and the text stays exactly what
// json.dumps(sort_keys=True, indent=2) writes. A key of its own beside `fleece` (not inside it) marks Cinder-written
// backups too without making them look fleece-written; unprotecting removes the key (and an extra_metadata left
// empty), so the manifest is byte-identical to what it was before.
import { IntegrityError, NotFoundError, throwIfAborted } from '../util/errors.js';
import type { Repository } from './repository.js';
import type { BackupRecord } from './catalog.js';
import { parseMetadataStream, serializeMetadataPieces, type BackupMetadata } from './format/manifest.js';
import { metadataName, sha256FileName } from './format/naming.js';
import { ObjectNotFoundError } from './store/object-store.js';

/** The extra_metadata key of the mark. */
export const PROTECTION_KEY = 'fleece_protected';

/** The mark: when it was set, and an optional note. */
export interface Protection {
  since: string;
  note?: string;
}

/** The protection a manifest carries, or undefined. */
export function protectionOf(meta: BackupMetadata): Protection | undefined {
  const mark = meta.extra_metadata?.[PROTECTION_KEY];
  if (mark === undefined || mark === null) return undefined;
  if (typeof mark !== 'object') return { since: '' }; // a damaged mark still protects
  const { since, note } = mark as Record<string, unknown>;
  return { since: typeof since === 'string' ? since : '', ...(typeof note === 'string' ? { note } : {}) };
}

/** Reads a record's manifest where the catalog found it. Throws ObjectNotFoundError, IntegrityError, StoreError. */
export async function loadManifest(repo: Repository, record: BackupRecord, signal?: AbortSignal): Promise<BackupMetadata> {
  const name = metadataName(record.prefix);
  return parseMetadataStream(repo.store.getStream(record.container, name, { signal }), `${record.container}/${name}`);
}

export interface ProtectOptions {
  note?: string;
  now?: Date;
  signal?: AbortSignal;
}

/**
 * Sets (`protect` true) or removes the mark of one backup; returns whether the manifest changed (false: it already
 * was so). Throws NotFoundError when the backup went away meanwhile (its _metadata or _sha256file is gone after the
 * rewrite: the rewritten manifest is removed again), IntegrityError, StoreError, AbortedError.
 */
export async function setProtection(repo: Repository, record: BackupRecord, protect: boolean, options: ProtectOptions = {}): Promise<{ changed: boolean }> {
  const meta = await loadManifest(repo, record, options.signal);
  if (meta.backup_id !== record.backupId) throw new IntegrityError(`manifest ${record.container}/${metadataName(record.prefix)} is for backup ${meta.backup_id}, not ${record.backupId}`);
  const current = protectionOf(meta);
  if (protect === (current !== undefined) && (!protect || options.note === undefined || options.note === current?.note)) return { changed: false };
  const extra: Record<string, unknown> = { ...(meta.extra_metadata ?? {}) };
  if (protect) {
    extra[PROTECTION_KEY] = { since: (options.now ?? new Date()).toISOString(), ...(options.note !== undefined ? { note: options.note } : {}) };
  } else {
    delete extra[PROTECTION_KEY];
  }
  const next: BackupMetadata = { ...meta };
  if (Object.keys(extra).length > 0) next.extra_metadata = extra as BackupMetadata['extra_metadata'];
  else delete next.extra_metadata;
  throwIfAborted(options.signal, `marking backup ${record.backupId}`);
  const name = metadataName(record.prefix);
  const pieces = async function* () { yield* serializeMetadataPieces(next); };
  await repo.store.put(record.container, name, pieces(), { signal: options.signal });
  // A delete that ran meanwhile removes the _metadata first, then the other objects: if they are gone now, the
  // manifest just put would describe a backup without its objects. Take it away again.
  if (!(await repo.store.exists(record.container, sha256FileName(record.prefix)))) {
    await repo.store.delete(record.container, name).catch(() => undefined);
    throw new NotFoundError(`backup ${record.backupId} was deleted while it was being marked`, { hint: 'list the backups again' });
  }
  return { changed: true };
}

/** The protection of each of `records` (by backup id; unprotected ones, and ones deleted since, are absent). Throws StoreError, IntegrityError. */
export async function readProtections(repo: Repository, records: readonly BackupRecord[], signal?: AbortSignal): Promise<Map<string, Protection>> {
  const out = new Map<string, Protection>();
  for (const record of records) {
    throwIfAborted(signal, 'reading protection marks');
    let meta: BackupMetadata;
    try {
      meta = await loadManifest(repo, record, signal);
    } catch (error) {
      if (error instanceof ObjectNotFoundError) continue; // deleted since the scan: nothing to protect
      throw error;
    }
    const mark = protectionOf(meta);
    if (mark) out.set(record.backupId, mark);
  }
  return out;
}
