// Repository: the public face of a Cinder-format backup repository (start backups, list, chains, read, verify, delete, gc).
import { ConflictError, IntegrityError, InvalidInputError, NotFoundError } from '../util/errors.js';
import { getLogger } from '../util/logger.js';
import { FsObjectStore } from './store/fs-store.js';
import { ObjectNotFoundError, type ObjectStore } from './store/object-store.js';
import { isS3Location, parseS3Location } from './store/s3-location.js';
import type { S3StoreOptions } from './store/s3-store.js';
import { DEFAULT_RETRY_POLICY, RetryStore, withRetry, type RetryPolicy } from './store/retry-store.js';
import { KeyNamedStore } from './store/key-named-store.js';
import { ListingSnapshot } from './store/listing-snapshot.js';
import { backupLocation, belongsToBackup, containerFor, isS3LayoutContainer, leaseBackupId, metadataName, sha256FileName, checkBackupId, type RepositoryLayout } from './format/naming.js';
import { parseMetadataStream, type BackupMetadata, type Compression, type GuestConfigExtra, type ObjectEntry } from './format/manifest.js';
import { readSha256Stream, type DigestSink, type Sha256File, type Sha256FileHeader } from './format/sha256-file.js';
import { DigestTable, type DigestTableOptions } from './digest-table.js';
import { BackupWriter, DEFAULT_LEASE, type BackupMode, type BackupSummary, type LeaseOptions, type WriterOptions } from './writer.js';
import { scanCatalog, recordOf, resolveChain, type BackupRecord, type ScanProblem } from './catalog.js';
import { verifyBackup, type VerifyOptions, type VerifyReport } from './verify.js';
import { collectGarbage, type GcOptions, type GcReport } from './gc.js';
import { MARKER_NAME, inspectLocation, newMarker, readMarker, writeMarker, type RepositoryMarker } from './marker.js';
import { EncryptingStore } from './store/encrypting-store.js';
import { LayoutView } from './store/layout-view.js';
import { keySourceFor, unlockDataKey, type KeySourceSpec } from './crypto/keys.js';

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
  /**
   * Object naming: posix (Cinder's posix driver; the default for a store) or s3 (Cinder's S3 driver; what
   * openRepository('s3://…') sets). With s3, the store's object names are keys `<container>/<name>` (KeyNamedStore).
   */
  layout?: RepositoryLayout;
  /** The `az_<az>` in s3-layout object names (default `nova`, Cinder's). */
  availabilityZone?: string;
  /** The lease of backups being written (both layouts; default DEFAULT_LEASE). */
  lease?: LeaseOptions;
  /** openRepository('s3://…'): endpoint, credentials, region… beyond what the environment and ~/.aws say. */
  s3?: Omit<S3StoreOptions, 'bucket' | 'prefix'>;
  /** openRepository('s3://…'): retries of transient failures (default DEFAULT_RETRY_POLICY). */
  retry?: RetryPolicy;
  /** An encrypted repository's key (default: the one registered for its location, else FLEECE_KEY_FILE, FLEECE_PASSPHRASE_FILE or FLEECE_PASSPHRASE). */
  key?: KeySourceSpec;
}

type MarkerState = RepositoryMarker | undefined | 'unsupported';

/**
 * Data objects at most 16 MiB on S3 (4 MiB on posix, see DEFAULT_CHUNK_SIZE): a quarter of the PUTs, list entries and
 * round trips of 4 MiB (what S3 bills, what a WAN's latency makes slow; on the local Swift of the tests 16 MiB puts
 * 1.4–1.8× faster than 4 MiB), while memory in flight stays bounded (at most 8 segments × 2 × 16 MiB). Cinder's 50 MiB
 * would triple the memory for little more (docs/s3.md has the figures). Incrementals store changed runs: a maximum.
 */
export const S3_DEFAULT_CHUNK_SIZE = 16 * 1024 * 1024;
/** Segments in flight at most on S3 by default (each up to 2 × 16 MiB): memory stays under 256 MiB per disk. */

/** A sha256file's header, digest count and digests (close the table when done). */
export interface Sha256Table { header: Sha256FileHeader; count: number; table: DigestTable; where: string }

/** A repository over any ObjectStore. Create with openRepository(). */
export class Repository {
  /** s3 layout: backup id → where its _metadata is (manifest names), from the last listing. */
  private index: Map<string, { container: string; names: string[] }> | undefined;

  private markerRead: Promise<MarkerState> | undefined;
  private markerMade: Promise<void> | undefined;

  /** `known`: the marker openRepository read (else it is read on first use). */
  constructor(readonly store: ObjectStore, readonly options: RepositoryOptions = {}, known?: { marker: MarkerState }) {
    if (known) this.markerRead = Promise.resolve(known.marker);
  }

