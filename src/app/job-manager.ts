// The daemon's jobs: one backup job per VM, a limit on jobs running together, every transition persisted, progress
// and state events for subscribers, and recovery of jobs a previous daemon left unfinished.
import { randomBytes } from 'node:crypto';
import { newJobTag } from '../backup/begin-backup.js';
import { CheckpointStore } from '../checkpoint/store.js';
import { ConflictError, NotFoundError, describeError, isFleeceError } from '../util/errors.js';
import { getLogger } from '../util/logger.js';
import { isFinalJobState, type JobInfo, type JobState } from './jobs/job-info.js';
import type { JobHandle, JobProgress, PreparedJob } from './jobs/job-handle.js';
import { JobStore, type JobRecovery } from './jobs/job-store.js';
import { prepareLibvirtBackup, type BackupBeginRequest } from './jobs/libvirt-backup.js';
import { QmpPool, type VmConnection } from './jobs/qmp-pool.js';
import { cleanupInterruptedJob } from './jobs/recover.js';
import { prepareProviderBackup } from './jobs/provider-backup-job.js';
import { prepareRepositoryBackup, type RepositoryBackupRequest } from './jobs/repository-backup.js';
import { scrubBackups } from './retention.js';
import type { ScrubReport } from '../repository/index.js';
import { describeReconcile, reconcileVm, type ReconcileReport } from './reconcile.js';
import { processStartTime } from '../util/process-start.js';
import { VmRegistry } from './vm-registry.js';
import type { NbdTls } from './nbd-tls-settings.js';

const log = getLogger('app.job-manager');

/** The message of a job that a daemon restart found unfinished. */
export const INTERRUPTED_MESSAGE = 'interrupted by a daemon restart';

export interface JobManagerOptions {
  stateDir: string;
  configDir: string;
  runDir: string;
  /** Jobs (on different VMs) running at the same time; more wait in `starting`. Default 4. */
  maxParallelJobs?: number;
  /** How often running jobs are asked for progress. Default 500 ms. */
  progressIntervalMs?: number;
  /** NBD TLS credentials of TCP exports (backup-begin with a tcp `<server>`), unless the VM's entry names its own. */
  nbdTls?: NbdTls;
  /** Scrub `repo` every `intervalMs` (the same scrubBackups as `fleece verify --sample`); off when absent. */
  scrub?: { repo: string; percent: number; intervalMs: number };
}

/** A state change (`state`) or new progress (`progress`) of one job. */
export interface JobEvent {
  type: 'state' | 'progress';
  job: JobInfo;
}

interface ManagedJob {
  info: JobInfo;
  recovery: JobRecovery;
  startedMs: number;
  controller: AbortController;
  handle?: JobHandle;
  /** Set when the user asked abort (the end is then `cancelled`). */
  abortRequested?: boolean;
  /** Set when the job failed on its own while running (the end is then `failed`). */
  failure?: string;
  /** Resolves when the job reached a final state. */
  ended: Promise<void>;
  /** The last progress sample, for the rate. */
  sample?: { at: number; processed: number };
  saving: Promise<void>;
}

function newJobId(): string {
  const stamp = new Date().toISOString().replace(/[-:]/g, '').replace(/\.\d+Z$/, 'Z');
  return `${stamp}-${randomBytes(3).toString('hex')}`;
}

export class JobManager {
  readonly registry: VmRegistry;
  readonly pool: QmpPool;
  readonly #options: Required<Omit<JobManagerOptions, 'nbdTls' | 'scrub'>>;
  readonly #scrub: JobManagerOptions['scrub'];
  #scrubTimer: NodeJS.Timeout | undefined;
  #scrubbing: Promise<void> | undefined;
  /** The last scheduled scrub's outcome. */
  lastScrub: { at: string; ok: boolean; report?: ScrubReport; error?: string } | undefined;
  readonly #nbdTls: NbdTls | undefined;
  readonly #store: JobStore;
  readonly #jobs = new Map<string, ManagedJob>();
  readonly #activeByVm = new Map<string, string>();
  readonly #listeners = new Set<(event: JobEvent) => void>();
  readonly #waiting: (() => void)[] = [];
  #running = 0;
  #closed = false;

