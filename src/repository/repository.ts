// Repository: the public face of a Cinder-format backup repository (start backups, list, chains, read, verify, delete, gc).
import { ConflictError, IntegrityError, InvalidInputError, NotFoundError } from '../util/errors.js';
import { getLogger } from '../util/logger.js';
import { FsObjectStore } from './store/fs-store.js';
import type { ObjectStore } from './store/object-store.js';
import { containerFor, metadataName, sha256FileName, checkBackupId } from './format/naming.js';
import { parseMetadataStream, type BackupMetadata, type Compression, type GuestConfigExtra, type ObjectEntry } from './format/manifest.js';
import { readSha256Stream, type DigestSink, type Sha256File, type Sha256FileHeader } from './format/sha256-file.js';
import { DigestTable, type DigestTableOptions } from './digest-table.js';
import { BackupWriter, type BackupMode, type BackupSummary, type WriterOptions } from './writer.js';
import { scanCatalog, recordOf, resolveChain, type BackupRecord, type ScanProblem } from './catalog.js';
import { verifyBackup, type VerifyOptions, type VerifyReport } from './verify.js';
import { collectGarbage, type GcOptions, type GcReport } from './gc.js';

const log = getLogger('repository');

export interface StartBackupOptions {
  vm?: string;
  /** The disk's target name (vda…). */
  disk?: string;
  /** The disk's stable id; names the objects (`volume_<volumeId>_…`). */
  volumeId: string;
  /** Virtual disk size in bytes. */
  size: number;
  /** The backup this one is incremental to; requires mode 'changed-extents' or 'compare'. */
  parent?: string;
  /** Default: 'full' without a parent; required with one. */
  mode?: BackupMode;
  backupId?: string;
  chunkSize?: number;
  shaBlockSize?: number;
  /** Default zstd (fast level). */
  compression?: Compression;
  compressionLevel?: number;
  /** The checkpoint this backup ends at / starts from. */
  checkpoint?: string;
  incrementalFrom?: string;
  /** One VM backup = one group of per-disk backups. */
  groupId?: string;
  /** The VM's configuration at backup time, kept in `extra_metadata.fleece.guest_config`. */
  guestConfig?: GuestConfigExtra;
  name?: string;
  description?: string;
  workers?: number;
  queueDepth?: number;
  signal?: AbortSignal;
  now?: Date;
}

export interface ListOptions { vm?: string; disk?: string; volumeId?: string; groupId?: string; signal?: AbortSignal }

export interface DeleteOptions {
  /** Also delete the backups that depend on this one (newest first). Without it, dependants make delete fail. */
  cascade?: boolean;
  signal?: AbortSignal;
}

export interface DeleteReport { deleted: string[]; objectsRemoved: number }

/** A backup's manifest with where it lives. */
export interface LoadedBackup { record: BackupRecord; metadata: BackupMetadata }

/** Tuning that is not part of the format. */
export interface RepositoryOptions {
  /** Where per-block digest tables live (writer, restore, verify): memory up to `memoryLimit`, then a temp file. */
  digestTable?: Pick<DigestTableOptions, 'memoryLimit' | 'cacheBytes' | 'tempDir'>;
}

/** A sha256file's header, digest count and digests (close the table when done). */
export interface Sha256Table { header: Sha256FileHeader; count: number; table: DigestTable; where: string }

/** A repository over any ObjectStore. Create with openRepository(). */
export class Repository {
  constructor(readonly store: ObjectStore, readonly options: RepositoryOptions = {}) {}

  /**
   * Opens a writer for one disk backup; for an incremental, loads the parent's sha256s (compact) first.
   * Throws NotFoundError (parent), InvalidInputError (options), IncompatibleParentError (sha block size, volume).
   */
  async startBackup(options: StartBackupOptions): Promise<BackupWriter> {
    const mode = options.mode ?? (options.parent ? undefined : 'full');
    if (!mode) throw new InvalidInputError('an incremental backup needs a mode', { hint: "use 'changed-extents' (dirty bitmap) or 'compare' (read all, store what changed)" });
    if (options.backupId !== undefined) {
      checkBackupId(options.backupId);
      if ((await this.findMetadataName(options.backupId)) !== undefined) {
        throw new ConflictError(`backup ${options.backupId} already exists`, { hint: 'use a new backup id' });
      }
    }
    let parent: WriterOptions['parent'];
    if (options.parent) {
      const { record } = await this.load(options.parent);
      let bs = record.shaBlockSize;
      let size = record.size;
      if (bs === undefined || size === undefined) { // a Cinder-written parent: one pass for the header and count
        const { header, count } = await this.streamSha256(record, undefined, options.signal);
        bs ??= header.chunk_size;
        size ??= count * header.chunk_size;
      }
      const [shaBlockSize, parentSize] = [bs, size];
      parent = {
        backupId: record.backupId, volumeId: record.volumeId, shaBlockSize, size: parentSize,
        // read straight into the new backup's digest table (no second table, no whole-file parse)
        load: async (sink) => {
          const { header, count, where } = await this.streamSha256(record, sink, options.signal);
          if (header.chunk_size !== shaBlockSize) throw new IntegrityError(`sha256file ${where} has chunk_size ${header.chunk_size}, the manifest says ${shaBlockSize}`, { hint: 'the parent backup is damaged: take a full backup' });
          if (count !== Math.ceil(parentSize / shaBlockSize)) throw new IntegrityError(`sha256file ${where} lists ${count} blocks, a disk of ${parentSize} bytes has ${Math.ceil(parentSize / shaBlockSize)}`, { hint: 'the parent backup is damaged: take a full backup' });
        },
      };
    }
    const writer = new BackupWriter(this.store, {
      backupId: options.backupId, volumeId: options.volumeId, size: options.size, mode, parent,
      chunkSize: options.chunkSize, shaBlockSize: options.shaBlockSize, compression: options.compression,
      compressionLevel: options.compressionLevel, name: options.name ?? null, description: options.description ?? null,
      vm: options.vm, disk: options.disk, checkpoint: options.checkpoint, incrementalFrom: options.incrementalFrom,
      groupId: options.groupId, guestConfig: options.guestConfig, workers: options.workers, queueDepth: options.queueDepth, signal: options.signal, now: options.now,
      digestTable: this.options.digestTable,
    });
    try {
      await writer.prepare();
    } catch (error) {
      await writer.abort(error);
      throw error;
    }
    return writer;
  }

