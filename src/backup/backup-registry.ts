// One backup job per VM at a time: reservations refuse a second one early, and jobInfo/abort find the job by VM.
import { ConflictError, NotFoundError } from '../util/errors.js';
import type { BackupJobInfo } from './backup-job.js';

/** What the registry knows of a running backup job. */
export interface ActiveBackup {
  readonly vm: string;
  readonly mode: 'push' | 'pull';
  jobInfo(): Promise<BackupJobInfo>;
  /** Cancels the job and undoes it (no new checkpoint); resolves when the teardown is done. */
  abort(reason?: unknown): Promise<void>;
}

/** A VM's slot, taken before anything is touched and released when the job is over. */
export interface BackupReservation {
  readonly vm: string;
  attach(job: ActiveBackup): void;
  release(): void;
}

export class BackupRegistry {
  readonly #slots = new Map<string, { job: ActiveBackup | undefined; token: object }>();

  /**
   * Takes the VM's slot. Throws ConflictError "another backup job is already running for VM 'x'" when it is taken.
   */
  reserve(vm: string): BackupReservation {
    if (this.#slots.has(vm)) {
      throw new ConflictError(`another backup job is already running for VM '${vm}'`, {
        hint: `wait for it to end, or abort it (fleece domjobabort ${vm})`,
      });
    }
    const token = {};
    const slot = { job: undefined as ActiveBackup | undefined, token };
    this.#slots.set(vm, slot);
    return {
      vm,
      attach: (job) => {
        if (this.#slots.get(vm)?.token === token) slot.job = job;
      },
      release: () => {
        if (this.#slots.get(vm)?.token === token) this.#slots.delete(vm);
      },
    };
  }

  /** The VM's running backup job, if any (undefined while it is still being prepared). */
  get(vm: string): ActiveBackup | undefined {
    return this.#slots.get(vm)?.job;
  }

  /** True while the VM's slot is taken (preparing or running). */
  isBusy(vm: string): boolean {
    return this.#slots.has(vm);
  }

  /** The VMs with a backup job. */
  list(): string[] {
    return [...this.#slots.keys()];
  }

  /** domjobinfo. Throws NotFoundError when the VM has no backup job. */
  async jobInfo(vm: string): Promise<BackupJobInfo> {
    return this.#require(vm).jobInfo();
  }

  /** domjobabort. Throws NotFoundError when the VM has no backup job. */
  async abort(vm: string, reason?: unknown): Promise<void> {
    await this.#require(vm).abort(reason);
  }

  #require(vm: string): ActiveBackup {
    const job = this.get(vm);
    if (!job) {
      throw new NotFoundError(`VM '${vm}' has no running backup job`, { hint: 'start one with fleece backup-begin' });
    }
    return job;
  }
}
