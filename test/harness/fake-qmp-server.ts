// A scripted QMP peer on a real unix socket, for unit tests of the QMP client (no QEMU): the test drives each reply.
import { createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';

export interface ReceivedCommand {
  execute: string;
  arguments?: Record<string, unknown>;
  id: unknown;
}

export const FAKE_GREETING = {
  QMP: { version: { qemu: { micro: 22, minor: 2, major: 7 }, package: 'fake' }, capabilities: ['oob'] },
};

/** One accepted connection: read its commands in order, answer them in any order, send events or raw bytes. */
export class FakeQmpConnection {
  readonly socket: Socket;
  readonly received: ReceivedCommand[] = [];
  #buffer = '';
  #queue: ReceivedCommand[] = [];
  #waiters: Array<(c: ReceivedCommand) => void> = [];

  constructor(socket: Socket, autoCapabilities: boolean) {
    this.socket = socket;
    socket.setEncoding('utf8');
    socket.on('error', () => {});
    socket.on('data', (text: string) => {
      this.#buffer += text;
      let at: number;
      while ((at = this.#buffer.indexOf('\n')) >= 0) {
        const line = this.#buffer.slice(0, at).trim();
        this.#buffer = this.#buffer.slice(at + 1);
        if (!line) continue;
        const command = JSON.parse(line) as ReceivedCommand;
        this.received.push(command);
        if (autoCapabilities && command.execute === 'qmp_capabilities') {
          this.reply(command.id, {});
          continue;
        }
        const waiter = this.#waiters.shift();
        if (waiter) waiter(command);
        else this.#queue.push(command);
      }
    });
  }

  /** The next command the client sent (other than the automatic qmp_capabilities). */
  nextCommand(): Promise<ReceivedCommand> {
    const queued = this.#queue.shift();
    if (queued) return Promise.resolve(queued);
    return new Promise((resolve) => this.#waiters.push(resolve));
  }

  /** Writes raw text (or bytes) as is: use it to split messages across writes. */
  raw(data: string | Buffer): void {
    this.socket.write(data);
  }

  replyLine(id: unknown, value: unknown): string {
    return `${JSON.stringify({ return: value, id })}\r\n`;
  }

  errorLine(id: unknown, errorClass: string, desc: string): string {
    return `${JSON.stringify({ id, error: { class: errorClass, desc } })}\r\n`;
  }

  eventLine(event: string, data?: Record<string, unknown>): string {
    const message: Record<string, unknown> = { timestamp: { seconds: 1, microseconds: 2 }, event };
    if (data) message.data = data;
    return `${JSON.stringify(message)}\r\n`;
  }

  reply(id: unknown, value: unknown): void {
    this.raw(this.replyLine(id, value));
  }

  error(id: unknown, errorClass: string, desc: string): void {
    this.raw(this.errorLine(id, errorClass, desc));
  }

  event(event: string, data?: Record<string, unknown>): void {
    this.raw(this.eventLine(event, data));
  }

  /** Closes the connection abruptly, as a killed QEMU would. */
  drop(): void {
    this.socket.destroy();
  }
}

/** Listens on `<dir>/fake-qmp.sock`; sends the greeting on accept unless told otherwise. */
export class FakeQmpServer {
  readonly path: string;
  readonly #server: Server;
  readonly #connections: FakeQmpConnection[] = [];
  readonly #all: FakeQmpConnection[] = [];
  #waiters: Array<(c: FakeQmpConnection) => void> = [];

  private constructor(path: string, options: { greeting: unknown | null; autoCapabilities: boolean }) {
    this.path = path;
    this.#server = createServer((socket) => {
      const connection = new FakeQmpConnection(socket, options.autoCapabilities);
      this.#all.push(connection);
      if (options.greeting !== null) connection.raw(`${JSON.stringify(options.greeting)}\r\n`);
      const waiter = this.#waiters.shift();
      if (waiter) waiter(connection);
      else this.#connections.push(connection);
    });
  }

  static async start(
    dir: string,
    options: { greeting?: unknown | null; autoCapabilities?: boolean } = {},
  ): Promise<FakeQmpServer> {
    const server = new FakeQmpServer(join(dir, 'fake-qmp.sock'), {
      greeting: options.greeting === undefined ? FAKE_GREETING : options.greeting,
      autoCapabilities: options.autoCapabilities ?? true,
    });
    await new Promise<void>((resolve, reject) => {
      server.#server.once('error', reject);
      server.#server.listen(server.path, () => resolve());
    });
    return server;
  }

  /** The next accepted connection. */
  connection(): Promise<FakeQmpConnection> {
    const queued = this.#connections.shift();
    if (queued) return Promise.resolve(queued);
    return new Promise((resolve) => this.#waiters.push(resolve));
  }

  async stop(): Promise<void> {
    for (const c of this.#all) c.drop();
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
  }
}