  /** Every committed backup, oldest first, filtered. Damaged manifests are skipped (see scan()). Throws StoreError. */
  async list(options: ListOptions = {}): Promise<BackupRecord[]> {
    const { records } = await this.scan(options.signal);
    return records.filter((r) => (options.vm === undefined || r.vm === options.vm)
      && (options.disk === undefined || r.disk === options.disk)
      && (options.volumeId === undefined || r.volumeId === options.volumeId)
      && (options.groupId === undefined || r.groupId === options.groupId));
  }

  /** Rebuilds the catalog from the containers alone; also reports damaged manifests. Throws StoreError. */
  async scan(signal?: AbortSignal): Promise<{ records: BackupRecord[]; problems: ScanProblem[] }> {
    return scanCatalog(this.store, signal);
  }

  private async findMetadataName(backupId: string): Promise<string | undefined> {
    const container = containerFor(backupId);
    const names = (await this.store.list(container)).map((o) => o.name)
      .filter((n) => n.endsWith(`_backup_${backupId}_metadata`));
    if (names.length > 1) throw new IntegrityError(`container ${container} holds ${names.length} manifests for backup ${backupId}`, { hint: 'remove the stray one' });
    return names[0];
  }

  /** Reads one backup's manifest. Throws NotFoundError when it has none, IntegrityError when damaged. */
  async load(backupId: string): Promise<LoadedBackup> {
    checkBackupId(backupId);
    const container = containerFor(backupId);
    const name = await this.findMetadataName(backupId);
    if (name === undefined) {
      throw new NotFoundError(`backup ${backupId} is not in the repository at ${this.store.location} (no _metadata in ${container})`, {
        hint: 'list the backups to find its id; a backup without _metadata never completed',
      });
    }
    const metadata = await parseMetadataStream(this.store.getStream(container, name), `${container}/${name}`);
    if (metadata.backup_id !== backupId) throw new IntegrityError(`manifest ${container}/${name} is for backup ${metadata.backup_id}, not ${backupId}`);
    return { record: recordOf(metadata, container, name.slice(0, -'_metadata'.length)), metadata };
  }

  /** One backup's record. Throws NotFoundError, IntegrityError. */
  async get(backupId: string): Promise<BackupRecord> {
    return (await this.load(backupId)).record;
  }

  /**
   * The backup's _sha256file with every digest in one Buffer: 32 bytes per sha block, so for small disks and
   * tests only (readSha256Table keeps memory bounded). Throws ObjectNotFoundError, IntegrityError.
   */
  async readSha256(backupId: string): Promise<Sha256File> {
    const { record } = await this.load(backupId);
    const pieces: Buffer[] = [];
    const { header } = await this.streamSha256(record, (_first, d) => { pieces.push(Buffer.from(d)); });
    return { ...header, digests: Buffer.concat(pieces) };
  }

  /**
   * Streams a backup's _sha256file (never whole in memory) into `sink`; returns its header and digest count.
   * Throws ObjectNotFoundError, IntegrityError naming the object, StoreError, AbortedError.
   */
  async streamSha256(record: BackupRecord, sink?: DigestSink, signal?: AbortSignal): Promise<{ header: Sha256FileHeader; count: number; where: string }> {
    const name = sha256FileName(record.prefix);
    const where = `${record.container}/${name}`;
    const { count, ...header } = await readSha256Stream(this.store.getStream(record.container, name, { signal }), where, sink, signal);
    return { header, count, where };
  }

