// QEMU jobs: follow one job's JOB_STATUS_CHANGE events to `concluded`, report progress, dismiss, cancel, create images.
//
// The event listener must exist before the command that creates the job (QEMU may run a small job to its end before
// the command's reply): call `prepareJobWatch` first, then send the transaction, then `wait()`. Progress comes from
// `query-jobs` (current/total), polled at most every `progressIntervalMs` and only while the job is running: QEMU
// sends no progress events.
import type { QmpExecutor } from '../qmp/client.js';
import { QmpError } from '../qmp/errors.js';
import type { CallOptions } from '../qmp/events.js';
import type { QmpEvent } from '../qmp/messages.js';
import { AbortedError, NotFoundError, throwIfAborted } from '../util/errors.js';
import { getLogger } from '../util/logger.js';
import { QemuJobError, QemuReplyError } from './errors.js';

const log = getLogger('qemu-jobs');

/** QEMU's JobStatus. */
export type JobStatus =
  | 'undefined'
  | 'created'
  | 'running'
  | 'paused'
  | 'ready'
  | 'standby'
  | 'waiting'
  | 'pending'
  | 'aborting'
  | 'concluded'
  | 'null';

/** One entry of `query-jobs`. */
export interface JobInfo {
  id: string;
  type: string;
  status: JobStatus;
  currentProgress: number;
  totalProgress: number;
  error?: string;
}

/** How a job ended. `offset`/`len`: bytes done / to do (from the BLOCK_JOB_* event, else query-jobs). */
export interface JobResult {
  status: 'completed' | 'failed' | 'cancelled';
  error?: string;
  offset: number;
  len: number;
}

export interface JobProgress {
  jobId: string;
  current: number;
  total: number;
}

export interface WatchJobOptions {
  signal?: AbortSignal;
  /** Called with query-jobs' current/total while the job runs. */
  onProgress?: (progress: JobProgress) => void;
  /** Minimum time between progress polls; default 1000 ms. */
  progressIntervalMs?: number;
}

/** The events that tell a job's story. */
export const JOB_EVENTS = ['JOB_STATUS_CHANGE', 'BLOCK_JOB_COMPLETED', 'BLOCK_JOB_CANCELLED', 'BLOCK_JOB_ERROR'];

/** What QEMU's query-jobs reports as the error of a cancelled job. */
export const CANCELLED_JOB_ERROR = 'Operation canceled';

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/**
 * Parses a `query-jobs` reply (pure).
 * @throws QemuReplyError on an unexpected shape.
 */
export function parseJobs(reply: unknown): JobInfo[] {
  if (!Array.isArray(reply)) throw new QemuReplyError('query-jobs', 'expected an array of jobs');
  return reply.map((raw, index) => {
    if (!isRecord(raw) || typeof raw.id !== 'string' || typeof raw.status !== 'string') {
      throw new QemuReplyError('query-jobs', `job #${index} lacks id or status`);
    }
    const info: JobInfo = {
      id: raw.id,
      type: typeof raw.type === 'string' ? raw.type : 'unknown',
      status: raw.status as JobStatus,
      currentProgress: typeof raw['current-progress'] === 'number' ? raw['current-progress'] : 0,
      totalProgress: typeof raw['total-progress'] === 'number' ? raw['total-progress'] : 0,
    };
    if (typeof raw.error === 'string') info.error = raw.error;
    return info;
  });
}

function callOptions(options: { signal?: AbortSignal; timeoutMs?: number }): CallOptions {
  const call: CallOptions = {};
  if (options.signal) call.signal = options.signal;
  if (options.timeoutMs !== undefined) call.timeoutMs = options.timeoutMs;
  return call;
}

/** `query-jobs`, parsed. @throws QmpError and the QMP call errors; QemuReplyError on an odd reply. */
export async function queryJobs(qmp: QmpExecutor, options: CallOptions = {}): Promise<JobInfo[]> {
  return parseJobs(await qmp.execute<unknown>('query-jobs', undefined, callOptions(options)));
}

/** `job-dismiss` of a concluded job. @throws QmpError (e.g. the job is not concluded or does not exist). */
export async function dismissJob(qmp: QmpExecutor, jobId: string, options: CallOptions = {}): Promise<void> {
  await qmp.execute('job-dismiss', { id: jobId }, callOptions(options));
}

/**
 * Cancels a job: `block-job-cancel {device, force}` (force: a mirror in `ready` is cancelled, not completed);
 * jobs that are not block jobs (blockdev-create) get `job-cancel`. Returns at once; wait for `concluded` after.
 * @throws QmpError when QEMU knows no such job.
 */