  /** The repository marker (read once): undefined when there is none, 'unsupported' for a store without root objects. */
  marker(): Promise<MarkerState> {
    this.markerRead ??= readMarker(this.store);
    return this.markerRead;
  }

  /**
   * An encrypted repository's data key, unlocked now (once): a missing or wrong key fails here, clearly, rather than
   * as a problem of every object. Nothing for a plain repository. Throws InvalidInputError, IntegrityError.
   */
  async unlock(): Promise<void> {
    if (this.store instanceof EncryptingStore) await this.store.unlock();
  }

  /**
   * Refuses `action` (gc, delete, verify…) unless the location has a repository marker: a mistyped --repo is never
   * taken for a repository. Throws NotFoundError (empty), InvalidInputError (other files; backups without a marker).
   */
  async requireMarker(action: string): Promise<void> {
    if ((await this.marker()) !== undefined) return;
    this.markerRead = undefined; // made since it was read (`fleece repo init` elsewhere)?
    if ((await this.marker()) !== undefined) return;
    const where = this.store.location;
    const contents = await inspectLocation(this.store, this.layout);
    if (contents.kind === 'foreign') {
      throw new InvalidInputError(`${where} is not a fleece repository (it has no ${MARKER_NAME} and holds other files, e.g. ${contents.examples.join(', ')}): refusing to ${action} there`, {
        hint: 'check --repo: it must name a repository (made by `fleece repo init` or a first backup)',
      });
    }
    if (contents.kind === 'empty') {
      throw new NotFoundError(`${where} is not a fleece repository (it is empty and has no ${MARKER_NAME}): nothing to ${action}`, {
        hint: 'check --repo; `fleece repo init LOCATION` or a first backup creates a repository',
      });
    }
    throw new InvalidInputError(`${where} holds backups but no repository marker (${MARKER_NAME}): written by an older fleece or by Cinder; refusing to ${action} there`, {
      hint: `run \`fleece repo init ${where}\` once to adopt it as a fleece repository`,
    });
  }

  /**
   * Before the first write: an empty location gets a marker, one that holds only backups (an older fleece's, or
   * Cinder's) is adopted; one that holds anything else is refused (ConflictError). Throws StoreError.
   */
  private ensureMarker(): Promise<void> {
    this.markerMade ??= (async () => {
      if ((await this.marker()) !== undefined) return;
      const contents = await inspectLocation(this.store, this.layout);
      if (contents.kind === 'foreign') {
        throw new ConflictError(`${this.store.location} is neither empty nor a fleece repository (it holds other files, e.g. ${contents.examples.join(', ')}): refusing to write a backup into it`, {
          hint: 'back up into an empty or new directory (or prefix), or into an existing repository',
        });
      }
      const marker = newMarker(this.layout, null, contents.kind === 'cinder');
      if (await writeMarker(this.store, marker, { exclusive: true })) {
        this.markerRead = Promise.resolve(marker);
        log.info({ location: this.store.location, adopted: contents.kind === 'cinder' }, 'repository marker written');
      } else {
        this.markerRead = undefined; // another process made it first
      }
    })();
    this.markerMade.catch(() => { this.markerMade = undefined; });
    return this.markerMade;
  }

  get layout(): RepositoryLayout {
    return this.options.layout ?? 'posix';
  }

