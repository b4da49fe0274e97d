// The QEMU- and file-backed implementation of the undo effects, and the helpers that end a job cleanly.
import { unlink } from 'node:fs/promises';
import type { QmpExecutor } from '../qmp/index.js';
import { QmpError } from '../qmp/index.js';
import { objectDel } from '../qemu/nbd-export.js';
import { getLogger } from '../util/logger.js';
import type { UndoEffects } from './undo-log.js';

const log = getLogger('backup.effects');

/** One entry of `query-jobs`. */
export interface QueryJobInfo {
  id: string;
  type: string;
  status: string;
  'current-progress': number;
  'total-progress': number;
  error?: string;
}

/** How long teardown waits for a cancelled job to conclude before giving up on it. */
export const JOB_END_TIMEOUT_MS = 60_000;

const ACTIVE = new Set(['created', 'running', 'paused', 'ready', 'standby', 'waiting', 'pending', 'aborting']);

/** The job called `jobId` in `query-jobs`, if QEMU still has it. Throws what `execute` throws. */
export async function findJob(qmp: QmpExecutor, jobId: string): Promise<QueryJobInfo | undefined> {
  const jobs = await qmp.execute<QueryJobInfo[]>('query-jobs');
  return jobs.find((job) => job.id === jobId);
}

/**
 * Cancels the job when it still runs (force: a pull job never ends by itself), waits until it concluded, dismisses it.
 * A job that QEMU no longer has is success. Returns the job's last `query-jobs` entry (with its `error`, if any).
 * Throws QmpError/QmpClosedError/QmpTimeoutError when QEMU refuses or does not answer.
 */
export async function endJob(qmp: QmpExecutor, jobId: string, timeoutMs = JOB_END_TIMEOUT_MS): Promise<QueryJobInfo | undefined> {
  const listener = qmp.listen('JOB_STATUS_CHANGE');
  try {
    let job = await findJob(qmp, jobId);
    if (!job) return undefined;
    if (ACTIVE.has(job.status)) {
      try {
        await qmp.execute('block-job-cancel', { device: jobId, force: true });
      } catch (error) {
        // The job may have moved on between query-jobs and the cancel (pending, concluded): only that is fine.
        if (!(error instanceof QmpError)) throw error;
        log.debug({ jobId, err: error }, 'cancel refused; checking the job again');
      }
      job = await findJob(qmp, jobId);
      if (job && job.status !== 'concluded') {
        await listener.next((e) => e.data?.id === jobId && e.data?.status === 'concluded', { timeoutMs });
        job = await findJob(qmp, jobId);
      }
    }
    if (job) await qmp.execute('job-dismiss', { id: jobId });
    return job;
  } finally {
    listener.close();
  }
}

/** Undo effects that talk to QEMU over `qmp` and delete files on the host. */
export function qemuUndoEffects(qmp: QmpExecutor): UndoEffects {
  return {
    unlink: async (path) => {
      try {
        await unlink(path);
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
      }
    },
    blockdevDel: async (nodeName) => {
      await qmp.execute('blockdev-del', { 'node-name': nodeName });
    },
    removeBitmap: async (node, name) => {
      await qmp.execute('block-dirty-bitmap-remove', { node, name });
    },
    endJob: async (jobId) => {
      await endJob(qmp, jobId);
    },
    stopNbdServer: async () => {
      await qmp.execute('nbd-server-stop');
    },
    deleteObject: async (id) => {
      await objectDel(qmp, id);
    },
    deleteExport: async (id) => {
      const listener = qmp.listen('BLOCK_EXPORT_DELETED');
      try {
        await qmp.execute('block-export-del', { id, mode: 'hard' });
        await listener.next((e) => e.data?.id === id, { timeoutMs: JOB_END_TIMEOUT_MS });
      } finally {
        listener.close();
      }
    },
  };
}
