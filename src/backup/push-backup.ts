// Push backup: QEMU copies each disk (full, or incremental since a checkpoint) into a qcow2/raw target, all disks
// and the new checkpoint's bitmaps started by one transaction; incremental targets are rebased onto the previous backup.
import { execa } from 'execa';
import type { QmpExecutor } from '../qmp/index.js';
import { AbortedError, FleeceError, describeError } from '../util/errors.js';
import { getLogger } from '../util/logger.js';
import type { BackupJobInfo } from './backup-job.js';
import type { ActiveBackup, BackupRegistry } from './backup-registry.js';
import { beginBackup } from './begin-backup.js';
import type { PlanAction, PlanDiskRequest, PlanNaming, TargetFormat } from './plan.js';

const log = getLogger('backup.push');

/** One disk of a push backup. */
export interface PushDiskRequest extends PlanDiskRequest {
  push: { path: string; format: TargetFormat; create: boolean };
  /**
   * Incremental targets are created backed by the live image (libvirt's way); after the job fleece rewrites the
   * backing file to this previous backup (`qemu-img rebase -u`), so the chain opens without the VM. Absent: the
   * target keeps the live image as backing file, as libvirt leaves it.
   */
  rebaseOnto?: string;
  /** Format of `rebaseOnto`; default qcow2. */
  rebaseOntoFormat?: TargetFormat;
}

export interface PushBackupRequest {
  vm: string;
  qmp: QmpExecutor;
  /** The included disks, resolved (excluded disks are simply not listed). */
  disks: readonly PushDiskRequest[];
  /** The new checkpoint's bitmap-add actions (CheckpointManager.checkpointActions); omit for none. */
  checkpointActions?: readonly PlanAction[];
  /** Bandwidth limit per disk, bytes/s. */
  speed?: number;
  /**
   * Records the new checkpoint in the store (CheckpointManager.commitCreated); called only after every disk
   * completed. When it throws, the checkpoint's bitmaps are removed and `done` rejects with its error.
   */
  recordCheckpoint?: () => Promise<void>;
  registry?: BackupRegistry;
  signal?: AbortSignal;
  /** Unique job tag (node and job names); random by default. */
  tag?: string;
  naming?: PlanNaming;
}

export interface PushDiskResult {
  disk: string;
  path: string;
  format: TargetFormat;
  sync: 'full' | 'incremental';
  incrementalFrom?: string;
  /** Bytes the job copied (BLOCK_JOB_COMPLETED offset). */
  bytes: number;
  /** The backing file the target has after the backup (the previous backup, or the live image). */
  backingFile?: string;
}

export interface PushBackupResult {
  vm: string;
  startedAt: Date;
  finishedAt: Date;
  disks: PushDiskResult[];
  /** The new checkpoint's bitmaps, now in QEMU: record the checkpoint in the store. */
  checkpointBitmaps: { node: string; name: string }[];
  /** Cleanup steps that failed after a successful copy (the backup itself is good). */
  warnings: string[];
}

/** A running push backup. */
export interface PushBackupJob extends ActiveBackup {
  readonly mode: 'push';
  /** Resolves when every disk's copy is complete and the cleanup is done; rejects with the first error otherwise. */
  readonly done: Promise<PushBackupResult>;
  /** block-job-set-speed on every running disk job. Throws QmpError. */
  setSpeed(bytesPerSecond: number): Promise<void>;
}

/**
 * Starts a push backup and resolves once its jobs run (the transaction committed).
 * Throws ConflictError (another backup running), InvalidInputError/NotFoundError (the request), the provisioning or
 * transaction error (everything undone first), AbortedError. `done` then rejects with BackupJobError (a disk's job
 * failed), AbortedError (aborted), or a QMP error (connection lost); in all these cases the targets fleece created
 * and the new checkpoint's bitmaps are removed.
 */
