// The fleeced HTTP API's shapes: TypeBox schemas (validation and the OpenAPI document) and their TypeScript types.
import { Type, type Static } from 'typebox';

export { JOB_KINDS, JOB_STATES, isFinalJobState } from '../app/jobs/job-info.js';
export type { JobInfo, JobKind, JobState, ExportInfo, DiskProgress } from '../app/jobs/job-info.js';
export type { ApiError, CheckpointList, Health, VmEntryBody, VmStatus } from '../app/jobs/api-shapes.js';
import type { ApiError, CheckpointList, Health, JobInfo, VmEntryBody, VmStatus } from '../app/jobs/api-shapes.js';
import type { UnreadableBackup } from '../app/repository-operations.js';


export const ExportInfoSchema = Type.Object({
  name: Type.String(),
  uri: Type.String(),
  socket: Type.Optional(Type.String()),
  context: Type.String(),
});

export const DiskProgressSchema = Type.Object({
  disk: Type.String(),
  state: Type.String(),
  total: Type.Number(),
  processed: Type.Number(),
  export: Type.Optional(ExportInfoSchema),
});

export const JobInfoSchema = Type.Object({
  id: Type.String(),
  vm: Type.String(),
  kind: Type.Union([Type.Literal('push'), Type.Literal('pull'), Type.Literal('repository'), Type.Literal('provider')]),
  state: Type.Union([
    Type.Literal('starting'),
    Type.Literal('running'),
    Type.Literal('ready'),
    Type.Literal('completed'),
    Type.Literal('failed'),
    Type.Literal('cancelling'),
    Type.Literal('cancelled'),
  ]),
  startedAt: Type.String({ description: 'ISO 8601' }),
  endedAt: Type.Optional(Type.String()),
  error: Type.Optional(Type.String()),
  checkpoint: Type.Optional(Type.String({ description: 'the checkpoint the job creates' })),
  incrementalFrom: Type.Optional(Type.String()),
  dataTotal: Type.Number(),
  dataProcessed: Type.Number(),
  dataRemaining: Type.Number(),
  elapsedMs: Type.Number(),
  scratchBytes: Type.Optional(Type.Number()),
  rate: Type.Optional(Type.Number({ description: 'bytes per second over the last progress interval' })),
  disks: Type.Array(DiskProgressSchema),
  result: Type.Optional(Type.Unknown()),
});

export const ErrorSchema = Type.Object({
  error: Type.Object({ code: Type.String(), message: Type.String() }),
});
type ApiErrorCheck = Static<typeof ErrorSchema>;

export const HealthSchema = Type.Object({ version: Type.String(), pid: Type.Number(), uptimeMs: Type.Number() });
type HealthCheck = Static<typeof HealthSchema>;

export const VmEntrySchema = Type.Object({
  name: Type.String({ minLength: 1 }),
  qmp: Type.Optional(Type.String({ minLength: 1, description: 'a bare QEMU: its QMP socket' })),
  guestAgent: Type.Optional(Type.String({ minLength: 1, pattern: '^/', description: 'absolute path of the guest agent socket' })),
  connect: Type.Optional(Type.String({ minLength: 1, description: 'a libvirt domain: the libvirt URI (qemu:///system)' })),
}, { additionalProperties: false });
type VmEntryBodyCheck = Static<typeof VmEntrySchema>;

export const VmStatusSchema = Type.Object({
  name: Type.String(),
  qmp: Type.Optional(Type.String()),
  connect: Type.Optional(Type.String()),
  connected: Type.Boolean(),
  status: Type.Unknown({ description: 'query-status' }),
  disks: Type.Array(
    Type.Object({ target: Type.String(), format: Type.String(), virtualSize: Type.Number(), filename: Type.String() }),
  ),
  job: Type.Union([JobInfoSchema, Type.Null()]),
});
type VmStatusCheck = Static<typeof VmStatusSchema>;

export const CheckpointSummarySchema = Type.Object({
  name: Type.String(),
  parent: Type.Union([Type.String(), Type.Null()]),
  creationTime: Type.Number(),
  disks: Type.Array(Type.Unknown()),
});
export const CheckpointListSchema = Type.Object({
  current: Type.Union([Type.String(), Type.Null()]),
  checkpoints: Type.Array(CheckpointSummarySchema),
});
type CheckpointListCheck = Static<typeof CheckpointListSchema>;

export const CheckpointCreateSchema = Type.Object({
  xml: Type.Optional(Type.String()),
  name: Type.Optional(Type.String()),
  description: Type.Optional(Type.String()),
}, { additionalProperties: false });
export const CheckpointRedefineSchema = Type.Object({ xml: Type.String() }, { additionalProperties: false });
export const NameXmlSchema = Type.Object({ name: Type.String(), xml: Type.String() });

export const BackupBeginSchema = Type.Object({
  backupXml: Type.Optional(Type.String()),
  checkpointXml: Type.Optional(Type.String()),
  reuseExternal: Type.Optional(Type.Boolean()),
}, { additionalProperties: false });
export type BackupBeginBody = Static<typeof BackupBeginSchema>;

