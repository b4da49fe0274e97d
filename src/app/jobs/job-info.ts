// What the daemon reports about a backup job (domjobinfo plus history): kinds, states and the JobInfo record.

export const JOB_KINDS = ['push', 'pull', 'repository', 'provider'] as const;
export const JOB_STATES = ['starting', 'running', 'ready', 'completed', 'failed', 'cancelling', 'cancelled'] as const;

export type JobKind = (typeof JOB_KINDS)[number];
export type JobState = (typeof JOB_STATES)[number];

/** True for the states after which a job never changes again. */
export function isFinalJobState(state: JobState): boolean {
  return state === 'completed' || state === 'failed' || state === 'cancelled';
}

/** A pull export as a reader needs it. */
export interface ExportInfo {
  name: string;
  uri: string;
  socket?: string;
  /** `base:allocation` (full) or `qemu:dirty-bitmap:backup-vda` (incremental). */
  context: string;
}

export interface DiskProgress {
  disk: string;
  state: string;
  total: number;
  processed: number;
  export?: ExportInfo;
}

/** One job as the API reports it. */
export interface JobInfo {
  id: string;
  vm: string;
  kind: JobKind;
  state: JobState;
  /** ISO 8601. */
  startedAt: string;
  endedAt?: string;
  error?: string;
  /** The checkpoint the job creates. */
  checkpoint?: string;
  incrementalFrom?: string;
  dataTotal: number;
  dataProcessed: number;
  dataRemaining: number;
  elapsedMs: number;
  scratchBytes?: number;
  /** Bytes per second over the last progress interval (absent until measured). */
  rate?: number;
  disks: DiskProgress[];
  result?: unknown;
}