  private constructor(options: JobManagerOptions) {
    const { nbdTls, scrub, ...rest } = options;
    this.#options = { maxParallelJobs: 4, progressIntervalMs: 500, ...rest };
    this.#scrub = scrub;
    this.#nbdTls = nbdTls;
    this.#store = new JobStore(options.stateDir);
    this.registry = new VmRegistry(options.configDir);
    this.pool = new QmpPool(options.stateDir);
  }

  /**
   * Loads the job history and ends every job a previous daemon left unfinished: marked failed ("interrupted by a
   * daemon restart") and its leftovers in QEMU and on the host removed. Throws only when the state directory is
   * unreadable.
   */
  static async open(options: JobManagerOptions): Promise<JobManager> {
    const manager = new JobManager(options);
    await manager.#recover();
    if (manager.#scrub) {
      manager.#scrubTimer = setInterval(() => void manager.scrubNow(), manager.#scrub.intervalMs);
      manager.#scrubTimer.unref();
    }
    return manager;
  }

  /** Runs the configured scrub now (once at a time; a tick during one is skipped). Never throws. */
  scrubNow(): Promise<void> {
    const scrub = this.#scrub;
    if (!scrub || this.#scrubbing) return this.#scrubbing ?? Promise.resolve();
    this.#scrubbing = (async () => {
      const at = new Date().toISOString();
      try {
        const { report } = await scrubBackups({ repo: scrub.repo, percent: scrub.percent });
        this.lastScrub = { at, ok: report.ok, report };
        if (report.ok) log.info({ repo: scrub.repo, checked: report.objectsChecked, total: report.objectsTotal, seed: report.seed }, 'scheduled scrub: OK');
        else log.error({ repo: scrub.repo, damaged: report.damaged, problems: report.problems.length }, 'scheduled scrub: DAMAGED backups');
      } catch (error) {
        this.lastScrub = { at, ok: false, error: describeError(error) };
        log.warn({ repo: scrub.repo, err: error }, 'scheduled scrub failed');
      } finally {
        this.#scrubbing = undefined;
      }
    })();
    return this.#scrubbing;
  }

  async #recover(): Promise<void> {
    // Backups a killed process (a CLI, or the previous daemon) left on a registered VM, from their journals.
    const reconciled: ReconcileReport[] = [];
    for (const entry of await this.registry.list().catch(() => [])) {
      const qmp = entry.qmp !== undefined ? await this.pool.get(entry).catch(() => undefined) : undefined;
      const report = await reconcileVm(entry.name, { stateDir: this.#options.stateDir, configDir: this.#options.configDir, ...(qmp ? { qmp: qmp.qmp } : {}) })
        .catch((error: unknown) => log.warn({ vm: entry.name, err: error }, 'could not read the backup journal'));
      if (report) {
        log.info({ vm: entry.name, cleaned: report.cleaned, failures: report.failures }, describeReconcile(report));
        reconciled.push(report);
      }
    }
    const checkpointStore = new CheckpointStore(this.#options.stateDir);
    for (const record of await this.#store.list()) {
      const job: ManagedJob = {
        info: record.info,
        recovery: record.recovery,
        startedMs: Date.parse(record.info.startedAt),
        controller: new AbortController(),
        ended: Promise.resolve(),
        saving: Promise.resolve(),
      };
      this.#jobs.set(record.info.id, job);
      if (isFinalJobState(record.info.state)) continue;
      let conn: VmConnection | undefined;
      try {
        if (record.recovery.qmp !== undefined) conn = await this.pool.get({ name: record.info.vm, qmp: record.recovery.qmp });
      } catch (error) {
        log.warn({ vm: record.info.vm, err: error }, 'cannot reach QEMU to clean an interrupted job');
      }
      // A repository or provider job journaled its effects as the daemon that ran it: that journal's reconcile (above)
      // undid them, repository objects included. The job's own record covers what a pull or push job made.
      const daemon = record.recovery.daemon;
      const journaled = daemon
        ? reconciled.find((r) => r.vm === record.info.vm && r.owner.pid === daemon.pid && r.owner.startTime === daemon.startTime)
        : undefined;
      const { repository, ...recovery } = record.recovery;
      const own = await cleanupInterruptedJob({ ...record, recovery: journaled ? recovery : record.recovery }, conn?.qmp, checkpointStore);
      const report = { cleaned: [...(journaled?.cleaned ?? []), ...own.cleaned], failures: [...(journaled?.failures ?? []), ...own.failures] };
      log.info({ job: record.info.id, vm: record.info.vm, ...report }, 'recovered an interrupted job');
      const reconcile = journaled ? `; ${describeReconcile(journaled)}` : '';
      const failures = own.failures.length > 0 ? `; cleanup incomplete: ${own.failures.join('; ')}` : '';
      const repo = repository && !journaled ? `; repository ${repository} may hold objects of this backup: run gc` : '';
      job.info = {
        ...job.info,
        state: 'failed',
        error: `${INTERRUPTED_MESSAGE} (was ${record.info.state})${reconcile}${failures}${repo}`,
        endedAt: new Date().toISOString(),
        result: { cleaned: report.cleaned, cleanupFailures: report.failures },
      };
      await this.#save(job);
    }
  }

  /** Calls `listener` for every state change and progress report of every job; returns the unsubscribe function. */
  subscribe(listener: (event: JobEvent) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /** Jobs not in a final state. */
  activeCount(): number {
    return this.#activeByVm.size;
  }

  /** Throws NotFoundError naming the VM and how to register it. */
  async connection(vm: string): Promise<VmConnection> {
    return this.pool.get(await this.registry.get(vm));
  }

  #refuseBusy(vm: string): void {
    const active = this.#activeByVm.get(vm);
    if (active !== undefined) {
      throw new ConflictError(`another backup job is already running for VM '${vm}' (job ${active})`, {
        hint: `wait for it to end, or abort it (fleece domjobabort ${vm})`,
      });
    }
  }

  /**
   * backup-begin: a push or pull backup from libvirt XML (none: a full pull over a unix socket in the run dir).
   * Resolves with the job once it runs (or waits for a free slot in `starting`).
   * @throws NotFoundError (VM, checkpoint), ConflictError (a job runs for the VM), InvalidInputError naming the
   *   field, and the start's error (the job is then recorded as failed).
   */
  async beginBackup(vm: string, request: BackupBeginRequest): Promise<JobInfo> {
    const conn = await this.connection(vm);
    const id = newJobId();
    const prepared = await prepareLibvirtBackup(
      { conn, jobId: id, tag: newJobTag(), runDir: this.#options.runDir, stateDir: this.#options.stateDir, ...(this.#nbdTls ? { nbdTls: this.#nbdTls } : {}) },
      request,
    );
    return this.#launch(id, vm, prepared);
  }

  /**
   * A backup into a repository (app/backup-to-repository), or through a backup provider (app/provider-backup).
   * @throws NotFoundError (VM), ConflictError (a job runs for the VM), the start's error.
   */
  async repositoryBackup(vm: string, request: RepositoryBackupRequest): Promise<JobInfo> {
    this.#refuseBusy(vm);
    const entry = await this.registry.get(vm);
    const conn = entry.qmp !== undefined ? await this.pool.get(entry) : undefined;
    const context = { entry, ...(conn ? { conn } : {}), stateDir: this.#options.stateDir, runDir: this.#options.runDir, configDir: this.#options.configDir };
    // The same request names a repository or an external provider (`fleece backup --provider`).
    const prepared = request.provider !== undefined ? prepareProviderBackup(context, request) : prepareRepositoryBackup(context, request);
    return this.#launch(newJobId(), vm, prepared);
  }

  /** This process as the owner of the journals its jobs write (see JobRecovery.daemon). */
  #daemonProcess(): Pick<JobRecovery, 'daemon'> {
    const startTime = processStartTime(process.pid);
    return startTime === undefined ? {} : { daemon: { pid: process.pid, startTime } };
  }

  async #launch(id: string, vm: string, prepared: PreparedJob): Promise<JobInfo> {
    this.#refuseBusy(vm);
    if (this.#closed) throw new ConflictError('the daemon is shutting down', { hint: 'start the job again once it runs' });
    this.#activeByVm.set(vm, id);
    const startedMs = Date.now();
    let markEnded!: () => void;
    const job: ManagedJob = {
      info: {
        id,
        vm,
        kind: prepared.kind,
        state: 'starting',
        startedAt: new Date(startedMs).toISOString(),
        ...(prepared.checkpoint ? { checkpoint: prepared.checkpoint } : {}),
        ...(prepared.incrementalFrom ? { incrementalFrom: prepared.incrementalFrom } : {}),
        dataTotal: 0,
        dataProcessed: 0,
        dataRemaining: 0,
        elapsedMs: 0,
        disks: [],
      },
      recovery: { ...prepared.recovery, ...this.#daemonProcess() },
      startedMs,
      controller: new AbortController(),
      ended: new Promise<void>((resolve) => {
        markEnded = resolve;
      }),
      saving: Promise.resolve(),
    };
    this.#jobs.set(id, job);
    await this.#transition(job, 'starting');
    const slotFree = this.#running < this.#options.maxParallelJobs;
    let started!: (error?: unknown) => void;
    const startOutcome = new Promise<unknown>((resolve) => {
      started = resolve;
    });
    void this.#run(job, prepared, started).finally(markEnded);
    if (!slotFree) return this.#snapshot(job);
    const error = await startOutcome;
    if (error !== undefined) throw error;
    return this.#snapshot(job);
  }

  async #acquire(signal: AbortSignal): Promise<void> {
    while (this.#running >= this.#options.maxParallelJobs) {
      if (signal.aborted) return;
      await new Promise<void>((resolve) => {
        this.#waiting.push(resolve);
        signal.addEventListener('abort', () => resolve(), { once: true });
      });
    }
    this.#running += 1;
  }

  #release(): void {
    this.#running -= 1;
    this.#waiting.shift()?.();
  }

  async #run(job: ManagedJob, prepared: PreparedJob, started: (error?: unknown) => void): Promise<void> {
    const signal = job.controller.signal;
    await this.#acquire(signal);
    if (signal.aborted) {
      job.info.error = 'aborted before it started';
      await this.#end(job, 'cancelled');
      started();
      return;
    }
    let timer: NodeJS.Timeout | undefined;
    try {
      try {
        job.handle = await prepared.start(signal);
      } catch (error) {
        job.info.error = describeError(error);
        await this.#end(job, signal.aborted || job.abortRequested ? 'cancelled' : 'failed');
        started(signal.aborted ? undefined : error);
        return;
      }
      const handle = job.handle;
      await this.#updateProgress(job, handle, false);
      if (job.abortRequested) {
        // Aborted while it was starting: the start's own abort listener came too late, end it now.
        await this.#transition(job, 'cancelling');
        void handle.abort(String(signal.reason ?? 'aborted by the user'));
      } else {
        await this.#transition(job, handle.startedState);
      }
      started();
      timer = setInterval(() => void this.#updateProgress(job, handle, true), this.#options.progressIntervalMs);
      try {
        const result = await handle.done;
        await this.#updateProgress(job, handle, false);
        if (result !== undefined) job.info.result = result;
        await this.#end(job, 'completed');
      } catch (error) {
        await this.#updateProgress(job, handle, false);
        if (job.failure !== undefined) {
          job.info.error = job.failure;
          await this.#end(job, 'failed');
        } else {
          job.info.error = describeError(error);
          const aborted = job.abortRequested || (isFleeceError(error) && error.code === 'ABORTED');
          await this.#end(job, aborted ? 'cancelled' : 'failed');
        }
      }
    } catch (error) {
      log.error({ job: job.info.id, err: error }, 'job bookkeeping failed');
      job.info.error ??= describeError(error);
      await this.#end(job, 'failed').catch(() => undefined);
      started(error);
    } finally {
      if (timer) clearInterval(timer);
      this.#release();
    }
  }

  async #updateProgress(job: ManagedJob, handle: JobHandle, emit: boolean): Promise<void> {
    if (isFinalJobState(job.info.state)) return;
    let progress: JobProgress;
    try {
      progress = await handle.progress();
    } catch (error) {
      log.debug({ job: job.info.id, err: error }, 'progress not available');
      return;
    }
    if (isFinalJobState(job.info.state)) return;
    const before = `${job.info.dataProcessed}/${job.info.dataTotal}/${job.info.scratchBytes}/${job.info.disks.map((d) => d.state).join()}`;
    const now = Date.now();
    if (job.sample && now > job.sample.at && progress.dataProcessed >= job.sample.processed) {
      job.info.rate = Math.round(((progress.dataProcessed - job.sample.processed) * 1000) / (now - job.sample.at));
    }
    job.sample = { at: now, processed: progress.dataProcessed };
    job.info.dataTotal = progress.dataTotal;
    job.info.dataProcessed = progress.dataProcessed;
    job.info.dataRemaining = Math.max(0, progress.dataTotal - progress.dataProcessed);
    if (progress.scratchBytes !== undefined) job.info.scratchBytes = progress.scratchBytes;
    if (progress.checkpoint !== undefined) job.info.checkpoint = progress.checkpoint;
    if (progress.incrementalFrom !== undefined) job.info.incrementalFrom = progress.incrementalFrom;
    // Keep the export of each disk once known (the final report comes after the exports went away).
    job.info.disks = progress.disks.map((d) => ({ ...(job.info.disks.find((o) => o.disk === d.disk)?.export ? { export: job.info.disks.find((o) => o.disk === d.disk)?.export } : {}), ...d }));
    const after = `${job.info.dataProcessed}/${job.info.dataTotal}/${job.info.scratchBytes}/${job.info.disks.map((d) => d.state).join()}`;
    if (progress.failed !== undefined && job.failure === undefined && !job.abortRequested) {
      job.failure = progress.failed;
      void handle.abort(progress.failed);
    }
    if (emit && before !== after) this.#emit({ type: 'progress', job: this.#snapshot(job) });
  }

  async #end(job: ManagedJob, state: JobState): Promise<void> {
    if (isFinalJobState(job.info.state)) return;
    job.info.endedAt = new Date().toISOString();
    if (state === 'completed') delete job.info.error;
    if (this.#activeByVm.get(job.info.vm) === job.info.id) this.#activeByVm.delete(job.info.vm);
    await this.#transition(job, state);
  }

  async #transition(job: ManagedJob, state: JobState): Promise<void> {
    job.info.state = state;
    await this.#save(job);
    this.#emit({ type: 'state', job: this.#snapshot(job) });
  }

  #save(job: ManagedJob): Promise<void> {
    const record = { version: 1 as const, info: this.#snapshot(job), recovery: job.recovery };
    job.saving = job.saving.then(
      () => this.#store.save(record),
      () => this.#store.save(record),
    );
    job.saving.catch((error: unknown) => log.error({ job: job.info.id, err: error }, 'cannot write the job record'));
    return job.saving;
  }

  #emit(event: JobEvent): void {
    for (const listener of [...this.#listeners]) {
      try {
        listener(event);
      } catch (error) {
        log.warn({ err: error }, 'a job event listener threw');
      }
    }
  }

  #snapshot(job: ManagedJob): JobInfo {
    const end = job.info.endedAt ? Date.parse(job.info.endedAt) : Date.now();
    return structuredClone({ ...job.info, elapsedMs: Math.max(0, end - job.startedMs) });
  }

  #require(id: string): ManagedJob {
    const job = this.#jobs.get(id);
    if (!job) throw new NotFoundError(`job '${id}' does not exist`, { hint: 'list the jobs with GET /v1/jobs' });
    return job;
  }

  /** One job. Throws NotFoundError. */
  get(id: string): JobInfo {
    return this.#snapshot(this.#require(id));
  }

  /** Jobs, oldest first, history included; filtered by VM and by being active. */
  list(filter: { vm?: string; active?: boolean } = {}): JobInfo[] {
    return [...this.#jobs.values()]
      .filter((job) => filter.vm === undefined || job.info.vm === filter.vm)
      .filter((job) => filter.active === undefined || filter.active === !isFinalJobState(job.info.state))
      .map((job) => this.#snapshot(job))
      .sort((a, b) => a.startedAt.localeCompare(b.startedAt));
  }

  /** domjobinfo: the VM's active job, or with `completed` its last finished one; null when none. */
  vmJob(vm: string, completed = false): JobInfo | null {
    if (!completed) {
      const id = this.#activeByVm.get(vm);
      return id === undefined ? null : this.get(id);
    }
    const done = this.list({ vm, active: false });
    done.sort((a, b) => (a.endedAt ?? '').localeCompare(b.endedAt ?? ''));
    return done[done.length - 1] ?? null;
  }

  /** backup-dumpxml of the VM's active job. Throws NotFoundError when the VM has none (or it has no XML). */
  backupXml(vm: string): string {
    const id = this.#activeByVm.get(vm);
    const xml = id === undefined ? undefined : this.#jobs.get(id)?.recovery.backupXml;
    if (xml === undefined) throw new NotFoundError(`VM '${vm}' has no active backup job`, { hint: 'start one with backup-begin' });
    return xml;
  }

  /** Resolves when the job reached a final state. Throws NotFoundError. */
  async waitEnded(id: string): Promise<JobInfo> {
    await this.#require(id).ended;
    return this.get(id);
  }

  /**
   * domjobabort: cancels the job and waits for its end (pull: the new checkpoint is removed).
   * @throws NotFoundError; ConflictError when the job already ended.
   */
  async abort(id: string, reason = 'aborted by the user'): Promise<JobInfo> {
    const job = this.#require(id);
    if (isFinalJobState(job.info.state)) {
      throw new ConflictError(`job '${id}' already ended (${job.info.state})`, { hint: 'only active jobs can be aborted' });
    }
    if (!job.abortRequested) {
      job.abortRequested = true;
      job.controller.abort(reason);
      if (job.handle) {
        await this.#transition(job, 'cancelling');
        void job.handle.abort(reason);
      }
    }
    await job.ended;
    return this.get(id);
  }

  /** domjobabort of the VM's active job. Throws NotFoundError when it has none. */
  async abortVm(vm: string): Promise<JobInfo> {
    const id = this.#activeByVm.get(vm);
    if (id === undefined) throw new NotFoundError(`VM '${vm}' has no active backup job`, { hint: 'nothing to abort' });
    return this.abort(id);
  }

  /**
   * Ends a pull job whose reader is done, keeping the new checkpoint; resolves with the job in its final state.
   * @throws NotFoundError; ConflictError for a push or repository job (they end by themselves) or a pull job that is
   *   not ready.
   */
  async finish(id: string): Promise<JobInfo> {
    const job = this.#require(id);
    if (job.info.kind !== 'pull') {
      throw new ConflictError(`job '${id}' is a ${job.info.kind} job; it ends by itself`, { hint: 'only pull jobs are finished by their reader' });
    }
    if (job.info.state !== 'ready' || !job.handle?.finish) {
      throw new ConflictError(`job '${id}' is ${job.info.state}, not ready`, { hint: 'finish a pull job once its exports are up and read' });
    }
    await job.handle.finish().catch((error: unknown) => log.info({ job: id, err: error }, 'finish failed'));
    await job.ended;
    return this.get(id);
  }

  /** Stops taking jobs, aborts the active ones (exports go, new checkpoints of pull jobs too), closes QMP. */
  async close(): Promise<void> {
    this.#closed = true;
    if (this.#scrubTimer) clearInterval(this.#scrubTimer);
    await this.#scrubbing;
    const active = [...this.#activeByVm.values()];
    await Promise.all(active.map((id) => this.abort(id, 'the daemon is shutting down').catch(() => undefined)));
    await this.pool.closeAll();
  }
}
