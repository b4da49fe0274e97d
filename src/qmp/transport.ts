// The byte layer under the QMP client: a unix or TCP socket, framed into JSON messages, with one close notification.
import { createConnection, type Socket } from 'node:net';
import { encodeMessage, QmpDecoder } from './framing.js';
import { QmpConnectError } from './errors.js';
import { AbortedError } from '../util/errors.js';

/** Where a QMP monitor listens: a unix socket path, or a TCP host and port. */
export type QmpAddress = { path: string } | { host: string; port: number };

/** A readable name for an address, used in every error message. */
export function describeAddress(address: QmpAddress): string {
  return 'path' in address ? address.path : `${address.host}:${address.port}`;
}

export interface TransportHandlers {
  /** One parsed message, in arrival order. */
  onMessage(message: Record<string, unknown>): void;
  /** Called exactly once when the connection is gone; `error` says why when it was not a clean EOF. */
  onClose(error: Error | undefined): void;
}

/** A connected message stream; the QMP client depends only on this. */
export interface MessageTransport {
  /** Sends one message. @throws Error when the transport is already closed. */
  send(message: object): void;
  /** Closes the connection (at once when `force`, else after pending writes) and resolves once closed; idempotent; never rejects. */
  close(force?: boolean): Promise<void>;
}

/** A socket carrying newline-delimited JSON. */
export class SocketTransport implements MessageTransport {
  readonly #socket: Socket;
  readonly #closed: Promise<void>;
  #isClosed = false;

  private constructor(socket: Socket, handlers: TransportHandlers) {
    this.#socket = socket;
    const decoder = new QmpDecoder();
    let failure: Error | undefined;
    this.#closed = new Promise((resolve) => {
      socket.once('close', () => {
        this.#isClosed = true;
        resolve();
        handlers.onClose(failure);
      });
    });
    socket.on('error', (error) => {
      failure ??= error;
    });
    socket.on('data', (chunk: Buffer) => {
      if (this.#isClosed || socket.destroyed) return;
      let messages: Record<string, unknown>[];
      try {
        messages = decoder.push(chunk);
      } catch (error) {
        failure ??= error as Error;
        socket.destroy();
        return;
      }
      for (const message of messages) {
        if (socket.destroyed) return;
        handlers.onMessage(message);
      }
    });
  }

  /**
   * Connects to `address`.
   * @throws QmpConnectError when the socket cannot be connected; AbortedError when `signal` fires first.
   */
  static open(address: QmpAddress, handlers: TransportHandlers, signal?: AbortSignal): Promise<SocketTransport> {
    const name = describeAddress(address);
    return new Promise((resolve, reject) => {
      if (signal?.aborted) {
        reject(abortReason(signal, name));
        return;
      }
      const socket = 'path' in address ? createConnection({ path: address.path }) : createConnection(address);
      const onAbort = (): void => {
        socket.destroy();
        reject(abortReason(signal!, name));
      };
      const onError = (error: NodeJS.ErrnoException): void => {
        signal?.removeEventListener('abort', onAbort);
        socket.destroy();
        reject(
          new QmpConnectError(name, `cannot connect to the QMP socket ${name}: ${error.code ?? error.message}`, {
            cause: error,
            hint: 'check that QEMU is running with -qmp on this socket and that no other client holds it',
          }),
        );
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      socket.once('error', onError);
      socket.once('connect', () => {
        signal?.removeEventListener('abort', onAbort);
        socket.removeListener('error', onError);
        resolve(new SocketTransport(socket, handlers));
      });
    });
  }

  send(message: object): void {
    if (this.#isClosed || this.#socket.destroyed || !this.#socket.writable) {
      throw new Error('the QMP socket is closed');
    }
    this.#socket.write(encodeMessage(message));
  }

  async close(force = false): Promise<void> {
    if (!this.#isClosed) {
      if (force) this.#socket.destroy();
      else this.#socket.end();
      const timer = setTimeout(() => this.#socket.destroy(), 1000);
      await this.#closed;
      clearTimeout(timer);
    }
  }
}

function abortReason(signal: AbortSignal, name: string): Error {
  const reason: unknown = signal.reason;
  if (reason instanceof Error && reason.name === 'TimeoutError') return reason;
  return new AbortedError(`connecting to the QMP socket ${name} was aborted`, { cause: reason });
}
