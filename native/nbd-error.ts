// NbdError: a libnbd call failed; carries libnbd's message, its errno and the call that failed.
import { constants } from 'node:os';
import { FleeceError, type FleeceErrorOptions } from '../src/util/errors.js';

const ERRNO_NAMES = new Map<number, string>(Object.entries(constants.errno).map(([name, value]) => [value, name]));

/** Name of an errno value (`EIO`), or undefined for 0 / unknown values. */
export function errnoName(errno: number): string | undefined {
  return errno === 0 ? undefined : ERRNO_NAMES.get(errno);
}

/** A libnbd call failed, or an NBD handle was used in a way libnbd cannot serve (closed, dead connection). */
export class NbdError extends FleeceError {
  /** The libnbd function that failed, e.g. `nbd_pread`. */
  readonly call: string;
  /** libnbd's errno for the failure (0 when libnbd gave none). */
  readonly errno: number;
  /** The errno's symbolic name (`EIO`), when known. */
  readonly errnoName: string | undefined;
  /** libnbd's own message (`nbd_get_error()`), verbatim. */
  readonly libnbdMessage: string;

  constructor(call: string, libnbdMessage: string, errno: number, options: FleeceErrorOptions & { what?: string } = {}) {
    const name = errnoName(errno);
    const what = options.what ? `${options.what}: ` : '';
    super('NBD', `${what}${call} failed: ${libnbdMessage}${name ? ` (${name})` : ''}`, options);
    this.call = call;
    this.errno = errno;
    this.errnoName = name;
    this.libnbdMessage = libnbdMessage;
  }
}
