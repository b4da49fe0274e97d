// A minimal QEMU guest-agent client for tests and the demo (bare QEMU's `-chardev socket,…,server=on` on the host side):
// a guest-sync-delimited handshake that survives a guest still booting, then commands, guest-exec of shell scripts.
import { connect as netConnect, type Socket } from 'node:net';

const DEFAULT_READY_TIMEOUT_MS = 60_000;
const DEFAULT_EXEC_TIMEOUT_MS = 60_000;
const DEFAULT_COMMAND_TIMEOUT_MS = 30_000;
/** How long one guest-sync waits for its reply before another is sent (the agent may not run yet). */
const SYNC_RETRY_MS = 1_000;

export interface ExecResult {
  exitCode: number;
  stdout: string;
  stderr: string;
}

interface ExecStatus {
  exited: boolean;
  exitcode?: number;
  signal?: number;
  'out-data'?: string;
  'err-data'?: string;
}

type Reply = Record<string, unknown>;

/** One connection to a guest agent's unix socket. Commands run one at a time (calls are queued). */
export class GuestAgentShell {
  readonly #socket: Socket;
  readonly #path: string;
  #buffer: Buffer = Buffer.alloc(0);
  #lines: Reply[] = [];
  #waiter: (() => void) | undefined;
  #closed: Error | undefined;
  #synced = false;
  #queue: Promise<unknown> = Promise.resolve();

