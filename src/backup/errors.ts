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
 * The VM's QEMU (or its libvirt domain, or libvirtd) went away during the backup: it cannot go on. Nothing of it was
 * kept (what could not be undone yet stays journaled); the earlier backups and checkpoints are unchanged.
 */
export class SourceLostError extends FleeceError {
  constructor(readonly vm: string, readonly why: string, hint: string, options: Omit<FleeceErrorOptions, 'hint'> = {}) {
    super('QEMU_JOB', `the backup of VM '${vm}' failed: ${why} during the backup; nothing of it was kept`, { hint, ...options });
  }
}