export async function startPushBackup(request: PushBackupRequest): Promise<PushBackupJob> {
  const { vm, qmp, signal } = request;
  const { run, reservation } = await beginBackup({
    vm,
    qmp,
    ...(request.registry ? { registry: request.registry } : {}),
    ...(signal ? { signal } : {}),
    ...(request.tag ? { tag: request.tag } : {}),
    plan: {
      mode: 'push',
      disks: request.disks,
      checkpointActions: request.checkpointActions ?? [],
      ...(request.speed !== undefined ? { speed: request.speed } : {}),
      ...(request.naming ? { naming: request.naming } : {}),
    },
  });

  const onAbort = () => void run.request('abort', signal?.reason);
  signal?.addEventListener('abort', onAbort, { once: true });

  const finish = async (): Promise<PushBackupResult> => {
    try {
      const phase = await run.waitTerminal();
      const info = await run.jobInfo();
      const succeeded = phase === 'completed';
      const outcome = await run.teardown(succeeded);
      if (!succeeded) {
        throw run.firstError ?? new AbortedError(`the backup of VM '${vm}' was aborted`);
      }
      const warnings = outcome.failures.map((f) => `cleanup: ${describeError(f.error)}`);
      const disks: PushDiskResult[] = [];
      for (const planned of run.plan.disks) {
        const wanted = request.disks.find((d) => d.disk.target === planned.target);
        const result: PushDiskResult = {
          disk: planned.target,
          path: planned.path,
          format: planned.format,
          sync: planned.sync === 'incremental' ? 'incremental' : 'full',
          ...(planned.incrementalFrom ? { incrementalFrom: planned.incrementalFrom } : {}),
          bytes: info.disks.find((d) => d.disk === planned.target)?.processed ?? 0,
        };
        if (planned.sync === 'incremental') {
          result.backingFile = wanted?.disk.filename;
          if (wanted?.rebaseOnto) {
            await rebaseTarget(planned.path, wanted.rebaseOnto, wanted.rebaseOntoFormat ?? 'qcow2');
            result.backingFile = wanted.rebaseOnto;
          }
        }
        disks.push(result);
      }
      await run.recordCheckpoint(request.recordCheckpoint);
      return { vm, startedAt: run.startedAt, finishedAt: new Date(), disks, checkpointBitmaps: run.plan.checkpointBitmaps, warnings };
    } finally {
      signal?.removeEventListener('abort', onAbort);
      reservation?.release();
    }
  };

  const done = finish();
  const job: PushBackupJob = {
    vm,
    mode: 'push',
    done,
    jobInfo: () => run.jobInfo(),
    setSpeed: (bps) => run.setSpeed(bps),
    abort: async (reason) => {
      await run.request('abort', reason);
      await done.catch(() => undefined);
    },
  };
  reservation?.attach(job);
  // A caller that only awaits `done` later must not see an unhandled rejection in between.
  done.catch(() => undefined);
  return job;
}

/** Starts a push backup and waits for its end. Throws what startPushBackup and `done` throw. */
export async function runPushBackup(request: PushBackupRequest): Promise<PushBackupResult> {
  return (await startPushBackup(request)).done;
}

/**
 * Points an incremental target's backing file at the previous backup without touching data (`qemu-img rebase -u`).
 * Throws FleeceError('INTERNAL') with qemu-img's message when it fails.
 */
export async function rebaseTarget(path: string, onto: string, ontoFormat: TargetFormat): Promise<void> {
  log.debug({ path, onto }, 'rebase');
  try {
    await execa('qemu-img', ['rebase', '-u', '-b', onto, '-F', ontoFormat, path]);
  } catch (error) {
    throw new FleeceError('INTERNAL', `cannot rebase backup ${path} onto ${onto}: ${describeError(error)}`, {
      cause: error,
      hint: `run 'qemu-img rebase -u -b ${onto} -F ${ontoFormat} ${path}' by hand`,
    });
  }
}
