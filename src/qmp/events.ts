// QMP events: scoped listeners that buffer from the moment they are registered, and plain handlers, behind one hub.
import { AbortedError } from '../util/errors.js';
import { getLogger } from '../util/logger.js';
import { QmpTimeoutError } from './errors.js';
import type { QmpEvent } from './messages.js';

const log = getLogger('qmp-events');

/** Per-call options of every awaiting QMP call. */
export interface CallOptions {
  /** Rejects with QmpTimeoutError after this many milliseconds. */
  timeoutMs?: number;
  /** Rejects with AbortedError when it fires. */
  signal?: AbortSignal;
}

export type EventPredicate = (event: QmpEvent) => boolean;

/** Events kept by one listener that nobody took yet; beyond this the oldest are dropped (and logged). */
export const MAX_BUFFERED_EVENTS = 10_000;

interface Waiter {
  predicate: EventPredicate | undefined;
  resolve(event: QmpEvent): void;
  reject(error: Error): void;
}

/**
 * Buffers the events it listens to from the moment it is created, so that an event QEMU sends between a command
 * and the wait for it is not missed. Register it before sending the command that causes the events; close it
 * when done (or use `waitFor`).
 */
export class QmpEventListener {
  readonly names: ReadonlySet<string>;
  readonly #onClose: (listener: QmpEventListener) => void;
  #buffer: QmpEvent[] = [];
  #waiters: Waiter[] = [];
  #closed = false;
  #failure: Error | undefined;

  /** Made by `QmpClient.listen` / `QmpEventHub.listen`; `names` may include '*' for every event. */
  constructor(names: string | string[], onClose: (listener: QmpEventListener) => void = () => {}) {
    this.names = new Set(typeof names === 'string' ? [names] : names);
    this.#onClose = onClose;
  }

  /** True when this listener wants events called `name`. */
  accepts(name: string): boolean {
    return this.names.has(name) || this.names.has('*');
  }

  /** Events buffered and not yet taken. */
  get buffered(): readonly QmpEvent[] {
    return this.#buffer;
  }

