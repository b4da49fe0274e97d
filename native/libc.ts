// The few libc calls the NBD layer needs that Node does not offer: poll(2) on foreign fds, eventfd, lseek SEEK_DATA/SEEK_HOLE.
import koffi from 'koffi';

export const POLLIN = 0x001;
export const POLLOUT = 0x004;
export const POLLERR = 0x008;
export const POLLHUP = 0x010;
export const POLLNVAL = 0x020;
export const SEEK_DATA = 3;
export const SEEK_HOLE = 4;
export const ENXIO = 6;

/** The libc functions fleece calls directly (C names, C argument order). */
export interface Libc {
  /** `fds` is an array of `struct pollfd` (8 bytes each: int fd, short events, short revents). */
  poll(fds: Uint8Array, nfds: number, timeout: number): number;
  /** Runs poll(2) on a libuv worker thread; the callback receives poll's return value. */
  pollAsync(fds: Uint8Array, nfds: number, timeout: number, done: (error: unknown, result: number) => void): void;
  eventfd(initval: number, flags: number): number;
  read(fd: number, buf: Uint8Array, count: number): number;
  write(fd: number, buf: Uint8Array, count: number): number;
  lseek(fd: number, offset: number, whence: number): number;
  errno(): number;
}

export const EFD_NONBLOCK = 0o4000;
export const EFD_CLOEXEC = 0o2000000;

let loaded: Libc | undefined;

/**
 * Loads libc.so.6 once.
 * @throws Error when libc.so.6 cannot be loaded (not a glibc Linux).
 */
export function loadLibc(): Libc {
  if (loaded) return loaded;
  const libc = koffi.load('libc.so.6');
  const poll = libc.func('int poll(void *fds, uint64_t nfds, int timeout)');
  const eventfd = libc.func('int eventfd(unsigned int initval, int flags)');
  const read = libc.func('int64_t read(int fd, void *buf, size_t count)');
  const write = libc.func('int64_t write(int fd, const void *buf, size_t count)');
  const lseek = libc.func('int64_t lseek(int fd, int64_t offset, int whence)');
  loaded = {
    poll: (fds, nfds, timeout) => poll(fds, nfds, timeout) as number,
    pollAsync: (fds, nfds, timeout, done) => {
      poll.async(fds, nfds, timeout, done);
    },
    eventfd: (initval, flags) => eventfd(initval, flags) as number,
    read: (fd, buf, count) => Number(read(fd, buf, count)),
    write: (fd, buf, count) => Number(write(fd, buf, count)),
    lseek: (fd, offset, whence) => Number(lseek(fd, offset, whence)),
    errno: () => koffi.errno(),
  };
  return loaded;
}
