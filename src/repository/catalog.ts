// The catalog: every committed backup (one per _metadata object), rebuilt by scanning the containers; chain resolution.
import { NotFoundError, IntegrityError, throwIfAborted } from '../util/errors.js';
import { getLogger } from '../util/logger.js';
import type { ObjectStore } from './store/object-store.js';
import { NewerFormatError, parseMetadataStream, type BackupMetadata } from './format/manifest.js';
import { prefixOfMetadataName } from './format/naming.js';

const log = getLogger('repository.catalog');

/** One committed backup as the catalog lists it (the equivalent of Cinder's backup record). */
export interface BackupRecord {
  backupId: string;
  volumeId: string;
  parentId: string | null;
  container: string;
  prefix: string;
  /** Cinder's created_at text (`YYYY-MM-DD HH:MM:SS[.ffffff]`, UTC). */
  createdAt: string;
  name: string | null;
  vm?: string;
  disk?: string;
  checkpoint?: string;
  incrementalFrom?: string;
  groupId?: string;
  /** Virtual disk size, when a fleece manifest records it. */
  size?: number;
  shaBlockSize?: number;
  mode?: string;
  /** Bytes stored in data objects (compressed); from the manifest, or undefined for foreign backups. */
  storedBytes?: number;
  /** Uncompressed bytes in data objects. */
  dataBytes: number;
  objects: number;
  /** Written by fleece (has extra_metadata.fleece), not by Cinder. */
  fleece: boolean;
}

/** A backup's chain names a parent that is not in the repository. */
export class MissingParentError extends NotFoundError {
  constructor(readonly backupId: string, readonly parentId: string) {
    super(`backup ${backupId} needs its parent backup ${parentId}, which is not in the repository`, {
      hint: 'the chain is broken: restore an older complete backup, or take a new full backup',
    });
  }
}

/** Builds a record from a parsed manifest. */
export function recordOf(meta: BackupMetadata, container: string, prefix: string): BackupRecord {
  const f = meta.extra_metadata?.fleece;
  const dataBytes = meta.objects.reduce((sum, o) => sum + o.length, 0);
  return {
    backupId: meta.backup_id,
    volumeId: meta.volume_id,
    parentId: meta.parent_id,
    container,
    prefix,
    createdAt: meta.created_at,
    name: meta.backup_name,
    ...(f?.vm !== undefined ? { vm: f.vm } : {}),
    ...(f?.disk !== undefined ? { disk: f.disk } : {}),
    ...(f?.checkpoint !== undefined ? { checkpoint: f.checkpoint } : {}),
    ...(f?.incremental_from !== undefined ? { incrementalFrom: f.incremental_from } : {}),
    ...(f?.group_id !== undefined ? { groupId: f.group_id } : {}),
    ...(f?.virtual_size !== undefined ? { size: f.virtual_size } : {}),
    ...(f?.sha_block_size !== undefined ? { shaBlockSize: f.sha_block_size } : {}),
    ...(f?.mode !== undefined ? { mode: f.mode } : {}),
    ...(f?.bytes_stored !== undefined ? { storedBytes: f.bytes_stored } : {}),
    dataBytes,
    objects: meta.objects.length,
    fleece: f !== undefined,
  };
}

/**
 * A `_metadata` the scan could not read: `damaged` (not a valid manifest) or `newer-format` (a format version this
 * fleece does not know, `formatVersion`). `backupId` is the id in the object's name.
 */
export interface ScanProblem {
  container: string;
  object: string;
  error: Error;
  state: 'damaged' | 'newer-format';
  backupId?: string;
  formatVersion?: string;
}

/** The problem record of an unreadable `_metadata`. */
export function scanProblem(container: string, object: string, error: Error): ScanProblem {
  const id = /_backup_([A-Za-z0-9][A-Za-z0-9-]*)_metadata$/.exec(object)?.[1];
  return {
    container, object, error, state: error instanceof NewerFormatError ? 'newer-format' : 'damaged',
    ...(id !== undefined ? { backupId: id } : {}),
    ...(error instanceof NewerFormatError ? { formatVersion: error.formatVersion } : {}),
  };
}

/**
 * Scans every container for `_metadata` objects. Damaged manifests are reported in `problems`, not thrown.
 * Throws StoreError when the store fails, AbortedError on abort.
 */
export async function scanCatalog(store: ObjectStore, signal?: AbortSignal): Promise<{ records: BackupRecord[]; problems: ScanProblem[] }> {
  const records: BackupRecord[] = [];
  const problems: ScanProblem[] = [];
  for await (const container of store.listContainers({ signal })) {
    throwIfAborted(signal, 'scanning the repository');
    for (const info of await store.list(container, '', { signal, suffix: '_metadata' })) {
      const prefix = prefixOfMetadataName(info.name);
      if (prefix === undefined) continue;
      try {
        const meta = await parseMetadataStream(store.getStream(container, info.name, { signal }), `${container}/${info.name}`);
        records.push(recordOf(meta, container, prefix));
      } catch (error) {
        log.debug({ container, object: info.name, err: error }, 'damaged manifest');
        problems.push(scanProblem(container, info.name, error as Error));
      }
    }
  }
  records.sort((a, b) => (a.createdAt < b.createdAt ? -1 : a.createdAt > b.createdAt ? 1 : a.backupId < b.backupId ? -1 : 1));
  return { records, problems };
}

/** The chain from the full backup to `backupId` (full first). Throws NotFoundError, MissingParentError, IntegrityError (a cycle). */
export function resolveChain(records: ReadonlyMap<string, BackupRecord>, backupId: string): BackupRecord[] {
  const chain: BackupRecord[] = [];
  const seen = new Set<string>();
  let record = records.get(backupId);
  if (!record) throw new NotFoundError(`backup ${backupId} is not in the repository`, { hint: 'list the backups to find its id' });
  for (;;) {
    if (seen.has(record.backupId)) throw new IntegrityError(`the chain of backup ${backupId} loops at ${record.backupId}`);
    seen.add(record.backupId);
    chain.push(record);
    if (record.parentId === null) break;
    const parent = records.get(record.parentId);
    if (!parent) throw new MissingParentError(record.backupId, record.parentId);
    record = parent;
  }
  return chain.reverse();
}