export async function cancelJob(
  qmp: QmpExecutor,
  jobId: string,
  options: CallOptions & { force?: boolean } = {},
): Promise<void> {
  try {
    await qmp.execute('block-job-cancel', { device: jobId, force: options.force ?? true }, callOptions(options));
  } catch (error) {
    if (!(error instanceof QmpError) || error.errorClass !== 'DeviceNotActive') throw error;
    await qmp.execute('job-cancel', { id: jobId }, callOptions(options));
  }
}

/** True for events about job `jobId` (JOB_STATUS_CHANGE by `id`, BLOCK_JOB_* by `device`). */
export function isEventOfJob(event: QmpEvent, jobId: string): boolean {
  if (event.event === 'JOB_STATUS_CHANGE') return event.data.id === jobId;
  return JOB_EVENTS.includes(event.event) && event.data.device === jobId;
}

/** What the events and the last query-jobs said about a job; folded by `applyJobEvent` (pure). */
export interface JobTrack {
  status: JobStatus | undefined;
  /** Seen BLOCK_JOB_CANCELLED. */
  cancelledEvent: boolean;
  /** From BLOCK_JOB_COMPLETED / BLOCK_JOB_CANCELLED. */
  offset?: number;
  len?: number;
  /** From BLOCK_JOB_COMPLETED's `error` or query-jobs' `error`. */
  error?: string;
}

/** Folds one event into the track (pure). */
export function applyJobEvent(track: JobTrack, event: QmpEvent): JobTrack {
  const next: JobTrack = { ...track };
  switch (event.event) {
    case 'JOB_STATUS_CHANGE':
      if (typeof event.data.status === 'string') next.status = event.data.status as JobStatus;
      break;
    case 'BLOCK_JOB_COMPLETED':
    case 'BLOCK_JOB_CANCELLED':
      if (typeof event.data.offset === 'number') next.offset = event.data.offset;
      if (typeof event.data.len === 'number') next.len = event.data.len;
      if (event.event === 'BLOCK_JOB_CANCELLED') next.cancelledEvent = true;
      if (typeof event.data.error === 'string') next.error = event.data.error;
      break;
    default:
      break;
  }
  return next;
}

/** The result of a concluded job from its track and its last query-jobs entry (pure). */
export function jobResult(track: JobTrack, info: JobInfo | undefined): JobResult {
  const error = track.error ?? info?.error;
  const offset = track.offset ?? info?.currentProgress ?? 0;
  const len = track.len ?? info?.totalProgress ?? 0;
  let status: JobResult['status'];
  if (track.cancelledEvent || (error === CANCELLED_JOB_ERROR && track.offset === undefined)) status = 'cancelled';
  else if (error !== undefined) status = 'failed';
  else status = 'completed';
  const result: JobResult = { status, offset, len };
  if (error !== undefined) result.error = error;
  return result;
}

/** A watch on one job, listening from its creation. Call `wait()` once, or `close()` if the job never started. */
export interface JobWatch {
  readonly jobId: string;
  /**
   * Resolves when the job reaches `concluded` (the job is NOT dismissed: call `dismissJob`).
   * @throws AbortedError when `signal` fires (the job keeps running: cancel it); QmpClosedError when the
   *   connection drops; NotFoundError when the job does not exist and no event about it came (not prepared).
   */
  wait(options?: WatchJobOptions): Promise<JobResult>;
  /** Stops listening; idempotent. */
  close(): void;
}

/** Starts listening for job `jobId`'s events now; send the command that creates the job after this. */
export function prepareJobWatch(qmp: QmpExecutor, jobId: string): JobWatch {
  return createWatch(qmp, jobId, true);
}

/**
 * Follows an existing job (or one just created by a command sent after `prepareJobWatch`) to `concluded`.
 * @throws NotFoundError when no such job exists; AbortedError; QmpClosedError.
 */
export async function watchJob(qmp: QmpExecutor, jobId: string, options: WatchJobOptions = {}): Promise<JobResult> {
  const watch = createWatch(qmp, jobId, false);
  return watch.wait(options);
}