  /**
   * Opens a writer for one disk backup; for an incremental, loads the parent's sha256s (compact) first.
   * Throws NotFoundError (parent), InvalidInputError (options), IncompatibleParentError (sha block size, volume).
   */
  async startBackup(options: StartBackupOptions): Promise<BackupWriter> {
    const mode = options.mode ?? (options.parent ? undefined : 'full');
    if (!mode) throw new InvalidInputError('an incremental backup needs a mode', { hint: "use 'changed-extents' (dirty bitmap) or 'compare' (read all, store what changed)" });
    await this.ensureMarker();
    const marker = await this.marker();
    const encryption = typeof marker === 'object' && marker.encryption ? { scheme: marker.encryption.scheme, key_id: marker.encryption.key_id } : undefined;
    if (encryption) await this.unlock(); // a missing or wrong key fails before any read
    if (options.backupId !== undefined) {
      checkBackupId(options.backupId);
      if ((await this.locate(options.backupId, options.signal, true)) !== undefined) {
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
      chunkSize: options.chunkSize ?? (this.layout === 's3' ? S3_DEFAULT_CHUNK_SIZE : undefined), shaBlockSize: options.shaBlockSize, compression: options.compression,
      compressionLevel: options.compressionLevel, name: options.name ?? null, description: options.description ?? null,
      vm: options.vm, disk: options.disk, checkpoint: options.checkpoint, incrementalFrom: options.incrementalFrom,
      groupId: options.groupId, guestConfig: options.guestConfig, workers: options.workers, queueDepth: options.queueDepth, signal: options.signal, now: options.now,
      digestTable: this.options.digestTable, lease: this.options.lease ?? DEFAULT_LEASE,
      ...(encryption ? { encryption } : {}),
      ...(this.layout === 's3' ? {
        // 16 MiB segments: the writer's memory budget (defaultQueueDepth) bounds how many are in flight.
        layout: 's3' as const, availabilityZone: this.options.availabilityZone,
      } : {}),
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
    // One listing of the whole store where it can (S3: keys/1000 requests), else container by container.
    const result = await scanCatalog(await ListingSnapshot.of(this.store, { signal }), signal);
    if (this.layout === 's3') {
      this.index = new Map(result.records.map((r) => [r.backupId, { container: r.container, names: [metadataName(r.prefix)] }]));
    }
    return result;
  }

  /** s3 layout: where every _metadata is, from one listing of the store. */
  private async reindex(signal?: AbortSignal): Promise<Map<string, { container: string; names: string[] }>> {
    const snapshot = await ListingSnapshot.of(this.store, { signal });
    const index = new Map<string, { container: string; names: string[] }>();
    for await (const container of snapshot.listContainers({ signal })) {
      for (const { name } of await snapshot.list(container, '', { signal })) {
        const id = /_backup_([A-Za-z0-9][A-Za-z0-9-]{3,})_metadata$/.exec(name)?.[1];
        if (id === undefined) continue;
        const entry = index.get(id);
        if (entry) entry.names.push(`${container}: ${name}`);
        else index.set(id, { container, names: [name] });
      }
    }
    this.index = index;
    return index;
  }

  /**
   * Where a backup's _metadata is: posix, in its container `<id[0:2]>/<id[2:4]>/<id>`; s3, wherever the last
   * listing found it (listed again on a miss, or when `fresh`). Throws IntegrityError for two manifests of one id.
   */
  private async locate(backupId: string, signal?: AbortSignal, fresh = false): Promise<{ container: string; name: string } | undefined> {
    if (this.layout !== 's3') {
      const container = containerFor(backupId);
      const names = (await this.store.list(container, '', { signal, suffix: `_backup_${backupId}_metadata` })).map((o) => o.name)
        .filter((n) => n.endsWith(`_backup_${backupId}_metadata`));
      if (names.length > 1) throw new IntegrityError(`container ${container} holds ${names.length} manifests for backup ${backupId}`, { hint: 'remove the stray one' });
      return names[0] === undefined ? undefined : { container, name: names[0] };
    }
    let entry = fresh ? undefined : this.index?.get(backupId);
    entry ??= (await this.reindex(signal)).get(backupId);
    if (entry === undefined) return undefined;
    if (entry.names.length > 1) throw new IntegrityError(`the repository at ${this.store.location} holds ${entry.names.length} manifests for backup ${backupId}: ${entry.names.join(', ')}`, { hint: 'remove the stray one' });
    return { container: entry.container, name: entry.names[0]! };
  }

  /** Reads one backup's manifest. Throws NotFoundError when it has none, IntegrityError when damaged. */
  async load(backupId: string, signal?: AbortSignal): Promise<LoadedBackup> {
    checkBackupId(backupId);
    const cached = this.layout === 's3' && this.index?.has(backupId);
    const found = await this.locate(backupId, signal);
    if (found === undefined) {
      const where = this.layout === 's3' ? 'no _metadata for it' : `no _metadata in ${containerFor(backupId)}`;
      throw new NotFoundError(`backup ${backupId} is not in the repository at ${this.store.location} (${where})`, {
        hint: 'list the backups to find its id; a backup without _metadata never completed',
      });
    }
    const { container, name } = found;
    let metadata: BackupMetadata;
    try {
      metadata = await parseMetadataStream(this.store.getStream(container, name, { signal }), `${container}/${name}`);
    } catch (error) {
      // s3: the listing it was found in is older than a delete (here or on another host): look again, once
      if (cached && error instanceof ObjectNotFoundError) { this.index = undefined; return this.load(backupId, signal); }
      throw error;
    }
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
    return this.store.get(record.container, entry.name, { signal, offset: entry.offset });
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
    await this.requireMarker('verify');
    await this.unlock();
    return verifyBackup(this, backupId, options);
  }

  /**
   * Deletes a backup: its _metadata first (so it stops being a backup at once), then its objects.
   * Throws ConflictError when other backups depend on it and cascade is not set; NotFoundError when unknown.
   */
  async delete(backupId: string, options: DeleteOptions = {}): Promise<DeleteReport> {
    await this.requireMarker('delete');
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

  /**
   * Where the backup `backupId` of `volumeId` started at `created` keeps its objects: posix, its own container; s3,
   * `volume_<volume>/<timestamp>` (a journal records it before the first object, see discardUncommitted).
   */
  backupContainer(volumeId: string, created: Date, backupId: string): string {
    return backupLocation(this.layout, volumeId, created, backupId, this.options.availabilityZone).container;
  }

  /**
   * Removes the objects, lease and unfinished uploads of a backup that was never committed, as a killed writer's
   * journal names it; returns how many. The posix layout finds its container from the id; the s3 layout needs the
   * `container` the journal recorded (without one: 0, gc takes them once the lease is stale). A committed backup is
   * left alone (delete it with delete()). Throws InvalidInputError (a container the layout cannot have), StoreError.
   */
  async discardUncommitted(backupId: string, options: { container?: string; signal?: AbortSignal } = {}): Promise<number> {
    checkBackupId(backupId);
    const { signal } = options;
    let container: string;
    if (this.layout === 'posix') container = containerFor(backupId);
    else if (options.container === undefined) return 0;
    else if (!isS3LayoutContainer(options.container)) throw new InvalidInputError(`"${options.container}" is not a container of the s3 layout (volume_<volume>/<timestamp>)`);
    else container = options.container;
    const objects = await this.store.list(container, '', { signal });
    if (objects.some((o) => o.name.endsWith('_metadata') && belongsToBackup(o.name, backupId))) return 0;
    let removed = 0;
    for (const o of objects) {
      if (!belongsToBackup(o.name, backupId) && leaseBackupId(o.name) !== backupId) continue;
      if (await this.store.delete(container, o.name, { signal })) removed += 1;
    }
    for (const temp of await this.store.listTemporary(container, { signal })) {
      if (!temp.name.includes(`_backup_${backupId}`)) continue;
      await this.store.deleteTemporary(container, temp.name, { signal });
      removed += 1;
    }
    return removed;
  }

  /** Removes objects no _metadata references, older than the grace period. Throws StoreError. */
  async gc(options: GcOptions = {}): Promise<GcReport> {
    await this.requireMarker('gc');
    const snapshot = await ListingSnapshot.of(this.store, { signal: options.signal });
    // a real location: only what the layout names (a stray file in the directory is never garbage)
    const view = (await this.marker()) === 'unsupported' ? snapshot : new LayoutView(snapshot, this.layout);
    return collectGarbage(view, options, this.layout);
  }
}

/**
 * Opens the repository in a directory (created when missing) or over any ObjectStore.
 * Throws StoreError when the directory cannot be created.
 */
export async function openRepository(root: string | ObjectStore, options: RepositoryOptions = {}): Promise<Repository> {
  if (typeof root !== 'string') return repositoryOver(options.layout === 's3' && !(root instanceof KeyNamedStore) ? new KeyNamedStore(root) : root, options);
  if (isS3Location(root)) return openS3Repository(root, options);
  const { mkdir } = await import('node:fs/promises');
  try {
    await mkdir(root, { recursive: true });
  } catch (error) {
    const { StoreError } = await import('./store/object-store.js');
    throw new StoreError(`cannot create the repository directory ${root}: ${(error as Error).message}`, { cause: error });
  }
  return repositoryOver(new FsObjectStore(root), options);
}

/**
 * `s3://bucket[/prefix]`: an S3 store with retries, Cinder's S3 naming, checked at once (one list request) so
 * that no credentials, a wrong secret, a missing bucket, access denied or an unreachable server fail here, clearly.
 * Throws InvalidInputError (the location), S3StoreError.
 */
async function openS3Repository(text: string, options: RepositoryOptions): Promise<Repository> {
  const { bucket, prefix } = parseS3Location(text);
  const { S3ObjectStore } = await import('./store/s3-store.js'); // the AWS SDK loads only for S3 repositories
  const s3 = new S3ObjectStore({ ...options.s3, bucket, prefix });
  const policy = options.retry ?? DEFAULT_RETRY_POLICY;
  await withRetry(`opening ${s3.location}`, () => s3.probe(), policy);
  return repositoryOver(new KeyNamedStore(new RetryStore(s3, policy)), { ...options, layout: 's3' });
}

/**
 * The repository over `store`, its marker read: an encrypted one's data objects go through an EncryptingStore
 * whose key is unlocked on first use (listing needs none). Throws StoreError, IntegrityError (a damaged marker).
 */
async function repositoryOver(store: ObjectStore, options: RepositoryOptions): Promise<Repository> {
  const marker = await readMarker(store);
  if (typeof marker !== 'object' || marker.encryption === null) return new Repository(store, options, { marker });
  const { encryption, id } = marker;
  const key = options.key ?? keySourceFor(store.location);
  return new Repository(new EncryptingStore(store, id, () => unlockDataKey(encryption, id, key, store.location)), options, { marker });
}

export type { BackupRecord, BackupSummary, BackupMode };
