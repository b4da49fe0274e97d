// The interface between the job manager and one kind of job (push, pull, repository): start, progress, end.
import type { DiskProgress, JobKind } from './job-info.js';
import type { JobRecovery } from './job-store.js';

/** Progress of a running job, as the job can measure it. */
export interface JobProgress {
  dataTotal: number;
  dataProcessed: number;
  scratchBytes?: number;
  disks: DiskProgress[];
  /** Facts the job learns once it runs (repository jobs choose their level and checkpoint themselves). */
  checkpoint?: string;
  incrementalFrom?: string;
  /** The job failed on its own (a disk's job failed): the manager ends it as failed with this message. */
  failed?: string;
}

/** A job that runs: created by a starter once its transaction committed. */
export interface JobHandle {
  /** `running` (push, repository) or `ready` (pull: exports up, waiting for the reader). */
  readonly startedState: 'running' | 'ready';
  progress(): Promise<JobProgress>;
  /** Resolves with the job's result when it ends well; rejects with its error otherwise (AbortedError when aborted). */
  readonly done: Promise<unknown>;
  /** Cancels the job (pull: removes the new checkpoint). Resolves when the teardown is done; never throws. */
  abort(reason: string): Promise<void>;
  /** Pull only: the reader is done; ends the job keeping the checkpoint. Throws the job's error. */
  finish?(): Promise<void>;
}

/** A job checked and ready to start: what the manager records before the start, and how to start it. */
export interface PreparedJob {
  kind: JobKind;
  checkpoint?: string;
  incrementalFrom?: string;
  recovery: JobRecovery;
  /** Provisions and commits; resolves once the job runs. Throws what the start throws (after undoing it). */
  start(signal: AbortSignal): Promise<JobHandle>;
}
