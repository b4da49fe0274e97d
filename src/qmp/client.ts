// The QMP client: greeting and capability negotiation, commands matched to replies by id, events, and an explicit run state.
import { AbortedError, FleeceError } from '../util/errors.js';
import { getLogger, type Logger } from '../util/logger.js';
import { QmpClosedError, QmpConnectError, QmpError, QmpProtocolError, QmpTimeoutError } from './errors.js';
import { QmpEventHub, type CallOptions, type EventPredicate, type QmpEventListener } from './events.js';
import {
  isErrorMessage,
  isEventMessage,
  isGreetingMessage,
  isReturnMessage,
  toEvent,
  type QmpEvent,
  type QmpGreeting,
} from './messages.js';
import { transitionRunState, type QmpRunState } from './run-state.js';
import { describeAddress, SocketTransport, type MessageTransport, type QmpAddress } from './transport.js';

export type { QmpAddress } from './transport.js';
export type { CallOptions } from './events.js';
export type { QmpEvent, QmpGreeting } from './messages.js';

/** Default time a command may take before its promise rejects with QmpTimeoutError. */
export const DEFAULT_COMMAND_TIMEOUT_MS = 30_000;
/** Default time `connect` allows for the socket, the greeting and `qmp_capabilities` together. */
export const DEFAULT_CONNECT_TIMEOUT_MS = 10_000;

/** What higher layers need from a QMP connection; unit tests pass a replaying fake instead of a client. */
export interface QmpExecutor {
  execute<T = unknown>(command: string, args?: Record<string, unknown>, options?: CallOptions): Promise<T>;
  listen(names: string | string[]): QmpEventListener;
  waitFor(name: string, predicate?: EventPredicate, options?: CallOptions): Promise<QmpEvent>;
  on(name: string, handler: (e: QmpEvent) => void): () => void;
}

export interface ConnectOptions {
  /** Covers the socket connect, the greeting and the negotiation; default 10 s. */
  timeoutMs?: number;
  signal?: AbortSignal;
  /** A label for logs and command ids (e.g. the VM name). */
  name?: string;
  /** Sees every message in wire order ('send': a command, 'receive': greeting, reply or event); for recording transcripts. */
  trace?: QmpTrace;
}

/** A tap on the wire; must not throw (exceptions are logged and ignored). */
export type QmpTrace = (direction: 'send' | 'receive', message: Record<string, unknown>) => void;

interface PendingCall {
  command: string;
  args: Record<string, unknown> | undefined;
  resolve(value: unknown): void;
  reject(error: Error): void;
}

let clientCounter = 0;

/**
 * One connection to a QMP monitor. Connect with `QmpClient.connect`; every public call is guarded by the run
 * state: once the connection is closed (by `close()`, by QEMU exiting, or by a dropped socket) every pending call
 * and pending event wait rejects with QmpClosedError, and later calls reject at once.
 */
export class QmpClient implements QmpExecutor {
  readonly address: QmpAddress;
  readonly #socketName: string;
  readonly #idPrefix: string;
  readonly #log: Logger;
  readonly #events = new QmpEventHub();
  readonly #pending = new Map<string, PendingCall>();
  readonly #closeHandlers = new Set<(error: Error) => void>();
  #state: QmpRunState = 'idle';
  #transport: MessageTransport | undefined;
  #greeting: QmpGreeting | undefined;
  #greetingWaiter: { resolve(g: QmpGreeting): void; reject(e: Error): void } | undefined;
  #nextId = 1;
  #closedError: QmpClosedError | undefined;
  #closeDetail: string | undefined;
  #closingByUs = false;
  #closePromise: Promise<void> | undefined;

  readonly #trace: QmpTrace | undefined;

  private constructor(address: QmpAddress, name: string | undefined, trace: QmpTrace | undefined) {
    this.address = address;
    this.#trace = trace;
    this.#socketName = describeAddress(address);
    clientCounter += 1;
    this.#idPrefix = `${name ?? 'fleece'}-${clientCounter}-`;
    this.#log = getLogger('qmp').child({ socket: this.#socketName, ...(name ? { client: name } : {}) });
  }

  /**
   * Connects, reads the greeting and negotiates capabilities (`qmp_capabilities`).
   * @throws QmpConnectError when the socket cannot be opened, the greeting is missing or negotiation fails
   *   (including a timeout); AbortedError when `signal` fires.
   */
  static async connect(address: QmpAddress, options: ConnectOptions = {}): Promise<QmpClient> {
    const client = new QmpClient(address, options.name, options.trace);
    await client.#connect(options);
    return client;
  }

