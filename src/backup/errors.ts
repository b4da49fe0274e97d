// Errors of the backup job: a disk's block job failed in QEMU, or provisioning a target or scratch image failed.
import { FleeceError, type FleeceErrorOptions } from '../util/errors.js';

/** A disk's block job ended with an error (target full, target unwritable, I/O error on the source). */
export class BackupJobError extends FleeceError {
  readonly disk: string;
  readonly jobId: string;

  constructor(disk: string, jobId: string, message: string, options: FleeceErrorOptions = {}) {
    super('QEMU_JOB', message, options);
    this.disk = disk;
    this.jobId = jobId;
  }
}
