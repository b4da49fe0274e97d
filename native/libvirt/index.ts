// libvirt's C API from Node: one worker thread per connection (connection.ts), the constants and flags it uses, its error.
export { LibvirtConnection, DEFAULT_CALL_TIMEOUT_MS, DEFAULT_CLOSE_TIMEOUT_MS } from './connection.js';
export type { BlockInfo, DomainState, LibvirtOpenOptions, LibvirtCloseOptions } from './connection.js';
export { LibvirtError, isLibvirtError } from '../libvirt-error.js';
export type { LibvirtErrorDetail, LibvirtLocalFailure } from '../libvirt-error.js';
export type { JobStats, JobType } from './typed-params.js';
export type {
  DomainXmlFlags, UndefineFlags, BackupBeginFlags, JobStatsFlags, CheckpointCreateFlags, CheckpointListFlags,
  CheckpointXmlFlags, CheckpointDeleteFlags,
} from './flags.js';
export * from './constants.js';
