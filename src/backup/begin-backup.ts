// The common start of push and pull: refuse early, plan (pure), provision with an undo log, the one transaction;
// on any failure before the job runs everything done so far is undone and the first error is thrown.
import { randomBytes } from 'node:crypto';
import type { QmpExecutor } from '../qmp/index.js';
import { ConflictError } from '../util/errors.js';
import { getLogger } from '../util/logger.js';
import { BackupJobRun } from './backup-job.js';
import type { BackupRegistry, BackupReservation } from './backup-registry.js';
import { fleeceNaming, planBackup, type PlanInput } from './plan.js';
import type { QueryJobInfo } from './qemu-effects.js';

const log = getLogger('backup.begin');

/** Job ids of fleece's backup jobs start with this (see fleeceNaming). */
export const FLEECE_JOB_PREFIX = 'fleece-backup-';

/** A short random tag that makes node and job names unique per backup job. */
export function newJobTag(): string {
  return randomBytes(3).toString('hex');
}

export interface BeginOptions {
  vm: string;
  qmp: QmpExecutor;
  plan: Omit<PlanInput, 'naming'> & { naming?: PlanInput['naming'] };
  tag?: string;
  registry?: BackupRegistry;
  signal?: AbortSignal;
}

export interface Begun {
  run: BackupJobRun;
  reservation: BackupReservation | undefined;
  tag: string;
}

/**
 * Reserves the VM, checks that QEMU runs no fleece backup job (a second fleece process, or a crashed one), plans,
 * provisions and commits. Throws ConflictError ("another backup job is already running"), the plan's
 * InvalidInputError/NotFoundError, the provisioning or transaction error (after rolling back), or AbortedError.
 */
export async function beginBackup(options: BeginOptions): Promise<Begun> {
  const { vm, qmp, signal } = options;
  const reservation = options.registry?.reserve(vm);
  let run: BackupJobRun | undefined;
  try {
    const jobs = await qmp.execute<QueryJobInfo[]>('query-jobs');
    const other = jobs.find((job) => job.id.startsWith(FLEECE_JOB_PREFIX) && job.type === 'backup');
    if (other) {
      throw new ConflictError(`another backup job is already running for VM '${vm}' (QEMU job ${other.id})`, {
        hint: `wait for it to end, or abort it; a job left by a crashed fleece is removed with job-cancel/job-dismiss ${other.id}`,
      });
    }
    const tag = options.tag ?? newJobTag();
    const plan = planBackup({ ...options.plan, naming: options.plan.naming ?? fleeceNaming(tag) });
    run = new BackupJobRun(qmp, plan, vm);
    await run.provision(signal);
    await run.commit(signal);
    return { run, reservation, tag };
  } catch (error) {
    if (run) {
      const outcome = await run.teardown(false);
      if (outcome.firstError) log.warn({ vm, err: outcome.firstError }, 'rollback after a failed start was incomplete');
    }
    reservation?.release();
    throw error;
  }
}
