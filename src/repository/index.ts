// The repository layer's public surface (what backup, restore, app, cli and daemon import).
export { openRepository, Repository, type RepositoryOptions, type Sha256Table, type StartBackupOptions, type ListOptions, type DeleteOptions, type DeleteReport, type LoadedBackup } from './repository.js';
export {
  BackupWriter, IncompatibleParentError, DEFAULT_CHUNK_SIZE, DEFAULT_SHA_BLOCK_SIZE, FLEECE_VERSION,
  type BackupMode, type BackupSummary,
} from './writer.js';
export { alignRangesToBlocks, type Extent, type DataExtent, type ZeroExtent, type Range } from './extents.js';
export { MissingParentError, type BackupRecord, type ScanProblem } from './catalog.js';
export type { VerifyOptions, VerifyReport, VerifyProblem } from './verify.js';
export { DEFAULT_GC_GRACE_MS, type GcOptions, type GcReport } from './gc.js';
export { ObjectNotFoundError, StoreError, type ObjectStore, type ObjectInfo } from './store/object-store.js';
export { FsObjectStore } from './store/fs-store.js';
export { MemoryObjectStore } from './store/memory-store.js';
export type { Compression, BackupMetadata, ObjectEntry, FleeceExtra, GuestConfigExtra } from './format/manifest.js';
export { DigestTable, DEFAULT_DIGEST_MEMORY_LIMIT, type DigestTableOptions } from './digest-table.js';
export { prestartWorkers } from './pipeline/worker-pool.js';
export { S3_DEFAULT_CHUNK_SIZE } from './repository.js';
export { DEFAULT_LEASE, type LeaseOptions } from './writer.js';
// The S3 store itself loads the AWS SDK: import it from './store/s3-store.js' where needed (openRepository does, lazily).
export type { S3ObjectStore, S3StoreOptions } from './store/s3-store.js';
export { S3StoreError } from './store/s3-store-error.js';
export { isS3Location, parseS3Location, formatS3Location, type S3Location } from './store/s3-location.js';
export { RetryStore, DEFAULT_RETRY_POLICY, isTransient, withRetry, type RetryPolicy } from './store/retry-store.js';
export { KeyNamedStore } from './store/key-named-store.js';
export type { RepositoryLayout } from './format/naming.js';
export { scrubRepository, type ScrubOptions, type ScrubReport, type ScrubProblem } from './verify.js';
export {
  planPrune, keepsSomething, describeKeepOptions, describeReason, createdAtInstant,
  type PruneRecord, type KeepOptions, type PrunePolicy, type PruneRule, type PruneReason, type PruneGroup, type PrunePlan,
} from './prune-plan.js';
export { PROTECTION_KEY, protectionOf, setProtection, readProtections, loadManifest, type Protection, type ProtectOptions } from './protect.js';
export {
  chainSegments, readChain, consolidateBackup,
  type ChainSegment, type ChainReadStats, type ReadChainOptions, type ConsolidateOptions, type ConsolidateReport,
} from './consolidate.js';
export {
  MARKER_NAME, MARKER_VERSION, newMarker, readMarker, writeMarker, inspectLocation, isRepositoryPath,
  type RepositoryMarker, type LocationContents,
} from './marker.js';
export {
  createEncryption, unlockDataKey, keySourceFromEnv, keySourceFor, registerRepositoryKey, generateKeyBytes, DEFAULT_SCRYPT, ENCRYPTION_SCHEME, KEY_FILE_BYTES,
  type EncryptionConfig, type KeySource, type KeySourceSpec,
} from './crypto/keys.js';
