// One process-wide event loop for libnbd's aio API: a single poll(2) on a libuv worker thread watches every busy NBD socket.
//
// Why this design (measured on the 2-core machine, see scripts/bench-nbd.mjs): libnbd's synchronous calls block the
// thread that makes them and hold the handle's lock, and libnbd keeps its error message per thread. Running them through
// koffi's `.async` would occupy one libuv pool thread (4 in all, shared with fs and zlib) per request, make
// cancellation impossible, and lose libnbd's message. Instead every libnbd call runs on the main thread in non-blocking
// aio mode (nbd_aio_pread, nbd_aio_notify_read, nbd_aio_command_completed), so errors keep their message, many requests
// stay in flight per connection and abort is immediate; only the wait (poll(2) over all sockets plus an eventfd for
// wake-ups) runs on one worker thread, and only while some command is in flight.
import { getLogger } from '../src/util/logger.js';
import { EFD_CLOEXEC, EFD_NONBLOCK, POLLIN, POLLOUT, loadLibc } from './libc.js';

const log = getLogger('nbd-poller');

/** What the poller needs from one NBD connection. */
export interface PollClient {
  /** The socket fd (nbd_aio_get_fd), or -1 when the handle has none (closed). */
  readonly fd: number;
  /** True while the client waits for the socket: commands in flight or a handshake under way. */
  wantsPoll(): boolean;
  /** poll(2) events wanted now (POLLIN/POLLOUT from nbd_aio_get_direction). */
  events(): number;
  /** Called on the main thread with the revents poll(2) reported; must not throw. */
  onReady(revents: number): void;
}

const POLLFD_SIZE = 8;

/** The process-wide poller; get it with `getNbdPoller()`. */
export class NbdPoller {
  private readonly clients = new Set<PollClient>();
  private looping = false;
  private waiting = false;
  private readonly wakeFd: number;
  private readonly wakeBuf = Buffer.alloc(8);
  private pollfds = Buffer.alloc(POLLFD_SIZE * 8);

  constructor() {
    const libc = loadLibc();
    this.wakeFd = libc.eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (this.wakeFd < 0) throw new Error(`eventfd failed (errno ${libc.errno()})`);
  }

  /** Starts watching a client; call `kick()` after it has something in flight. */
  add(client: PollClient): void {
    this.clients.add(client);
  }

  /** Stops watching a client (its handle is closing); wakes a poll that may still be watching its fd. */
  remove(client: PollClient): void {
    if (this.clients.delete(client)) this.kick();
  }

  /** Makes the poller look at its clients again: starts the loop, or interrupts the poll in progress. */
  kick(): void {
    if (!this.looping) {
      this.looping = true;
      void this.loop();
    } else if (this.waiting) {
      this.wakeBuf.writeBigUInt64LE(1n);
      loadLibc().write(this.wakeFd, this.wakeBuf, 8);
    }
  }

  private async loop(): Promise<void> {
    const libc = loadLibc();
    try {
      for (;;) {
        // Let promise chains resolved by the previous round issue their next commands first.
        await new Promise<void>((resolve) => setImmediate(resolve));
        const active: PollClient[] = [];
        for (const client of this.clients) if (client.fd >= 0 && client.wantsPoll()) active.push(client);
        if (active.length === 0) return;
        const count = active.length + 1;
        if (this.pollfds.length < count * POLLFD_SIZE) this.pollfds = Buffer.alloc(count * 2 * POLLFD_SIZE);
        const fds = this.pollfds;
        active.forEach((client, i) => {
          fds.writeInt32LE(client.fd, i * POLLFD_SIZE);
          fds.writeInt16LE(client.events(), i * POLLFD_SIZE + 4);
          fds.writeInt16LE(0, i * POLLFD_SIZE + 6);
        });
        fds.writeInt32LE(this.wakeFd, active.length * POLLFD_SIZE);
        fds.writeInt16LE(POLLIN, active.length * POLLFD_SIZE + 4);
        fds.writeInt16LE(0, active.length * POLLFD_SIZE + 6);
        let ready = libc.poll(fds, count, 0);
        if (ready === 0) {
          this.waiting = true;
          try {
            ready = await new Promise<number>((resolve, reject) => {
              libc.pollAsync(fds, count, -1, (error, result) => (error ? reject(error) : resolve(result)));
            });
          } catch (error) {
            log.debug({ err: error }, 'asynchronous poll could not run; retrying');
            continue;
          } finally {
            this.waiting = false;
          }
        }
        if (ready < 0) {
          log.debug({ errno: libc.errno() }, 'poll returned an error; retrying');
          continue;
        }
        if (fds.readInt16LE(active.length * POLLFD_SIZE + 6) !== 0) libc.read(this.wakeFd, this.wakeBuf, 8);
        active.forEach((client, i) => {
          const revents = fds.readInt16LE(i * POLLFD_SIZE + 6);
          if (revents !== 0 && this.clients.has(client)) client.onReady(revents);
        });
      }
    } finally {
      this.looping = false;
    }
  }
}

/** Converts nbd_aio_get_direction's bits into poll(2) events. */
export function directionToEvents(direction: number): number {
  return (direction & 1 ? POLLIN : 0) | (direction & 2 ? POLLOUT : 0);
}

let poller: NbdPoller | undefined;

/** The process-wide poller (created on first use). */
export function getNbdPoller(): NbdPoller {
  poller ??= new NbdPoller();
  return poller;
}