  /**
   * Reads a backup's _sha256file into a DigestTable (memory bounded; `blocks` and `defaults` make a sparse disk's
   * table sparse too). The caller closes the table. Throws ObjectNotFoundError, IntegrityError, StoreError, AbortedError.
   */
  async readSha256Table(record: BackupRecord, options: { blocks?: number; defaults?: DigestTableOptions['defaults']; signal?: AbortSignal } = {}): Promise<Sha256Table> {
    const table = new DigestTable({ ...this.options.digestTable, blocks: options.blocks ?? 0, defaults: options.defaults });
    try {
      const { header, count, where } = await this.streamSha256(record, (first, d) => table.write(first, d), options.signal);
      if (count !== table.length) throw new IntegrityError(`sha256file ${where} lists ${count} blocks, ${table.length} were expected`, { hint: 'the backup is damaged: restore from another backup' });
      return { header, count, table, where };
    } catch (error) {
      table.close();
      throw error;
    }
  }

  /** Manifests from the full backup to `backupId` (full first). Throws NotFoundError, MissingParentError, IntegrityError. */
  async chain(backupId: string): Promise<LoadedBackup[]> {
    const loaded = new Map<string, LoadedBackup>();
    const records = new Map<string, BackupRecord>();
    let id: string | null = backupId;
    while (id !== null && !loaded.has(id)) {
      let b: LoadedBackup;
      try {
        b = await this.load(id);
      } catch (error) {
        if (error instanceof NotFoundError && id !== backupId) break; // resolveChain names the missing parent
        throw error;
      }
      loaded.set(id, b);
      records.set(id, b.record);
      id = b.metadata.parent_id;
    }
    return resolveChain(records, backupId).map((r) => loaded.get(r.backupId)!);
  }

  /** The raw stored bytes of a data object. Throws ObjectNotFoundError naming it. */
  async readObject(record: BackupRecord, entry: ObjectEntry, signal?: AbortSignal): Promise<Buffer> {
    return this.store.get(record.container, entry.name, { signal });
  }

  /** Backups whose parent is `backupId`, transitively, newest first. Throws StoreError. */
  async dependants(backupId: string, signal?: AbortSignal): Promise<BackupRecord[]> {
    const { records } = await this.scan(signal);
    const out: BackupRecord[] = [];
    const ids = new Set([backupId]);
    let grew = true;
    while (grew) {
      grew = false;
      for (const r of records) {
        if (r.parentId !== null && ids.has(r.parentId) && !ids.has(r.backupId)) {
          ids.add(r.backupId);
          out.push(r);
          grew = true;
        }
      }
    }
    return out.reverse();
  }

  /** Checks a backup (see VerifyOptions); problems are reported, not thrown. Throws NotFoundError for an unknown backup. */
  async verify(backupId: string, options: VerifyOptions = {}): Promise<VerifyReport> {
    return verifyBackup(this, backupId, options);
  }

  /**
   * Deletes a backup: its _metadata first (so it stops being a backup at once), then its objects.
   * Throws ConflictError when other backups depend on it and cascade is not set; NotFoundError when unknown.
   */
  async delete(backupId: string, options: DeleteOptions = {}): Promise<DeleteReport> {
    const { record } = await this.load(backupId);
    const dependants = await this.dependants(backupId, options.signal);
    if (dependants.length > 0 && !options.cascade) {
      throw new ConflictError(`backup ${backupId} has ${dependants.length} dependent incremental backup(s): ${dependants.map((d) => d.backupId).join(', ')}`, {
        hint: 'delete them first, or ask for cascade',
      });
    }
    const report: DeleteReport = { deleted: [], objectsRemoved: 0 };
    for (const r of [...dependants, record]) {
      await this.store.delete(r.container, metadataName(r.prefix), { signal: options.signal });
      for (const info of await this.store.list(r.container, r.prefix, { signal: options.signal })) {
        if (await this.store.delete(r.container, info.name, { signal: options.signal })) report.objectsRemoved += 1;
      }
      report.deleted.push(r.backupId);
      log.debug({ backupId: r.backupId }, 'deleted');
    }
    return report;
  }

  /** Removes objects no _metadata references, older than the grace period. Throws StoreError. */
  async gc(options: GcOptions = {}): Promise<GcReport> {
    return collectGarbage(this.store, options);
  }
}

/**
 * Opens the repository in a directory (created when missing) or over any ObjectStore.
 * Throws StoreError when the directory cannot be created.
 */
export async function openRepository(root: string | ObjectStore, options: RepositoryOptions = {}): Promise<Repository> {
  if (typeof root !== 'string') return new Repository(root, options);
  const { mkdir } = await import('node:fs/promises');
  try {
    await mkdir(root, { recursive: true });
  } catch (error) {
    const { StoreError } = await import('./store/object-store.js');
    throw new StoreError(`cannot create the repository directory ${root}: ${(error as Error).message}`, { cause: error });
  }
  return new Repository(new FsObjectStore(root), options);
}

export type { BackupRecord, BackupSummary, BackupMode };
