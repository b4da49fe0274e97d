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

/**
 * The VM's QEMU (or its libvirt domain) went away while its disks were read: the backup cannot go on. Nothing of it
 * was kept; the earlier backups and checkpoints are unchanged.
 */
export class SourceLostError extends FleeceError {
  constructor(readonly vm: string, readonly why: string, options: FleeceErrorOptions = {}) {
    super('QEMU_JOB', `the backup of VM '${vm}' failed: ${why} while fleece read its disks; nothing of this backup was kept`, {
      hint: 'start the VM again and take the backup again (the earlier backups are unchanged)',
      ...options,
    });
  }
}
