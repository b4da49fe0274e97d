// The machinery shared by push and pull: provision the plan recording undo steps, commit the one transaction, watch the
// disks' block jobs through the per-disk state machine, cancel on failure or request, report progress, tear down.
import { open, truncate, stat } from 'node:fs/promises';
import { QmpError, type QmpExecutor, type QmpEventListener } from '../qmp/index.js';
import { AbortedError, FleeceError, InvalidInputError, describeError, throwIfAborted } from '../util/errors.js';
import { getLogger } from '../util/logger.js';
import { testPausePoint } from '../util/test-pause.js';
import { nextDiskState, type DiskEvent, type DiskState } from './disk-state.js';
import { BackupJobError } from './errors.js';
import { foldJobState, isJobTerminal, type JobFold, type JobPhase, type JobRequest } from './job-state.js';
import type { BackupPlan, PlannedDisk } from './plan.js';
import { QemuJobError } from '../qemu/errors.js';
import { runCreateJob } from '../qemu/jobs.js';
import { findJob, qemuUndoEffects, type QueryJobInfo } from './qemu-effects.js';
import { UndoLog, describeUndoEntry, type UndoOutcome } from './undo-log.js';

const log = getLogger('backup.job');

/** Progress of one disk, as `virsh domjobinfo` reports it per disk. */
export interface DiskJobInfo {
  disk: string;
  state: DiskState;
  /** Bytes the job has to copy (push: the whole disk or the dirty bytes; pull: the disk size). */
  total: number;
  processed: number;
  remaining: number;
  /** Pull: bytes the scratch image takes on the host. */
  scratchBytes?: number;
}

/** Progress of a whole backup job (domjobinfo). */
export interface BackupJobInfo {
  vm: string;
  mode: 'push' | 'pull';
  phase: JobPhase;
  startedAt: Date;
  elapsedMs: number;
  total: number;
  processed: number;
  remaining: number;
  /** Pull: scratch bytes of every disk together. */
  scratchBytes?: number;
  disks: DiskJobInfo[];
  /** The first error of a failed job. */
  error?: string;
}

const JOB_EVENTS = ['BLOCK_JOB_COMPLETED', 'BLOCK_JOB_CANCELLED'];

/** One run of a backup plan against one QEMU. Not reusable. */
export class BackupJobRun {
  readonly undo = new UndoLog();
  readonly startedAt = new Date();
  readonly states: Record<string, DiskState> = {};
  readonly #qmp: QmpExecutor;
  readonly #plan: BackupPlan;
  readonly #vm: string;
  #request: JobRequest = 'none';
  #firstError: Error | undefined;
  #listener: QmpEventListener | undefined;
  #watching: Promise<void> | undefined;
  #waiters: (() => void)[] = [];
  #stopped = false;
  readonly #lastProgress = new Map<string, { total: number; processed: number }>();

  constructor(qmp: QmpExecutor, plan: BackupPlan, vm: string) {
    this.#qmp = qmp;
    this.#plan = plan;
    this.#vm = vm;
    for (const disk of plan.disks) this.states[disk.target] = 'none';
  }

  get plan(): BackupPlan {
    return this.#plan;
  }

  get firstError(): Error | undefined {
    return this.#firstError;
  }

