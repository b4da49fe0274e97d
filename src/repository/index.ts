// The repository layer's public surface (what backup, restore, app, cli and daemon import).
export { openRepository, Repository, type RepositoryOptions, type Sha256Table, type StartBackupOptions, type ListOptions, type DeleteOptions, type DeleteReport, type LoadedBackup } from './repository.js';
export {
  BackupWriter, IncompatibleParentError, DEFAULT_CHUNK_SIZE, DEFAULT_SHA_BLOCK_SIZE, FLEECE_VERSION,
  type BackupMode, type BackupSummary,
} from './writer.js';
export { alignRangesToBlocks, type Extent, type DataExtent, type ZeroExtent, type Range } from './extents.js';
export { MissingParentError, type BackupRecord } from './catalog.js';
export type { VerifyOptions, VerifyReport, VerifyProblem } from './verify.js';
export { DEFAULT_GC_GRACE_MS, type GcOptions, type GcReport } from './gc.js';
export { ObjectNotFoundError, StoreError, type ObjectStore, type ObjectInfo } from './store/object-store.js';
export { FsObjectStore } from './store/fs-store.js';
export { MemoryObjectStore } from './store/memory-store.js';
export type { Compression, BackupMetadata, ObjectEntry, FleeceExtra, GuestConfigExtra } from './format/manifest.js';
export { DigestTable, DEFAULT_DIGEST_MEMORY_LIMIT, type DigestTableOptions } from './digest-table.js';
