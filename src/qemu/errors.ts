// The qemu layer's errors: a QMP reply with a shape we did not expect, and a block job that failed or was cancelled.
import { FleeceError, type FleeceErrorOptions } from '../util/errors.js';

/** A QMP reply (query-block, query-named-block-nodes, query-jobs, ...) did not have the shape QEMU 7.2 gives. */
export class QemuReplyError extends FleeceError {
  /** The command whose reply was malformed. */
  readonly command: string;

  constructor(command: string, message: string, options: FleeceErrorOptions = {}) {
    super('QMP_PROTOCOL', `unexpected reply to ${command}: ${message}`, {
      hint: 'this QEMU version may not be supported (fleece is verified against QEMU 7.2); report it with the reply',
      ...options,
    });
    this.command = command;
  }
}

/** A QEMU job (blockdev-create, blockdev-backup, ...) ended with an error or was cancelled when success was needed. */
export class QemuJobError extends FleeceError {
  readonly jobId: string;
  /** How the job ended. */
  readonly status: 'failed' | 'cancelled';
  /** QEMU's error text from query-jobs / BLOCK_JOB_COMPLETED, when it gave one. */
  readonly jobError: string | undefined;

  constructor(
    jobId: string,
    status: 'failed' | 'cancelled',
    jobError: string | undefined,
    options: FleeceErrorOptions = {},
  ) {
    const what = status === 'cancelled' ? 'was cancelled' : `failed: ${jobError ?? 'no error text given'}`;
    super('QEMU_JOB', `QEMU job ${jobId} ${what}`, options);
    this.jobId = jobId;
    this.status = status;
    this.jobError = jobError;
  }
}