  /** The server's greeting (QEMU version and capabilities). */
  get greeting(): QmpGreeting {
    if (!this.#greeting) throw new FleeceError('INTERNAL', 'QMP greeting read before the client connected');
    return this.#greeting;
  }

  get state(): QmpRunState {
    return this.#state;
  }

  /** True once the connection is closing or closed; no call will succeed any more. */
  get closed(): boolean {
    return this.#state === 'disconnecting' || this.#state === 'closed';
  }

  /**
   * Runs one command and resolves with its `return` value. Several calls may be in flight; replies are matched by id.
   * @throws QmpError when QEMU answers with an error; QmpTimeoutError after `timeoutMs` (default 30 s; a late
   *   reply is dropped); AbortedError when `signal` fires (QEMU may still run the command); QmpClosedError when
   *   the connection is or becomes closed.
   */
  execute<T = unknown>(command: string, args?: Record<string, unknown>, options: CallOptions = {}): Promise<T> {
    if (this.#state !== 'running') return Promise.reject(this.#notRunning(command));
    return this.#call<T>(command, args, options);
  }

  /** Starts buffering the named events now (register before sending the command that causes them). */
  listen(names: string | string[]): QmpEventListener {
    return this.#events.listen(names);
  }

  /**
   * The next event called `name` that matches `predicate`, from now on (use `listen` when the command that causes
   * it is sent first). No timeout unless given.
   * @throws QmpTimeoutError, AbortedError, QmpClosedError.
   */
  waitFor(name: string, predicate?: EventPredicate, options?: CallOptions): Promise<QmpEvent> {
    return this.#events.waitFor(name, predicate, options);
  }

  /** Calls `handler` for every event called `name` ('*': all events); returns the unsubscribe function. */
  on(name: string, handler: (e: QmpEvent) => void): () => void {
    return this.#events.on(name, handler);
  }

  /** Calls `handler` once with the QmpClosedError when the connection closes (at once if it already has). */
  onClose(handler: (error: Error) => void): () => void {
    if (this.#closedError) {
      const error = this.#closedError;
      queueMicrotask(() => handler(error));
      return () => {};
    }
    this.#closeHandlers.add(handler);
    return () => {
      this.#closeHandlers.delete(handler);
    };
  }

  /** Closes the connection; pending calls reject with QmpClosedError; idempotent; never rejects. */
  close(): Promise<void> {
    if (this.#closePromise) return this.#closePromise;
    if (this.#state === 'closed') return Promise.resolve();
    this.#closingByUs = true;
    this.#setState('disconnecting');
    const transport = this.#transport;
    this.#closePromise = transport ? transport.close() : Promise.resolve();
    if (!transport) this.#handleClose(undefined);
    return this.#closePromise;
  }

  async #connect(options: ConnectOptions): Promise<void> {
    const timeoutMs = options.timeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS;
    const timeout = AbortSignal.timeout(timeoutMs);
    const signal = options.signal ? AbortSignal.any([options.signal, timeout]) : timeout;
    this.#setState('connecting');
    this.#log.debug('connecting');
    try {
      const greeting = new Promise<QmpGreeting>((resolve, reject) => {
        this.#greetingWaiter = { resolve, reject };
      });
      greeting.catch(() => {});
      this.#transport = await SocketTransport.open(
        this.address,
        { onMessage: (m) => this.#handleMessage(m), onClose: (e) => this.#handleClose(e) },
        signal,
      );
      this.#greeting = await raceSignal(greeting, signal);
      this.#log.debug({ version: this.#greeting.version }, 'greeting');
      await this.#call('qmp_capabilities', undefined, { signal });
      this.#setState('running');
    } catch (error) {
      await this.#abandon();
      throw this.#connectFailure(error, timeout, timeoutMs, options.signal);
    }
  }

  #connectFailure(error: unknown, timeout: AbortSignal, timeoutMs: number, user: AbortSignal | undefined): Error {
    const name = this.#socketName;
    if (user?.aborted) {
      return new AbortedError(`connecting to the QMP socket ${name} was aborted`, { cause: user.reason });
    }
    if (error instanceof QmpConnectError) return error;
    if (timeout.aborted) {
      return new QmpConnectError(name, `QMP socket ${name} did not complete the handshake within ${timeoutMs} ms`, {
        cause: error,
        hint: 'check that QEMU is running and that no other client holds this monitor (one client per socket)',
      });
    }
    const detail = error instanceof Error ? error.message : String(error);
    return new QmpConnectError(name, `QMP handshake on ${name} failed: ${detail}`, {
      cause: error,
      hint: 'check that the socket is a QEMU QMP monitor (-qmp or --monitor), not HMP or another service',
    });
  }

  async #abandon(): Promise<void> {
    if (this.#state === 'connecting' || this.#state === 'idle') this.#setState('disconnecting');
    this.#closingByUs = true;
    if (this.#transport) await this.#transport.close(true);
    else this.#handleClose(undefined);
  }

  #call<T>(command: string, args: Record<string, unknown> | undefined, options: CallOptions): Promise<T> {
    const { signal, timeoutMs = DEFAULT_COMMAND_TIMEOUT_MS } = options;
    if (signal?.aborted) {
      return Promise.reject(new AbortedError(`QMP command ${command} was aborted`, { cause: signal.reason }));
    }
    const id = `${this.#idPrefix}${this.#nextId++}`;
    const message = args === undefined ? { execute: command, id } : { execute: command, arguments: args, id };
    return new Promise<T>((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined;
      const settle = (): void => {
        this.#pending.delete(id);
        if (timer) clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
      };
      const onAbort = (): void => {
        settle();
        this.#log.debug({ id, command }, 'command aborted; a late reply will be dropped');
        reject(new AbortedError(`QMP command ${command} was aborted`, { cause: signal?.reason }));
      };
      this.#pending.set(id, {
        command,
        args,
        resolve: (value) => {
          settle();
          resolve(value as T);
        },
        reject: (error) => {
          settle();
          reject(error);
        },
      });
      signal?.addEventListener('abort', onAbort, { once: true });
      timer = setTimeout(() => {
        settle();
        this.#log.debug({ id, command, timeoutMs }, 'command timed out; a late reply will be dropped');
        reject(new QmpTimeoutError(command, timeoutMs, { socket: this.#socketName }));
      }, timeoutMs);
      if (this.#log.isLevelEnabled('debug')) this.#log.debug({ id, command, args }, 'command');
      this.#tap('send', message);
      try {
        this.#transport!.send(message);
      } catch (error) {
        this.#pending.get(id)?.reject(this.#closed(command, error));
      }
    });
  }

  #tap(direction: 'send' | 'receive', message: Record<string, unknown>): void {
    if (!this.#trace) return;
    try {
      this.#trace(direction, message);
    } catch (error) {
      this.#log.debug({ err: error }, 'trace callback threw; ignored');
    }
  }

  #handleMessage(message: Record<string, unknown>): void {
    this.#tap('receive', message);
    if (isEventMessage(message)) {
      const event = toEvent(message);
      if (this.#log.isLevelEnabled('debug')) this.#log.debug({ event }, 'event');
      this.#events.dispatch(event);
      return;
    }
    if (isReturnMessage(message) || isErrorMessage(message)) {
      const id = typeof message.id === 'string' ? message.id : undefined;
      const call = id === undefined ? undefined : this.#pending.get(id);
      if (this.#log.isLevelEnabled('debug')) this.#log.debug({ reply: message, matched: call !== undefined }, 'reply');
      if (!call) {
        this.#log.debug({ id: message.id }, 'reply matches no pending command (timed out or aborted); dropped');
        return;
      }
      if (isErrorMessage(message)) {
        call.reject(new QmpError(call.command, call.args, message.error));
      } else {
        call.resolve(message.return);
      }
      return;
    }
    if (isGreetingMessage(message)) {
      const waiter = this.#greetingWaiter;
      this.#greetingWaiter = undefined;
      if (waiter && this.#state === 'connecting') {
        waiter.resolve(message.QMP);
        return;
      }
    }
    this.#log.debug({ message }, 'unexpected QMP message; ignored');
    if (this.#greetingWaiter) {
      this.#greetingWaiter.reject(
        new QmpProtocolError(`QMP socket ${this.#socketName} sent ${JSON.stringify(message).slice(0, 200)} instead of a greeting`),
      );
      this.#greetingWaiter = undefined;
    }
  }

  #handleClose(error: Error | undefined): void {
    if (this.#state === 'closed') return;
    if (this.#state !== 'disconnecting') this.#setState('disconnecting');
    const detail = this.#closingByUs
      ? 'closed by this client'
      : error
        ? `connection failed: ${error.message}`
        : 'QEMU closed the connection';
    const closedError = new QmpClosedError(this.#socketName, detail, error ? { cause: error } : {});
    this.#closedError = closedError;
    this.#closeDetail = detail;
    this.#log.debug({ detail, pending: this.#pending.size }, 'connection closed');
    this.#greetingWaiter?.reject(closedError);
    this.#greetingWaiter = undefined;
    for (const call of [...this.#pending.values()]) {
      call.reject(
        new QmpClosedError(this.#socketName, `${detail}, while waiting for the reply to ${call.command}`, {
          cause: error,
        }),
      );
    }
    this.#pending.clear();
    this.#events.fail(closedError);
    this.#setState('closed');
    for (const handler of [...this.#closeHandlers]) {
      try {
        handler(closedError);
      } catch (handlerError) {
        this.#log.debug({ err: handlerError }, 'onClose handler threw; ignored');
      }
    }
    this.#closeHandlers.clear();
  }

  #notRunning(command: string): Error {
    const why = this.#closeDetail ?? `the client is ${this.#state}`;
    return new QmpClosedError(this.#socketName, `${command} was not sent: ${why}`, { cause: this.#closedError });
  }

  #closed(command: string, cause: unknown): QmpClosedError {
    return new QmpClosedError(this.#socketName, `${command} could not be sent`, { cause });
  }

  #setState(to: QmpRunState): void {
    this.#state = transitionRunState(this.#state, to);
  }
}

function raceSignal<T>(promise: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) return Promise.reject(signal.reason);
  return new Promise<T>((resolve, reject) => {
    const onAbort = (): void => reject(signal.reason);
    signal.addEventListener('abort', onAbort, { once: true });
    promise.then(
      (value) => {
        signal.removeEventListener('abort', onAbort);
        resolve(value);
      },
      (error) => {
        signal.removeEventListener('abort', onAbort);
        reject(error);
      },
    );
  });
}
