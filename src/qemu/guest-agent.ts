// A minimal QEMU guest agent client (JSON over a unix socket): sync, then guest-fsfreeze-freeze / -thaw.
import { connect, type Socket } from 'node:net';
import { AbortedError, FleeceError } from '../util/errors.js';

const DEFAULT_TIMEOUT_MS = 60_000;

/** The guest agent did not answer, or answered with an error. */
export class GuestAgentError extends FleeceError {
  constructor(message: string, options: { cause?: unknown; hint?: string } = {}) {
    super('QMP_COMMAND', message, options);
  }
}

/** One connection to a guest agent socket (`-chardev socket,path=…,server=on,wait=off,id=qga0 -device virtserialport,chardev=qga0,name=org.qemu.guest_agent.0`). */
export class GuestAgentClient {
  #buffer = '';
  #waiter: ((line: string | Error) => void) | undefined;
  #closed: Error | undefined;

  private constructor(private readonly socket: Socket, private readonly path: string) {
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => {
      // The sync reply is preceded by a 0xFF byte (not valid UTF-8: it arrives as U+FFFD); drop it.
      this.#buffer += chunk.replace(/[\uFFFD\xFF]/g, '');
      this.#drain();
    });
    const onEnd = (error?: Error) => {
      this.#closed = error ?? new GuestAgentError(`the guest agent socket ${path} closed`);
      this.#waiter?.(this.#closed);
      this.#waiter = undefined;
    };
    socket.on('error', onEnd);
    socket.on('close', () => onEnd());
  }

  #drain(): void {
    const nl = this.#buffer.indexOf('\n');
    if (nl < 0 || !this.#waiter) return;
    const line = this.#buffer.slice(0, nl).trim();
    this.#buffer = this.#buffer.slice(nl + 1);
    if (line === '') return this.#drain();
    const waiter = this.#waiter;
    this.#waiter = undefined;
    waiter(line);
  }

  /** Connects and synchronises (guest-sync-delimited). Throws GuestAgentError naming the socket. */
  static async connect(path: string, options: { signal?: AbortSignal; timeoutMs?: number } = {}): Promise<GuestAgentClient> {
    const socket = await new Promise<Socket>((resolve, reject) => {
      const s = connect(path);
      s.once('connect', () => resolve(s));
      s.once('error', (error) => reject(new GuestAgentError(`cannot connect to the guest agent socket ${path}: ${error.message}`, {
        cause: error, hint: 'check the path given with --guest-agent and that QEMU was started with a guest agent channel',
      })));
    });
    const client = new GuestAgentClient(socket, path);
    try {
      const id = Math.floor(Math.random() * 2 ** 31);
      // Discard stale replies of an earlier client: keep reading until our sync id comes back.
      socket.write(Buffer.from([0xff]));
      const sent = Date.now();
      socket.write(`${JSON.stringify({ execute: 'guest-sync-delimited', arguments: { id } })}\n`);
      for (;;) {
        const reply = await client.#read(options.signal, (options.timeoutMs ?? 10_000) - (Date.now() - sent));
        if ((reply as { return?: unknown }).return === id) break;
      }
      return client;
    } catch (error) {
      client.close();
      throw error;
    }
  }

  async #read(signal: AbortSignal | undefined, timeoutMs: number): Promise<Record<string, unknown>> {
    if (this.#closed) throw this.#closed;
    const line = await new Promise<string>((resolve, reject) => {
      const timer = setTimeout(() => finish(new GuestAgentError(`the guest agent on ${this.path} did not answer within ${Math.round(timeoutMs / 1000)} s`, {
        hint: 'check that the guest agent runs in the guest (qemu-guest-agent service)',
      })), Math.max(timeoutMs, 1));
      const onAbort = () => finish(new AbortedError('waiting for the guest agent was aborted'));
      const finish = (value: string | Error) => {
        clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
        this.#waiter = undefined;
        if (value instanceof Error) reject(value);
        else resolve(value);
      };
      if (signal?.aborted) return onAbort();
      signal?.addEventListener('abort', onAbort, { once: true });
      this.#waiter = finish;
      this.#drain();
    });
    try {
      return JSON.parse(line) as Record<string, unknown>;
    } catch (error) {
      throw new GuestAgentError(`the guest agent on ${this.path} sent a line that is not JSON: ${line.slice(0, 200)}`, { cause: error });
    }
  }

  /** Runs one command. Throws GuestAgentError with the agent's error description, AbortedError. */
  async execute<T = unknown>(command: string, args?: Record<string, unknown>, options: { signal?: AbortSignal; timeoutMs?: number } = {}): Promise<T> {
    this.socket.write(`${JSON.stringify(args ? { execute: command, arguments: args } : { execute: command })}\n`);
    const reply = await this.#read(options.signal, options.timeoutMs ?? DEFAULT_TIMEOUT_MS);
    if ('error' in reply) {
      const error = reply.error as { class?: string; desc?: string };
      throw new GuestAgentError(`guest agent command ${command} failed: ${error.desc ?? error.class ?? 'unknown error'}`);
    }
    return reply.return as T;
  }

  /** Freezes the guest's file systems; returns how many. */
  freeze(options: { signal?: AbortSignal } = {}): Promise<number> {
    return this.execute<number>('guest-fsfreeze-freeze', undefined, options);
  }

  /** Thaws the guest's file systems; returns how many. */
  thaw(): Promise<number> {
    return this.execute<number>('guest-fsfreeze-thaw');
  }

  close(): void {
    this.socket.destroy();
  }
}