/** The same options as `fleece backup` (app/backup-request.ts checks them once more, for both). */
export const RepositoryBackupSchema = Type.Object({
  repo: Type.Optional(Type.String({ minLength: 1, pattern: '^(/|s3://)', description: 'absolute path of the repository directory, or s3://bucket[/prefix]; or give provider' })),
  provider: Type.Optional(Type.String({ minLength: 1, pattern: '^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$', description: 'instead of repo: a backup provider registered with `fleece provider add` (docs/providers.md)' })),
  level: Type.Optional(Type.Union([Type.Literal('auto'), Type.Literal('full'), Type.Literal('incremental')])),
  disks: Type.Optional(Type.Array(Type.String({ minLength: 1 }))),
  compression: Type.Optional(Type.Union([Type.Literal('zstd'), Type.Literal('zlib'), Type.Literal('bz2'), Type.Literal('none')])),
  bandwidth: Type.Optional(Type.Integer({ minimum: 1, description: 'bytes per second over all disks' })),
  parallel: Type.Optional(Type.Integer({ minimum: 1, maximum: 64 })),
  connections: Type.Optional(Type.Integer({ minimum: 1, maximum: 64 })),
  quiesce: Type.Optional(Type.Union([Type.Literal('no'), Type.Literal('yes'), Type.Literal('try')])),
  trim: Type.Optional(Type.Boolean()),
  scratchDir: Type.Optional(Type.String({ minLength: 1, pattern: '^/' })),
  checkpoint: Type.Optional(Type.String({ minLength: 1 })),
  fleecing: Type.Optional(Type.Union([Type.Literal('cbw'), Type.Literal('overlay')], { description: 'bare QEMU: copy-before-write + snapshot-access (QEMU >= 7.1) or the scratch overlay' })),
  verifyBitmap: Type.Optional(Type.Number({ minimum: 0, maximum: 100, description: 'percent of the clean blocks of a dirty bitmap hashed against the parent; a mismatch makes that disk a compare backup' })),
  keepCheckpoints: Type.Optional(Type.Integer({ minimum: 1, description: 'afterwards keep at most N checkpoints with a backup behind them per disk (default 3)' })),
  pruneCheckpoints: Type.Optional(Type.Boolean({ description: 'false: leave the VM\'s checkpoints alone afterwards' })),
}, { additionalProperties: false });
export type RepositoryBackupBody = Static<typeof RepositoryBackupSchema>;

export const JobReplySchema = Type.Object({ job: JobInfoSchema });
export const MaybeJobReplySchema = Type.Object({ job: Type.Union([JobInfoSchema, Type.Null()]) });
export const JobListSchema = Type.Object({ jobs: Type.Array(JobInfoSchema) });

/** A repository as a request names it: an absolute directory or s3://bucket[/prefix] (relative means nothing to a daemon). */
const RepoField = Type.String({ minLength: 1, pattern: '^(/|s3://)', description: 'absolute path of the repository directory, or s3://bucket[/prefix]' });

export const RestoreSchema = Type.Object({
  repo: RepoField,
  backupId: Type.String({ minLength: 1 }),
  out: Type.String({ minLength: 1, pattern: '^/', description: 'absolute path of the file to create' }),
  format: Type.Optional(Type.Union([Type.Literal('raw'), Type.Literal('qcow2')])),
  force: Type.Optional(Type.Boolean({ description: 'replace out when it exists (as `fleece restore --force`; never through a symbolic link)' })),
}, { additionalProperties: false });
export const VerifySchema = Type.Object({
  repo: RepoField,
  backupId: Type.String({ minLength: 1 }),
  deep: Type.Optional(Type.Boolean()),
}, { additionalProperties: false });
export const BackupListQuerySchema = Type.Object({
  repo: RepoField, vm: Type.Optional(Type.String()), disk: Type.Optional(Type.String()),
}, { additionalProperties: false });

/** A backup whose `_metadata` cannot be read, listed with its state (as `fleece list` shows it), never hidden. */
export const UnreadableBackupSchema = Type.Object({
  backupId: Type.Union([Type.String(), Type.Null()], { description: 'null when the object name holds no id' }),
  container: Type.String(),
  object: Type.String({ description: 'the _metadata object that cannot be read' }),
  state: Type.Union([Type.Literal('damaged'), Type.Literal('newer-format')]),
  formatVersion: Type.Optional(Type.String({ description: 'newer-format: the format version it was written in' })),
  reason: Type.String(),
}, { additionalProperties: false });
type UnreadableBackupCheck = Static<typeof UnreadableBackupSchema>;

export const BackupListSchema = Type.Object({
  backups: Type.Array(Type.Unknown(), { description: 'the committed backups, oldest first' }),
  unreadable: Type.Array(UnreadableBackupSchema, { description: 'damaged and newer-format backups, whatever the filter' }),
}, { additionalProperties: false });

// The plain types clients use must match the schemas (a compile error here means one of them drifted).
type Same<A, B> = [A] extends [B] ? ([B] extends [A] ? true : false) : false;
const shapesMatch: [
  Same<ApiErrorCheck, ApiError>,
  Same<UnreadableBackupCheck, UnreadableBackup>,
  Same<HealthCheck, Health>,
  Same<VmEntryBodyCheck, VmEntryBody>,
  Same<CheckpointListCheck, CheckpointList>,
  Same<Static<typeof JobInfoSchema>, JobInfo>,
  Same<VmStatusCheck['disks'], VmStatus['disks']>,
] = [true, true, true, true, true, true, true];
void shapesMatch;
