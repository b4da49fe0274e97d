// Folds the per-disk states of a backup job into the job's phase and the disks that must be cancelled (libvirt's rules).
import { isDiskActive, type DiskState } from './disk-state.js';

/** The phase of a whole backup job. */
export type JobPhase =
  /** No disk's job started yet (provisioning, before the transaction). */
  | 'preparing'
  /** Push: at least one disk is still copying. */
  | 'running'
  /** Pull: the exports are up; the job waits for the reader to call finish or abort. */
  | 'ready'
  /** Pull: finish was asked; the jobs are being stopped. */
  | 'finishing'
  /** An abort or a disk failure: the remaining jobs are being cancelled. */
  | 'cancelling'
  /** Every disk completed (push), or the reader finished (pull). */
  | 'completed'
  /** At least one disk failed. */
  | 'failed'
  /** The job was aborted. */
  | 'cancelled';

export type BackupMode = 'push' | 'pull';

/** What the owner of the job asked for. */
export type JobRequest = 'none' | 'finish' | 'abort';

export interface JobFold {
  phase: JobPhase;
  /** Disks whose job is still running and must be cancelled now (a sibling failed, or finish/abort was asked). */
  toCancel: string[];
}

/** True for the phases after which the job is over. */
export function isJobTerminal(phase: JobPhase): boolean {
  return phase === 'completed' || phase === 'failed' || phase === 'cancelled';
}

/**
 * The one fold function. Rules (libvirt's qemuBackupNotifyBlockjobEnd): one failed disk cancels its running siblings;
 * a push job is complete only when every disk completed; a pull job never completes by itself, it stays ready until
 * the reader asks finish (then its cancelled jobs are the normal end) or abort.
 */
export function foldJobState(mode: BackupMode, disks: Readonly<Record<string, DiskState>>, request: JobRequest = 'none'): JobFold {
  const names = Object.keys(disks);
  const states = names.map((name) => disks[name]);
  const running = names.filter((name) => disks[name] === 'running');
  const anyActive = states.some(isDiskActive);
  const anyFailed = states.includes('failed');

  if (names.length === 0 || states.every((state) => state === 'none')) {
    if (request === 'abort') return { phase: 'cancelled', toCancel: [] };
    return { phase: 'preparing', toCancel: [] };
  }

  if (anyActive) {
    if (anyFailed || request === 'abort') return { phase: 'cancelling', toCancel: running };
    if (mode === 'pull') {
      if (request === 'finish') return { phase: 'finishing', toCancel: running };
      return { phase: 'ready', toCancel: [] };
    }
    // Push: a finish request means nothing before the copy ends.
    return { phase: 'running', toCancel: [] };
  }

  if (anyFailed) return { phase: 'failed', toCancel: [] };
  if (mode === 'push') {
    return { phase: states.every((state) => state === 'complete') ? 'completed' : 'cancelled', toCancel: [] };
  }
  return { phase: request === 'finish' ? 'completed' : 'cancelled', toCancel: [] };
}
