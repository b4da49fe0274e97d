// The per-disk state machine of a backup job (libvirt's none → running → complete | failed | cancelling → cancelled).

/** Where one disk's block job stands. */
export type DiskState = 'none' | 'running' | 'complete' | 'failed' | 'cancelling' | 'cancelled';

/** What can happen to one disk's block job. */
export type DiskEvent =
  /** The transaction that started the disk's job was committed. */
  | 'started'
  /** The job ended without error (BLOCK_JOB_COMPLETED without error). */
  | 'job-completed'
  /** The job ended with an error (BLOCK_JOB_COMPLETED with error, or concluded with error unasked). */
  | 'job-failed'
  /** fleece asked QEMU to cancel the job (block-job-cancel sent). */
  | 'cancel-requested'
  /** The job ended after a cancel (BLOCK_JOB_CANCELLED, or concluded after cancel-requested). */
  | 'job-cancelled';

/** States after which nothing more happens to the disk's job. */
export function isDiskTerminal(state: DiskState): boolean {
  return state === 'complete' || state === 'failed' || state === 'cancelled';
}

/** States in which the disk's job exists in QEMU and has not ended. */
export function isDiskActive(state: DiskState): boolean {
  return state === 'running' || state === 'cancelling';
}

/**
 * The one transition function. Events that do not apply to a state leave it unchanged (an event that arrives
 * twice, or a cancel request for a job that already ended, is not an error): the result is always a valid state.
 */
export function nextDiskState(state: DiskState, event: DiskEvent): DiskState {
  switch (state) {
    case 'none':
      if (event === 'started') return 'running';
      // A cancel before the job started means the job never runs.
      if (event === 'cancel-requested') return 'cancelled';
      return state;
    case 'running':
      if (event === 'job-completed') return 'complete';
      if (event === 'job-failed') return 'failed';
      if (event === 'cancel-requested') return 'cancelling';
      if (event === 'job-cancelled') return 'cancelled';
      return state;
    case 'cancelling':
      // A job may finish before the cancel reaches it: it still ended as asked, with or without data.
      if (event === 'job-cancelled' || event === 'job-completed') return 'cancelled';
      if (event === 'job-failed') return 'failed';
      return state;
    case 'complete':
    case 'failed':
    case 'cancelled':
      return state;
  }
}
