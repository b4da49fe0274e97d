// A replaying fake QMP monitor for unit tests of higher layers: answers commands from a recorded transcript and
// emits its events in their recorded places, failing loudly when the code under test strays from the script.
import { isDeepStrictEqual } from 'node:util';
import type { QmpExecutor } from '../../src/qmp/client.js';
import { QmpClosedError, QmpError } from '../../src/qmp/errors.js';
import { QmpEventHub, type CallOptions, type EventPredicate, type QmpEventListener } from '../../src/qmp/events.js';
import type { QmpEvent } from '../../src/qmp/messages.js';
import { AbortedError } from '../../src/util/errors.js';
import { loadTranscript, type TranscriptEntry } from './qmp-transcript.js';

/** How a command's arguments are compared with the recorded ones. */
export type ArgumentMatcher =
  | 'exact'
  | 'ignore'
  | ((expected: Record<string, unknown> | undefined, actual: Record<string, unknown> | undefined, command: string) => boolean);

export interface ReplayOptions {
  /** Default 'exact' (deep equality). */
  matchArguments?: ArgumentMatcher;
  /** Used in error messages. */
  name?: string;
}

/** Thrown (as the rejection of `execute`) when the code under test sends something the transcript does not expect. */
export class ReplayMismatchError extends Error {}

/**
 * Implements QmpExecutor over a transcript. Each `execute` must match the next recorded command; the events recorded
 * between that command and its reply are dispatched before the reply resolves, those after the reply are dispatched
 * on the next macrotask (so a listener registered before the command sees all of them, as with real QEMU).
 */
export class ReplayQmp implements QmpExecutor {
  readonly calls: Array<{ command: string; args: Record<string, unknown> | undefined }> = [];
  readonly #entries: TranscriptEntry[];
  readonly #match: ArgumentMatcher;
  readonly #name: string;
  readonly #hub = new QmpEventHub();
  #position = 0;
  #closed = false;

  constructor(entries: TranscriptEntry[], options: ReplayOptions = {}) {
    this.#entries = entries;
    this.#match = options.matchArguments ?? 'exact';
    this.#name = options.name ?? 'replay';
    // Events recorded before the first command are emitted as soon as someone could listen.
    setImmediate(() => this.#flushEvents());
  }

  /** @throws Error when the file cannot be read or parsed. */
  static async fromFile(path: string, options: ReplayOptions = {}): Promise<ReplayQmp> {
    return new ReplayQmp(await loadTranscript(path), { name: path, ...options });
  }

  /** Entries not replayed yet. */
  get remaining(): readonly TranscriptEntry[] {
    return this.#entries.slice(this.#position);
  }

  /** @throws ReplayMismatchError when commands of the transcript were never sent. */
  assertDone(): void {
    const left = this.remaining.filter((e) => e.kind === 'command');
    if (left.length > 0) {
      throw new ReplayMismatchError(
        `${this.#name}: ${left.length} recorded command(s) were never sent, next: ${JSON.stringify(left[0])}`,
      );
    }
  }

  async execute<T = unknown>(command: string, args?: Record<string, unknown>, options: CallOptions = {}): Promise<T> {
    if (this.#closed) throw new QmpClosedError(this.#name, `${command} was not sent: the replay was closed`);
    if (options.signal?.aborted) throw new AbortedError(`QMP command ${command} was aborted`);
    this.calls.push({ command, args });
    this.#flushEvents();
    const expected = this.#entries[this.#position];
    if (!expected || expected.kind !== 'command') {
      throw new ReplayMismatchError(
        `${this.#name}: unexpected command ${command} ${JSON.stringify(args ?? {})}; the transcript ${expected ? `expects ${JSON.stringify(expected)}` : 'has ended'}`,
      );
    }
    if (expected.execute !== command || !this.#argumentsMatch(expected.arguments, args, command)) {
      throw new ReplayMismatchError(
        `${this.#name}: sent ${command} ${JSON.stringify(args ?? {})} but the transcript expects ${expected.execute} ${JSON.stringify(expected.arguments ?? {})}`,
      );
    }
    this.#position += 1;
    this.#flushEvents();
    const reply = this.#entries[this.#position];
    if (!reply || (reply.kind !== 'return' && reply.kind !== 'error')) {
      throw new ReplayMismatchError(`${this.#name}: the transcript has no reply to ${command}`);
    }
    this.#position += 1;
    setImmediate(() => this.#flushEvents());
    if (reply.kind === 'error') throw new QmpError(command, args, reply.error);
    return reply.value as T;
  }

  listen(names: string | string[]): QmpEventListener {
    return this.#hub.listen(names);
  }

  waitFor(name: string, predicate?: EventPredicate, options?: CallOptions): Promise<QmpEvent> {
    return this.#hub.waitFor(name, predicate, options);
  }

  on(name: string, handler: (e: QmpEvent) => void): () => void {
    return this.#hub.on(name, handler);
  }

  /** Simulates the connection dropping: pending and later waits and calls reject with QmpClosedError. */
  close(): void {
    this.#closed = true;
    this.#hub.fail(new QmpClosedError(this.#name, 'the replay was closed'));
  }

  #flushEvents(): void {
    for (;;) {
      const entry = this.#entries[this.#position];
      if (!entry || entry.kind !== 'event') return;
      this.#position += 1;
      this.#hub.dispatch(entry.event);
    }
  }

  #argumentsMatch(
    expected: Record<string, unknown> | undefined,
    actual: Record<string, unknown> | undefined,
    command: string,
  ): boolean {
    if (this.#match === 'ignore') return true;
    if (this.#match === 'exact') return isDeepStrictEqual(expected ?? {}, actual ?? {});
    return this.#match(expected, actual, command);
  }
}