  fold(): JobFold {
    return foldJobState(this.#plan.mode, this.states, this.#request);
  }

  /**
   * Runs the provisioning steps in order, recording each effect as soon as it happened. Throws the step's error
   * (files that exist, QEMU refusing a node) or AbortedError; the caller then rolls back.
   */
  async provision(signal?: AbortSignal): Promise<void> {
    const createdPolicy = this.#plan.mode === 'push' ? 'on-failure' : 'always';
    for (const step of this.#plan.provision) {
      throwIfAborted(signal, `the backup of VM '${this.#vm}'`);
      log.debug({ step: step.kind, disk: 'disk' in step ? step.disk : undefined }, 'provision');
      switch (step.kind) {
        case 'create-file': {
          let handle;
          try {
            handle = await open(step.path, 'wx', 0o600);
          } catch (error) {
            const code = (error as NodeJS.ErrnoException).code;
            throw new FleeceError(
              code === 'EEXIST' ? 'CONFLICT' : 'INVALID_INPUT',
              `cannot create the ${step.role} image ${step.path} for disk '${step.disk}': ${describeError(error)}`,
              {
                cause: error,
                hint:
                  code === 'EEXIST'
                    ? 'choose a new file name, or reuse the existing image explicitly'
                    : 'check that the directory exists and is writable',
              },
            );
          }
          await handle.close();
          this.undo.record({ kind: 'file-created', disk: step.disk, path: step.path, policy: createdPolicy });
          if (step.size !== undefined) await truncate(step.path, step.size);
          break;
        }
        case 'add-file-node':
          await this.#qmp.execute(step.command.execute, step.command.arguments);
          this.undo.record({ kind: 'node-added', disk: step.disk, nodeName: step.nodeName, policy: 'always' });
          break;
        case 'create-image': {
          const args = step.command.arguments as { options: Record<string, unknown> };
          try {
            await runCreateJob(this.#qmp, step.jobId, args.options, signal ? { signal } : {});
          } catch (error) {
            if (!(error instanceof QemuJobError)) throw error;
            throw new BackupJobError(step.disk, step.jobId, `creating image ${step.path} for disk '${step.disk}' failed: ${error.message}`, {
              cause: error,
              hint: 'check the free space and permissions of the target directory',
            });
          }
          this.undo.record({ kind: 'image-created', disk: step.disk, path: step.path, policy: createdPolicy });
          break;
        }
        case 'add-format-node':
          await this.#qmp.execute(step.command.execute, step.command.arguments);
          this.undo.record({ kind: 'node-added', disk: step.disk, nodeName: step.nodeName, policy: 'always' });
          break;
        case 'add-tls-object':
          try {
            await this.#qmp.execute(step.command.execute, step.command.arguments);
          } catch (error) {
            if (!(error instanceof QmpError)) throw error;
            const files = step.type === 'x509' ? 'ca-cert.pem, server-cert.pem and server-key.pem' : 'keys.psk';
            throw new InvalidInputError(`QEMU cannot use the NBD TLS credentials in ${step.dir}: ${error.desc}`, {
              cause: error,
              hint: `put a valid ${files} there, readable by QEMU (a server certificate signed by ca-cert.pem, not expired)`,
            });
          }
          this.undo.record({ kind: 'object-added', id: step.id, what: 'NBD TLS credentials', policy: 'always' });
          break;
        case 'start-nbd-server':
          await this.#qmp.execute(step.command.execute, step.command.arguments);
          this.undo.record({ kind: 'nbd-server-started', policy: 'always' });
          break;
      }
    }
  }

  /**
   * The one commit point: sends the transaction with the job-event listener registered before it, then records the
   * new checkpoint's bitmaps (removed only on failure), the temporary bitmaps and the jobs. Throws what QEMU says when
   * it refuses the transaction (then nothing of it happened).
   */
  async commit(signal?: AbortSignal): Promise<void> {
    throwIfAborted(signal, `the backup of VM '${this.#vm}'`);
    await testPausePoint('before-transaction', signal);
    throwIfAborted(signal, `the backup of VM '${this.#vm}'`);
    const listener = this.#qmp.listen(JOB_EVENTS);
    try {
      await this.#qmp.execute('transaction', { actions: this.#plan.transaction });
    } catch (error) {
      listener.close();
      throw error;
    }
    this.#listener = listener;
    for (const bitmap of this.#plan.checkpointBitmaps) {
      const disk = this.#plan.disks.find((d) => d.sourceNode === bitmap.node)?.target ?? bitmap.node;
      this.undo.record({ kind: 'bitmap-added', disk, node: bitmap.node, name: bitmap.name, policy: 'on-failure' });
    }
    for (const disk of this.#plan.disks) {
      if (disk.tempBitmap) {
        this.undo.record({ kind: 'bitmap-added', disk: disk.target, ...disk.tempBitmap, policy: 'always' });
      }
      this.undo.record({ kind: 'job-started', disk: disk.target, jobId: disk.jobId, policy: 'always' });
      this.#apply(disk.target, 'started');
    }
    this.#watching = this.#watch(listener);
    await testPausePoint('after-transaction', signal);
  }

  /** Post-commit commands (pull exports); each recorded. Throws what QEMU says. */
  async addExports(): Promise<void> {
    for (const disk of this.#plan.disks) {
      if (!disk.export) continue;
      await this.#qmp.execute(disk.export.command.execute, disk.export.command.arguments);
      this.undo.record({ kind: 'export-added', disk: disk.target, id: disk.export.id, policy: 'always' });
    }
  }

  /**
   * Deletes the exports now (before the jobs are cancelled, so no reader sees the scratch lose its point in time)
   * and drops them from the undo log. Never throws; returns the first error.
   */
  async removeExports(): Promise<unknown> {
    const effects = qemuUndoEffects(this.#qmp);
    let first: unknown;
    for (const entry of this.undo.pending().reverse()) {
      if (entry.kind !== 'export-added') continue;
      try {
        await effects.deleteExport(entry.id);
      } catch (error) {
        first ??= error;
        log.debug({ id: entry.id, err: error }, 'block-export-del failed');
      }
    }
    this.undo.forget((entry) => entry.kind === 'export-added');
    return first;
  }

  /** Asks the job to end: 'abort' cancels everything (a failure), 'finish' ends a pull job normally. */
  async request(request: Exclude<JobRequest, 'none'>, reason?: unknown): Promise<void> {
    if (this.#request === 'none' || request === 'abort') {
      if (request === 'abort' && this.#request !== 'abort' && !this.#firstError) {
        this.#firstError = new AbortedError(`the backup of VM '${this.#vm}' was aborted${reason ? `: ${describeError(reason)}` : ''}`, {
          cause: reason,
        });
      }
      this.#request = request;
    }
    await this.#act();
  }

  /** Resolves with the terminal phase once every disk's job has ended (never rejects). */
  async waitTerminal(): Promise<JobPhase> {
    for (;;) {
      const { phase } = this.fold();
      if (isJobTerminal(phase) || (phase === 'preparing' && this.#request !== 'none')) return phase;
      await new Promise<void>((resolve) => this.#waiters.push(resolve));
    }
  }

  #apply(disk: string, event: DiskEvent): void {
    const before = this.states[disk];
    const after = nextDiskState(before, event);
    this.states[disk] = after;
    if (before !== after) log.debug({ vm: this.#vm, disk, event, before, after }, 'disk state');
  }

  #wake(): void {
    const waiters = this.#waiters;
    this.#waiters = [];
    for (const wake of waiters) wake();
  }

  /** Cancels what the fold says must be cancelled. */
  async #act(): Promise<void> {
    const { toCancel } = this.fold();
    const cancels = toCancel.map(async (target) => {
      const disk = this.#plan.disks.find((d) => d.target === target) as PlannedDisk;
      this.#apply(target, 'cancel-requested');
      try {
        await this.#qmp.execute('block-job-cancel', { device: disk.jobId, force: true });
      } catch (error) {
        // The job may have ended meanwhile; its end event still comes. If the connection is gone, it never will.
        log.debug({ disk: target, err: error }, 'block-job-cancel failed');
        const job = await findJob(this.#qmp, disk.jobId).catch(() => undefined);
        if (!job || job.status === 'concluded') this.#apply(target, 'job-cancelled');
      }
    });
    await Promise.all(cancels);
    this.#wake();
  }

  async #watch(listener: QmpEventListener): Promise<void> {
    try {
      while (!isJobTerminal(this.fold().phase)) {
        const event = await listener.next();
        const device = String(event.data.device ?? '');
        const disk = this.#plan.disks.find((d) => d.jobId === device);
        if (!disk) continue;
        const len = Number(event.data.len ?? 0);
        const offset = Number(event.data.offset ?? 0);
        this.#lastProgress.set(disk.target, { total: len, processed: offset });
        if (event.event === 'BLOCK_JOB_CANCELLED') {
          this.#apply(disk.target, 'job-cancelled');
        } else if (event.data.error !== undefined) {
          const message = String(event.data.error);
          this.#firstError ??= new BackupJobError(disk.target, disk.jobId, `the backup job of disk '${disk.target}' failed: ${message}`, {
            hint: 'check the target storage (space, permissions) and the QEMU log',
          });
          this.#apply(disk.target, 'job-failed');
        } else {
          this.#apply(disk.target, 'job-completed');
        }
        await this.#act();
      }
    } catch (error) {
      if (this.#stopped) return;
      // The connection died (QmpClosedError): no job event will come any more.
      this.#firstError ??= error instanceof Error ? error : new Error(String(error));
      for (const disk of this.#plan.disks) {
        if (this.states[disk.target] === 'running' || this.states[disk.target] === 'cancelling') this.#apply(disk.target, 'job-failed');
      }
      this.#wake();
    } finally {
      listener.close();
      this.#wake();
    }
  }

  /** Progress from query-jobs (and the last end event of jobs that ended); scratch usage from the scratch files. */
  async jobInfo(): Promise<BackupJobInfo> {
    let jobs: QueryJobInfo[] = [];
    try {
      jobs = await this.#qmp.execute<QueryJobInfo[]>('query-jobs');
    } catch (error) {
      log.debug({ err: error }, 'query-jobs failed');
    }
    const disks: DiskJobInfo[] = [];
    for (const disk of this.#plan.disks) {
      const job = jobs.find((j) => j.id === disk.jobId);
      if (job) this.#lastProgress.set(disk.target, { total: job['total-progress'], processed: job['current-progress'] });
      const progress = this.#lastProgress.get(disk.target) ?? { total: 0, processed: 0 };
      const info: DiskJobInfo = {
        disk: disk.target,
        state: this.states[disk.target],
        total: progress.total,
        processed: progress.processed,
        remaining: Math.max(0, progress.total - progress.processed),
      };
      if (this.#plan.mode === 'pull') info.scratchBytes = await allocatedBytes(disk.path);
      disks.push(info);
    }
    const sum = (key: 'total' | 'processed' | 'remaining') => disks.reduce((n, d) => n + d[key], 0);
    const phase = this.fold().phase;
    return {
      vm: this.#vm,
      mode: this.#plan.mode,
      phase,
      startedAt: this.startedAt,
      elapsedMs: Date.now() - this.startedAt.getTime(),
      total: sum('total'),
      processed: sum('processed'),
      remaining: sum('remaining'),
      ...(this.#plan.mode === 'pull' ? { scratchBytes: disks.reduce((n, d) => n + (d.scratchBytes ?? 0), 0) } : {}),
      disks,
      ...(this.#firstError && phase !== 'completed' ? { error: this.#firstError.message } : {}),
    };
  }

  /**
   * After a successful job, records the new checkpoint with `record` (the store); when that fails the checkpoint's
   * bitmaps are removed again, so QEMU and the store agree, and the store's error is thrown.
   */
  async recordCheckpoint(record: (() => Promise<void>) | undefined): Promise<void> {
    if (!record || this.#plan.checkpointBitmaps.length === 0) return;
    try {
      await record();
    } catch (error) {
      const effects = qemuUndoEffects(this.#qmp);
      for (const bitmap of this.#plan.checkpointBitmaps) {
        await effects.removeBitmap(bitmap.node, bitmap.name).catch((e: unknown) => log.warn({ err: e, bitmap }, 'could not remove bitmap'));
      }
      throw error;
    }
  }

  /** Changes the bandwidth limit of every running job (block-job-set-speed). Throws QmpError. */
  async setSpeed(bytesPerSecond: number): Promise<void> {
    for (const disk of this.#plan.disks) {
      if (this.states[disk.target] !== 'running') continue;
      await this.#qmp.execute('block-job-set-speed', { device: disk.jobId, speed: bytesPerSecond });
    }
  }

  /**
   * Undoes what the run did: everything on failure, only the temporary parts on success. Never throws. Waits for
   * the watcher first so no job event is lost.
   */
  async teardown(succeeded: boolean): Promise<UndoOutcome> {
    this.#stopped = true;
    this.#listener?.close();
    await this.#watching?.catch(() => undefined);
    const outcome = await this.undo.teardown(qemuUndoEffects(this.#qmp), { succeeded });
    for (const failure of outcome.failures) {
      log.warn({ vm: this.#vm, what: describeUndoEntry(failure.entry), err: failure.error }, 'cleanup step failed');
    }
    return outcome;
  }
}

/** Bytes a file takes on the host (allocated blocks), 0 when it is gone. */
export async function allocatedBytes(path: string): Promise<number> {
  try {
    return (await stat(path)).blocks * 512;
  } catch {
    return 0;
  }
}