  private constructor(socket: Socket, path: string) {
    this.#socket = socket;
    this.#path = path;
    socket.on('data', (chunk: Buffer) => this.#receive(chunk));
    const onEnd = (error?: Error): void => {
      this.#closed ??= new Error(`the guest agent socket ${path} closed${error ? `: ${error.message}` : ''}`);
      this.#wake();
    };
    socket.on('error', onEnd);
    socket.on('close', () => onEnd());
  }

  /**
   * Opens the socket (retrying while QEMU has not created it yet), without talking to the agent: the guest may still be
   * booting; `waitReady` waits for the agent.
   * @throws Error naming the socket when it cannot be opened within `timeoutMs` (default 10 s).
   */
  static async connect(socket: string, options: { timeoutMs?: number } = {}): Promise<GuestAgentShell> {
    const deadline = Date.now() + (options.timeoutMs ?? 10_000);
    for (;;) {
      try {
        const s = await new Promise<Socket>((resolve, reject) => {
          const c = netConnect(socket);
          c.once('connect', () => {
            c.removeAllListeners('error');
            resolve(c);
          });
          c.once('error', reject);
        });
        return new GuestAgentShell(s, socket);
      } catch (error) {
        const code = (error as NodeJS.ErrnoException).code;
        if ((code !== 'ENOENT' && code !== 'ECONNREFUSED') || Date.now() >= deadline) {
          throw new Error(`cannot connect to the guest agent socket ${socket}: ${(error as Error).message}`, { cause: error });
        }
        await sleep(50);
      }
    }
  }

  /**
   * Waits until the agent answers guest-sync-delimited and guest-ping (the guest booted and qemu-ga runs).
   * @throws Error after `timeoutMs` (default 60 s), or when the socket closes (QEMU exited).
   */
  waitReady(timeoutMs = DEFAULT_READY_TIMEOUT_MS): Promise<void> {
    return this.#serial(async () => {
      const deadline = Date.now() + timeoutMs;
      await this.#sync(deadline);
      await this.#command('guest-ping', undefined, Math.max(1, deadline - Date.now()));
    });
  }

  /** Runs any agent command and returns its `return` value. @throws Error with the agent's error description. */
  execute<T = unknown>(command: string, args?: Record<string, unknown>, options: { timeoutMs?: number } = {}): Promise<T> {
    return this.#serial(async () => {
      if (!this.#synced) await this.#sync(Date.now() + (options.timeoutMs ?? DEFAULT_COMMAND_TIMEOUT_MS));
      return (await this.#command(command, args, options.timeoutMs ?? DEFAULT_COMMAND_TIMEOUT_MS)) as T;
    });
  }

  /**
   * Runs `/bin/sh -c script` in the guest (guest-exec with capture-output) and polls guest-exec-status until it exited.
   * exitCode is 128 + the signal when the script was killed by one.
   * @throws Error after `timeoutMs` (default 60 s; the script is then killed with SIGKILL), or when the agent fails.
   */
  async exec(script: string, options: { timeoutMs?: number } = {}): Promise<ExecResult> {
    const timeoutMs = options.timeoutMs ?? DEFAULT_EXEC_TIMEOUT_MS;
    const deadline = Date.now() + timeoutMs;
    const { pid } = await this.execute<{ pid: number }>('guest-exec', {
      path: '/bin/sh',
      arg: ['-c', script],
      'capture-output': true,
    });
    let pause = 10;
    for (;;) {
      const status = await this.execute<ExecStatus>('guest-exec-status', { pid });
      if (status.exited) {
        return {
          exitCode: status.exitcode ?? (status.signal !== undefined ? 128 + status.signal : -1),
          stdout: decode(status['out-data']),
          stderr: decode(status['err-data']),
        };
      }
      if (Date.now() >= deadline) {
        await this.spawn(`kill -9 ${pid}`).catch(() => undefined);
        throw new Error(`the guest script did not finish within ${Math.round(timeoutMs / 1000)} s (pid ${pid}, killed): ${script.slice(0, 200)}`);
      }
      await sleep(pause);
      pause = Math.min(pause * 2, 200);
    }
  }

  /** Starts `/bin/sh -c script` in the guest in the background (no output captured) and returns its pid. */
  async spawn(script: string): Promise<number> {
    const { pid } = await this.execute<{ pid: number }>('guest-exec', { path: '/bin/sh', arg: ['-c', script] });
    return pid;
  }

  close(): void {
    this.#closed ??= new Error(`the guest agent client for ${this.#path} was closed`);
    this.#socket.destroy();
    this.#wake();
  }

  #serial<T>(run: () => Promise<T>): Promise<T> {
    const result = this.#queue.then(run, run);
    this.#queue = result.catch(() => undefined);
    return result;
  }

  #receive(chunk: Buffer): void {
    this.#buffer = Buffer.concat([this.#buffer, chunk]);
    for (;;) {
      const nl = this.#buffer.indexOf(0x0a);
      if (nl < 0) break;
      // guest-sync-delimited's reply is preceded by a 0xFF byte; drop every 0xFF (it never occurs in UTF-8 JSON).
      const raw = this.#buffer.subarray(0, nl).filter((byte) => byte !== 0xff);
      this.#buffer = this.#buffer.subarray(nl + 1);
      const line = Buffer.from(raw).toString('utf8').trim();
      if (line === '') continue;
      try {
        this.#lines.push(JSON.parse(line) as Reply);
      } catch {
        // a line torn by a reset of the agent's parser: ignore it (the sync handshake skips such garbage)
      }
    }
    this.#wake();
  }

  #wake(): void {
    const waiter = this.#waiter;
    this.#waiter = undefined;
    waiter?.();
  }

  /** The next reply, or undefined at the deadline. @throws Error when the socket closed. */
  async #next(deadline: number): Promise<Reply | undefined> {
    for (;;) {
      const line = this.#lines.shift();
      if (line) return line;
      if (this.#closed) throw this.#closed;
      const left = deadline - Date.now();
      if (left <= 0) return undefined;
      await new Promise<void>((resolve) => {
        const timer = setTimeout(() => {
          this.#waiter = undefined;
          resolve();
        }, left);
        this.#waiter = () => {
          clearTimeout(timer);
          resolve();
        };
      });
    }
  }

  /**
   * guest-sync-delimited until the reply with the id just sent arrives: replies are in order, so every older sync reply
   * and any stale output of an earlier client has been read by then. A booting guest queues the syncs in the socket.
   */
  async #sync(deadline: number): Promise<void> {
    for (;;) {
      if (this.#closed) throw this.#closed;
      const id = Math.floor(Math.random() * 2 ** 31);
      this.#socket.write(Buffer.from([0xff]));
      this.#socket.write(`${JSON.stringify({ execute: 'guest-sync-delimited', arguments: { id } })}\n`);
      const retryAt = Math.min(deadline, Date.now() + SYNC_RETRY_MS);
      for (;;) {
        const reply = await this.#next(retryAt);
        if (!reply) break;
        if (reply.return === id) {
          this.#synced = true;
          return;
        }
      }
      if (Date.now() >= deadline) {
        throw new Error(`the guest agent on ${this.#path} did not answer guest-sync within the time allowed: did the guest boot? (see its serial log)`);
      }
    }
  }

  async #command(command: string, args: Record<string, unknown> | undefined, timeoutMs: number): Promise<unknown> {
    this.#socket.write(`${JSON.stringify(args ? { execute: command, arguments: args } : { execute: command })}\n`);
    const reply = await this.#next(Date.now() + timeoutMs);
    if (!reply) {
      this.#synced = false; // a late reply would be taken for the next command's: sync again first
      throw new Error(`the guest agent on ${this.#path} did not answer ${command} within ${Math.round(timeoutMs / 1000)} s`);
    }
    if ('error' in reply) {
      const error = reply.error as { class?: string; desc?: string };
      throw new Error(`guest agent command ${command} failed: ${error.desc ?? error.class ?? 'unknown error'}`);
    }
    return reply.return;
  }
}

function decode(data: string | undefined): string {
  return data ? Buffer.from(data, 'base64').toString('utf8') : '';
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
