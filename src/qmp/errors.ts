// The QMP branch of fleece's error tree: connect, closed, timeout, command (QEMU's error reply) and protocol errors.
//
//   FleeceError
//    ├── QmpConnectError   'QMP_CONNECT'   the socket could not be opened, or the greeting/negotiation failed
//    ├── QmpClosedError    'QMP_CLOSED'    the connection is gone (QEMU exited, crashed, or the client was closed)
//    ├── QmpTimeoutError   'QMP_TIMEOUT'   no reply (or event) within the time allowed
//    ├── QmpError          'QMP_COMMAND'   QEMU answered a command with an error (carries QEMU's error class)
//    └── QmpProtocolError  'QMP_PROTOCOL'  the peer broke the protocol (not JSON, no greeting, ...)
// An AbortSignal that fires rejects with AbortedError (src/util/errors.ts).
import { FleeceError, type FleeceErrorOptions } from '../util/errors.js';

/** The socket could not be connected, or QEMU's greeting / capability negotiation failed. */
export class QmpConnectError extends FleeceError {
  readonly socket: string;

  constructor(socket: string, message: string, options: FleeceErrorOptions = {}) {
    super('QMP_CONNECT', message, options);
    this.socket = socket;
  }
}

/** The QMP connection is closed: QEMU exited or crashed, the connection dropped, or the client was closed. */
export class QmpClosedError extends FleeceError {
  readonly socket: string;

  constructor(socket: string, detail: string, options: FleeceErrorOptions = {}) {
    super(
      'QMP_CLOSED',
      `QMP connection to ${socket} is closed (${detail})`,
      { hint: 'QEMU exited or the connection dropped; check that QEMU is running and reconnect', ...options },
    );
    this.socket = socket;
  }
}

/** A command got no reply, or an awaited event did not come, in time. */
export class QmpTimeoutError extends FleeceError {
  /** The command name, or the event name(s) waited for. */
  readonly command: string;
  readonly timeoutMs: number;

  constructor(
    command: string,
    timeoutMs: number,
    options: FleeceErrorOptions & { socket?: string; kind?: 'command' | 'event' } = {},
  ) {
    const where = options.socket ? ` on ${options.socket}` : '';
    const message =
      options.kind === 'event'
        ? `no QMP event ${command} arrived within ${timeoutMs} ms${where}`
        : `QMP command ${command} got no reply within ${timeoutMs} ms${where}`;
    super('QMP_TIMEOUT', message, {
      hint: 'QEMU may be hung or very busy; raise the timeout or check the QEMU process',
      ...options,
    });
    this.command = command;
    this.timeoutMs = timeoutMs;
  }
}

/** QEMU answered a command with `{"error": {"class", "desc"}}`. */
export class QmpError extends FleeceError {
  /** QEMU's error class, e.g. 'GenericError', 'DeviceNotFound', 'CommandNotFound'. */
  readonly errorClass: string;
  /** QEMU's human-readable description. */
  readonly desc: string;
  readonly command: string;
  readonly args: Record<string, unknown> | undefined;

  constructor(
    command: string,
    args: Record<string, unknown> | undefined,
    error: { class: string; desc: string },
    options: FleeceErrorOptions = {},
  ) {
    super('QMP_COMMAND', `QMP ${command} failed: ${error.desc} (${error.class})`, options);
    this.errorClass = error.class;
    this.desc = error.desc;
    this.command = command;
    this.args = args;
  }
}

/** The peer does not speak QMP as expected (a line that is not JSON, a missing greeting, a malformed message). */
export class QmpProtocolError extends FleeceError {
  constructor(message: string, options: FleeceErrorOptions = {}) {
    super('QMP_PROTOCOL', message, options);
  }
}
