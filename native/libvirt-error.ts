// LibvirtError: a libvirt call failed (libvirt's virError, read on the thread that made the call), or the connection could not serve it.
import { FleeceError, type FleeceErrorOptions } from '../src/util/errors.js';
import { VIR_ERROR_NAMES } from './libvirt/constants.js';

/**
 * Why a call failed without libvirt saying so:
 * - `closed`: the connection was closed (or never opened) before the call ran;
 * - `timeout`: no answer within the connection's call timeout (the call may still be running in libvirt);
 * - `worker`: the connection's worker thread stopped or threw;
 * - `unavailable`: libvirt.so.0 cannot be loaded;
 * - `busy`: refused before calling libvirt because the domain already runs a job (code VIR_ERR_OPERATION_INVALID, as
 *   libvirt's own "another backup job is already running"; libvirt itself would first wait 30 s for the job's lock).
 */
export type LibvirtLocalFailure = 'closed' | 'timeout' | 'worker' | 'unavailable' | 'busy';

/** libvirt's `virError`, as the worker copied it (strings decoded, pointers dropped). */
export interface LibvirtErrorDetail {
  /** virErrorNumber (VIR_ERR_*); -1 for a local failure, except 68 for `timeout` and 55 for `busy`. */
  code: number;
  /** virErrorDomain (VIR_FROM_*); -1 for a local failure. */
  domain: number;
  message: string;
  level?: number;
  str1?: string | null;
  str2?: string | null;
  str3?: string | null;
  int1?: number;
  int2?: number;
  local?: LibvirtLocalFailure;
}

/** A libvirt call failed; `libvirtCode` is libvirt's VIR_ERR_* (42 = no such domain), `operation` the C function. */
export class LibvirtError extends FleeceError {
  /** virErrorNumber, e.g. VIR_ERR_NO_DOMAIN (42); -1 for a local failure (68 for `timeout`, 55 for `busy`). */
  readonly libvirtCode: number;
  /** virErrorDomain: the part of libvirt that raised it, e.g. VIR_FROM_QEMU (10); -1 for a local failure. */
  readonly libvirtDomain: number;
  /** libvirt's own message, verbatim. */
  readonly libvirtMessage: string;
  /** The libvirt function that failed, e.g. `virDomainBackupBegin`. */
  readonly operation: string;
  /** Set when the failure did not come from libvirt (see LibvirtLocalFailure). */
  readonly local: LibvirtLocalFailure | undefined;
  /** The whole virError as copied (str1–3, int1–2, level). */
  readonly detail: LibvirtErrorDetail;

  constructor(operation: string, detail: LibvirtErrorDetail, options: FleeceErrorOptions & { what?: string } = {}) {
    const what = options.what ? `${options.what}: ` : '';
    const name = VIR_ERROR_NAMES.get(detail.code);
    const tag = detail.local && detail.code < 0 ? '' : ` (${name ?? `code ${detail.code}`})`;
    super('LIBVIRT', `${what}${operation} failed: ${detail.message}${tag}`, options);
    this.libvirtCode = detail.code;
    this.libvirtDomain = detail.domain;
    this.libvirtMessage = detail.message;
    this.operation = operation;
    this.local = detail.local;
    this.detail = detail;
  }
}

/** Whether error is a LibvirtError, with one of the given codes when codes are given. */
export function isLibvirtError(error: unknown, ...codes: number[]): error is LibvirtError {
  return error instanceof LibvirtError && (codes.length === 0 || codes.includes(error.libvirtCode));
}