function createWatch(qmp: QmpExecutor, jobId: string, prepared: boolean): JobWatch {
  const listener = qmp.listen(JOB_EVENTS);
  const matches = (e: QmpEvent): boolean => isEventOfJob(e, jobId);
  let used = false;

  const wait = async (options: WatchJobOptions = {}): Promise<JobResult> => {
    if (used) throw new AbortedError(`the watch on job ${jobId} was already waited on`);
    used = true;
    const { signal, onProgress } = options;
    const interval = options.progressIntervalMs ?? 1000;
    let track: JobTrack = { status: undefined, cancelledEvent: false };
    let timer: NodeJS.Timeout | undefined;
    let polling = false;
    const poll = async (): Promise<void> => {
      if (polling || !onProgress) return;
      polling = true;
      try {
        const info = (await queryJobs(qmp, callOptions({ signal }))).find((j) => j.id === jobId);
        if (info && info.status === 'running' && track.status === 'running') {
          onProgress({ jobId, current: info.currentProgress, total: info.totalProgress });
        }
      } catch (error) {
        log.debug({ err: error, jobId }, 'progress poll failed; ignored');
      } finally {
        polling = false;
      }
    };
    const follow = (): void => {
      if (!onProgress) return;
      if (track.status === 'running' && !timer) {
        timer = setInterval(() => void poll(), interval);
        timer.unref();
      } else if (track.status !== 'running' && timer) {
        clearInterval(timer);
        timer = undefined;
      }
    };
    try {
      throwIfAborted(signal, `watching job ${jobId}`);
      // A prepared watch saw every event since before the job existed. Otherwise ask where the job is now; the
      // events buffered since the listener started are older than that answer.
      let initial: JobInfo | undefined;
      if (!prepared) {
        initial = (await queryJobs(qmp, callOptions({ signal }))).find((j) => j.id === jobId);
        if (!initial && !listener.buffered.some(matches)) {
          throw new NotFoundError(`QEMU has no job called ${jobId}`, {
            hint: 'check the job id with query-jobs; it may have been dismissed already',
          });
        }
      }
      while (listener.buffered.some(matches)) track = applyJobEvent(track, await listener.next(matches));
      if (initial) track.status = initial.status;
      log.debug({ jobId, status: track.status }, 'watching job');
      follow();
      while (track.status !== 'concluded' && track.status !== 'null') {
        const event = await listener.next(matches, { signal });
        track = applyJobEvent(track, event);
        if (event.event === 'JOB_STATUS_CHANGE') log.debug({ jobId, status: track.status }, 'job status');
        follow();
      }
      if (timer) clearInterval(timer);
      timer = undefined;
      // BLOCK_JOB_COMPLETED comes before `concluded`; drain anything left for the result.
      while (listener.buffered.some(matches)) track = applyJobEvent(track, await listener.next(matches));
      const info = (await queryJobs(qmp, callOptions({ signal }))).find((j) => j.id === jobId);
      return jobResult(track, info);
    } finally {
      if (timer) clearInterval(timer);
      listener.close();
    }
  };

  return { jobId, wait, close: () => listener.close() };
}

export interface RunCreateJobOptions {
  signal?: AbortSignal;
  /** Time allowed for the whole job; default none. */
  timeoutMs?: number;
}

/**
 * Runs `blockdev-create {job-id, options}` to its end the libvirt way: listen, start, wait for `concluded`,
 * `job-dismiss`. On abort the job is cancelled and dismissed before AbortedError is thrown.
 * @throws QemuJobError when the job fails (with QEMU's error text); QmpError when QEMU refuses to start it;
 *   AbortedError; QmpClosedError.
 */
export async function runCreateJob(
  qmp: QmpExecutor,
  jobId: string,
  createOptions: Record<string, unknown>,
  options: RunCreateJobOptions = {},
): Promise<void> {
  throwIfAborted(options.signal, `creating image (job ${jobId})`);
  const watch = prepareJobWatch(qmp, jobId);
  try {
    await qmp.execute('blockdev-create', { 'job-id': jobId, options: createOptions }, callOptions(options));
  } catch (error) {
    watch.close();
    throw error;
  }
  let result: JobResult;
  try {
    const waitSignal =
      options.timeoutMs !== undefined
        ? AbortSignal.any([
            ...(options.signal ? [options.signal] : []),
            AbortSignal.timeout(options.timeoutMs),
          ])
        : options.signal;
    result = await watch.wait(waitSignal ? { signal: waitSignal } : {});
  } catch (error) {
    await cancelAndDismissQuietly(qmp, jobId);
    throw error;
  }
  await dismissJob(qmp, jobId);
  if (result.status !== 'completed') throw new QemuJobError(jobId, result.status, result.error);
}

/** Best effort after an abort: cancel the job, wait a little for `concluded`, dismiss it. Never throws. */
export async function cancelAndDismissQuietly(qmp: QmpExecutor, jobId: string, waitMs = 10_000): Promise<void> {
  const listener = qmp.listen('JOB_STATUS_CHANGE');
  try {
    const info = (await queryJobs(qmp)).find((j) => j.id === jobId);
    if (!info) return;
    if (info.status !== 'concluded') {
      await cancelJob(qmp, jobId, { force: true });
      await listener.next((e) => e.data.id === jobId && e.data.status === 'concluded', { timeoutMs: waitMs });
    }
    await dismissJob(qmp, jobId);
  } catch (error) {
    log.debug({ err: error, jobId }, 'cancel/dismiss after abort failed; ignored');
  } finally {
    listener.close();
  }
}