  /** Hands one event to the oldest waiter it matches, else buffers it. Called by the hub. */
  deliver(event: QmpEvent): void {
    if (this.#closed || !this.accepts(event.event)) return;
    const index = this.#waiters.findIndex((w) => w.predicate === undefined || safeMatch(w.predicate, event));
    if (index >= 0) {
      const [waiter] = this.#waiters.splice(index, 1);
      waiter!.resolve(event);
      return;
    }
    this.#buffer.push(event);
    if (this.#buffer.length > MAX_BUFFERED_EVENTS) {
      const dropped = this.#buffer.shift();
      log.debug({ event: dropped?.event }, 'event listener buffer full: dropped the oldest event');
    }
  }

  /** The connection is gone: pending and later `next()` calls reject with `error` once the buffer has no match. */
  fail(error: Error): void {
    if (this.#failure) return;
    this.#failure = error;
    const waiters = this.#waiters;
    this.#waiters = [];
    for (const waiter of waiters) waiter.reject(error);
  }

  /**
   * Takes the first buffered event matching `predicate` (events that do not match stay buffered), else waits
   * for one. No timeout unless `options.timeoutMs` is given.
   * @throws QmpTimeoutError after `timeoutMs`; AbortedError when `signal` fires or the listener is closed;
   *   QmpClosedError when the connection closes first.
   */
  next(predicate?: EventPredicate, options: CallOptions = {}): Promise<QmpEvent> {
    const index = this.#buffer.findIndex((e) => predicate === undefined || safeMatch(predicate, e));
    if (index >= 0 && !this.#closed) {
      const [event] = this.#buffer.splice(index, 1);
      return Promise.resolve(event!);
    }
    if (this.#closed) {
      return Promise.reject(new AbortedError(`the listener for QMP events ${this.#label()} is closed`));
    }
    if (this.#failure) return Promise.reject(this.#failure);
    const { signal, timeoutMs } = options;
    if (signal?.aborted) {
      return Promise.reject(
        new AbortedError(`waiting for QMP event ${this.#label()} was aborted`, { cause: signal.reason }),
      );
    }
    return new Promise<QmpEvent>((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined;
      const cleanup = (): void => {
        if (timer) clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
      };
      const waiter: Waiter = {
        predicate,
        resolve: (event) => {
          cleanup();
          resolve(event);
        },
        reject: (error) => {
          cleanup();
          reject(error);
        },
      };
      const drop = (error: Error): void => {
        const at = this.#waiters.indexOf(waiter);
        if (at >= 0) this.#waiters.splice(at, 1);
        waiter.reject(error);
      };
      const onAbort = (): void =>
        drop(new AbortedError(`waiting for QMP event ${this.#label()} was aborted`, { cause: signal?.reason }));
      signal?.addEventListener('abort', onAbort, { once: true });
      if (timeoutMs !== undefined) {
        timer = setTimeout(() => drop(new QmpTimeoutError(this.#label(), timeoutMs, { kind: 'event' })), timeoutMs);
      }
      this.#waiters.push(waiter);
    });
  }

  /** Stops listening; pending `next()` calls reject with AbortedError; idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#buffer = [];
    const waiters = this.#waiters;
    this.#waiters = [];
    for (const waiter of waiters) {
      waiter.reject(new AbortedError(`the listener for QMP events ${this.#label()} was closed while waiting`));
    }
    this.#onClose(this);
  }

  [Symbol.dispose](): void {
    this.close();
  }

  #label(): string {
    return [...this.names].join('|');
  }
}

function safeMatch(predicate: EventPredicate, event: QmpEvent): boolean {
  try {
    return predicate(event);
  } catch (error) {
    log.debug({ err: error, event: event.event }, 'event predicate threw; treated as no match');
    return false;
  }
}

/**
 * Routes events to handlers and listeners. The QMP client owns one; fakes of `QmpExecutor` in unit tests can own
 * one too and `dispatch` scripted events.
 */
export class QmpEventHub {
  readonly #handlers = new Map<string, Set<(event: QmpEvent) => void>>();
  readonly #listeners = new Set<QmpEventListener>();
  #failure: Error | undefined;

  /** Delivers one event to every matching handler (exceptions are logged, never thrown) and listener. */
  dispatch(event: QmpEvent): void {
    for (const key of [event.event, '*']) {
      const handlers = this.#handlers.get(key);
      if (!handlers) continue;
      for (const handler of [...handlers]) {
        try {
          handler(event);
        } catch (error) {
          log.debug({ err: error, event: event.event }, 'QMP event handler threw; ignored');
        }
      }
    }
    for (const listener of [...this.#listeners]) listener.deliver(event);
  }

  /** Calls `handler` for each event called `name` ('*': every event); returns the unsubscribe function. */
  on(name: string, handler: (event: QmpEvent) => void): () => void {
    let handlers = this.#handlers.get(name);
    if (!handlers) {
      handlers = new Set();
      this.#handlers.set(name, handlers);
    }
    handlers.add(handler);
    return () => {
      handlers.delete(handler);
    };
  }

  /** A listener buffering the named events from now on. After `fail`, its `next()` rejects with the failure. */
  listen(names: string | string[]): QmpEventListener {
    const listener = new QmpEventListener(names, (l) => this.#listeners.delete(l));
    if (this.#failure) listener.fail(this.#failure);
    else this.#listeners.add(listener);
    return listener;
  }

  /**
   * The next event called `name` (matching `predicate`) from now on.
   * @throws QmpTimeoutError, AbortedError, or the hub's failure (QmpClosedError for a client).
   */
  async waitFor(name: string, predicate?: EventPredicate, options?: CallOptions): Promise<QmpEvent> {
    const listener = this.listen(name);
    try {
      return await listener.next(predicate, options);
    } finally {
      listener.close();
    }
  }

  /** Fails every listener, present and future (the connection is gone). */
  fail(error: Error): void {
    this.#failure ??= error;
    for (const listener of this.#listeners) listener.fail(error);
  }
}
