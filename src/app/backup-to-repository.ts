// The repository backup as the CLI and the daemon start it: the data loop lives in backup/repository-backup.ts,
// for every control plane; this re-exports it for app's callers.
export {
  backupVmToRepository,
  defaultCheckpointName,
  type DiskBackupSummary,
  type RepositoryBackupEvent,
  type RepositoryBackupHooks,
  type RepositoryBackupOptions,
  type RepositoryBackupProgress,
  type RepositoryBackupSummary,
} from '../backup/repository-backup.js';
export { chooseBackupLevel, type RequestedLevel, type LevelDecision, type DiskLevel } from '../backup/level.js';
