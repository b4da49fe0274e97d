// The one error tree of fleece: every error has a stable `code`, a message that names the thing and the fix, and a `cause`.

export type FleeceErrorCode =
  | 'USAGE'
  | 'INVALID_INPUT'
  | 'NOT_FOUND'
  | 'CONFLICT'
  | 'QMP_CONNECT'
  | 'QMP_CLOSED'
  | 'QMP_TIMEOUT'
  | 'QMP_COMMAND'
  | 'QMP_PROTOCOL'
  | 'QEMU_JOB'
  | 'NBD'
  | 'LIBVIRT'
  | 'STORE'
  | 'INTEGRITY'
  | 'ABORTED'
  | 'INTERNAL';

export interface FleeceErrorOptions {
  cause?: unknown;
  /** What the user can do about it, appended to the message. */
  hint?: string;
}

/** Base class of every error fleece throws on purpose. */
export class FleeceError extends Error {
  readonly code: FleeceErrorCode;
  readonly hint: string | undefined;

  constructor(code: FleeceErrorCode, message: string, options: FleeceErrorOptions = {}) {
    super(options.hint ? `${message}; ${options.hint}` : message, { cause: options.cause });
    this.name = new.target.name;
    this.code = code;
    this.hint = options.hint;
  }
}

/** The input (XML, options, arguments) is wrong; nothing was touched. */
export class InvalidInputError extends FleeceError {
  constructor(message: string, options: FleeceErrorOptions = {}) {
    super('INVALID_INPUT', message, options);
  }
}

/** A thing that was asked for does not exist (a VM, a disk, a checkpoint, a backup, an object). */
export class NotFoundError extends FleeceError {
  constructor(message: string, options: FleeceErrorOptions = {}) {
    super('NOT_FOUND', message, options);
  }
}

/** The request conflicts with the current state (a job already running, an object that already exists). */
export class ConflictError extends FleeceError {
  constructor(message: string, options: FleeceErrorOptions = {}) {
    super('CONFLICT', message, options);
  }
}

/** Stored data does not match what was expected (md5, sha256, sizes, names). */
export class IntegrityError extends FleeceError {
  readonly expected: string | undefined;
  readonly found: string | undefined;

  constructor(message: string, details: { expected?: string; found?: string } & FleeceErrorOptions = {}) {
    super('INTEGRITY', message, details);
    this.expected = details.expected;
    this.found = details.found;
  }
}

/** The operation was cancelled by its AbortSignal (user abort, Ctrl-C, daemon shutdown). */
export class AbortedError extends FleeceError {
  constructor(message = 'the operation was aborted', options: FleeceErrorOptions = {}) {
    super('ABORTED', message, options);
  }
}

export function isFleeceError(error: unknown): error is FleeceError {
  return error instanceof FleeceError;
}

/** Throws AbortedError when the signal has fired; call at the top of each step of a long operation. */
export function throwIfAborted(signal: AbortSignal | undefined, what = 'the operation'): void {
  if (signal?.aborted) {
    throw new AbortedError(`${what} was aborted`, { cause: signal.reason });
  }
}

/** A readable one-line description of any thrown value. */
export function describeError(error: unknown): string {
  if (error instanceof Error) return error.message;
  return String(error);
}
