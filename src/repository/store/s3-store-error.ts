// S3StoreError: a failure of the S3 store, apart from the store itself so that importing it does not load the AWS SDK.
import { StoreError } from './object-store.js';

/** A failure of the S3 store: `status` (HTTP), `s3Code` (S3's error code or the socket's errno), `transient`. */
export class S3StoreError extends StoreError {
  readonly status: number | undefined;
  readonly s3Code: string | undefined;
  readonly transient: boolean;

  constructor(message: string, options: { cause?: unknown; hint?: string; status?: number; s3Code?: string; transient?: boolean }) {
    super(message, { cause: options.cause, hint: options.hint, errno: options.s3Code });
    this.status = options.status;
    this.s3Code = options.s3Code;
    this.transient = options.transient ?? false;
  }
}

