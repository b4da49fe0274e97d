// NbdHandle: one libnbd connection, typed; commands run in libnbd's aio mode driven by the shared poller (never blocking Node).
import { AbortedError } from '../src/util/errors.js';
import { getLogger } from '../src/util/logger.js';
import {
  LIBNBD_CMD_FLAG_NO_HOLE,
  LIBNBD_CMD_FLAG_REQ_ONE,
  LIBNBD_SHUTDOWN_ABANDON_PENDING,
  LIBNBD_TLS_ALLOW,
  LIBNBD_TLS_DISABLE,
  LIBNBD_TLS_REQUIRE,
  NULL_COMPLETION,
  decodeExtentEntries,
  loadLibnbd,
  registerExtentCallback,
  unregisterCallback,
  type Libnbd,
  type NbdHandlePtr,
  type RegisteredCallback,
} from './libnbd.js';
import { POLLERR, POLLHUP, POLLIN, POLLNVAL, POLLOUT } from './libc.js';
import { NbdError } from './nbd-error.js';
import { directionToEvents, getNbdPoller, type PollClient } from './nbd-poller.js';

const log = getLogger('nbd');

/** TLS policy of a connection (`nbd_set_tls`). */
export type NbdTlsMode = 'disable' | 'allow' | 'require';

/** One block-status reply for one meta context: `entries` are (length, flags) pairs starting at `offset`. */
export interface NbdExtentReply {
  context: string;
  offset: number;
  entries: number[];
}

interface Pending {
  call: string;
  what: string;
  resolve: () => void;
  reject: (error: Error) => void;
  /** Keeps the destination buffer alive until libnbd has retired the command, even if the caller gave up. */
  buffer?: Uint8Array;
  callback?: RegisteredCallback;
  settled: boolean;
}

/**
 * One NBD connection through libnbd. Configure (export name, meta contexts, TLS), connect, then issue commands; every
 * command is asynchronous and several may be in flight. A closed handle throws NbdError on any use; close() is idempotent.
 */
export class NbdHandle implements PollClient {
  private readonly lib: Libnbd;
  private ptr: NbdHandlePtr | null;
  private socketFd = -1;
  private connecting: { resolve: () => void; reject: (error: Error) => void } | undefined;
  private readonly pending = new Map<number, Pending>();
  private target = 'NBD server';

  private constructor(lib: Libnbd, ptr: NbdHandlePtr) {
    this.lib = lib;
    this.ptr = ptr;
  }

  /**
   * Creates an unconnected handle (`nbd_create`).
   * @throws NbdError when libnbd cannot allocate a handle; Error when libnbd.so.0 is missing.
   */
  static create(): NbdHandle {
    const { lib } = loadLibnbd();
    const ptr = lib.nbd_create();
    if (!ptr) throw errorFromLibnbd(lib, 'nbd_create', 'creating an NBD handle');
    return new NbdHandle(lib, ptr);
  }

  /** The socket fd libnbd uses, or -1 before connect / after close. */
  get fd(): number {
    return this.socketFd;
  }

  /** True once close() ran. */
  get closed(): boolean {
    return this.ptr === null;
  }

  /** Commands issued and not yet retired. */
  get inFlight(): number {
    return this.pending.size;
  }

  /** `nbd_set_export_name`. @throws NbdError */
  setExportName(name: string): void {
    this.check('nbd_set_export_name', this.lib.nbd_set_export_name(this.handle(), name));
    this.target = `NBD export "${name}"`;
  }

  /** `nbd_set_handle_name` (shows in libnbd debug output). @throws NbdError */
  setHandleName(name: string): void {
    this.check('nbd_set_handle_name', this.lib.nbd_set_handle_name(this.handle(), name));
  }

  /** `nbd_add_meta_context`: asks for a meta context at connect time (`base:allocation`, `qemu:dirty-bitmap:NAME`). @throws NbdError */
  addMetaContext(name: string): void {
    this.check('nbd_add_meta_context', this.lib.nbd_add_meta_context(this.handle(), name));
  }

  /** `nbd_set_tls`. @throws NbdError (e.g. libnbd built without TLS) */
  setTls(mode: NbdTlsMode): void {
    const value = mode === 'require' ? LIBNBD_TLS_REQUIRE : mode === 'allow' ? LIBNBD_TLS_ALLOW : LIBNBD_TLS_DISABLE;
    this.check('nbd_set_tls', this.lib.nbd_set_tls(this.handle(), value));
  }

  /** `nbd_set_tls_certificates`: directory with ca-cert.pem, client-cert.pem, client-key.pem. @throws NbdError */
  setTlsCertificates(dir: string): void {
    this.check('nbd_set_tls_certificates', this.lib.nbd_set_tls_certificates(this.handle(), dir));
  }

  /** `nbd_set_tls_psk_file`: a keys.psk file (`username:hexkey` lines, as psktool writes it). @throws NbdError */
  setTlsPskFile(path: string): void {
    this.check('nbd_set_tls_psk_file', this.lib.nbd_set_tls_psk_file(this.handle(), path));
  }

  /** `nbd_set_tls_username`: the PSK identity to offer (libnbd's default is the login name). @throws NbdError */
  setTlsUsername(username: string): void {
    this.check('nbd_set_tls_username', this.lib.nbd_set_tls_username(this.handle(), username));
  }

  /**
   * `nbd_set_tls_verify_peer`: whether the server's certificate must be signed by ca-cert.pem and name the host
   * (default true). @throws NbdError
   */
  setTlsVerifyPeer(verify: boolean): void {
    this.check('nbd_set_tls_verify_peer', this.lib.nbd_set_tls_verify_peer(this.handle(), verify));
  }

  /** `nbd_get_tls_negotiated`: whether the connection is encrypted (after connect). @throws NbdError */
  tlsNegotiated(): boolean {
    return this.check('nbd_get_tls_negotiated', this.lib.nbd_get_tls_negotiated(this.handle())) === 1;
  }

  /** `nbd_supports_tls`: whether this libnbd was built with gnutls. @throws NbdError when the handle is closed */
  supportsTls(): boolean {
    return this.lib.nbd_supports_tls(this.handle()) === 1;
  }

  /** Connects to a unix socket (`nbd_aio_connect_unix`) and completes the handshake. @throws NbdError, AbortedError */
  connectUnix(path: string, signal?: AbortSignal): Promise<void> {
    this.target = `${this.target} on unix socket ${path}`;
    return this.connectWith('nbd_aio_connect_unix', () => this.lib.nbd_aio_connect_unix(this.handle(), path), signal);
  }

  /** Connects over TCP (`nbd_aio_connect_tcp`) and completes the handshake. @throws NbdError, AbortedError */
  connectTcp(host: string, port: number | string, signal?: AbortSignal): Promise<void> {
    this.target = `${this.target} at ${host}:${port}`;
    return this.connectWith('nbd_aio_connect_tcp', () => this.lib.nbd_aio_connect_tcp(this.handle(), host, String(port)), signal);
  }

  /**
   * Connects to an NBD URI (`nbd_aio_connect_uri`): `nbd://`, `nbd+unix:///EXPORT?socket=PATH`, and `nbds://`
   * (TLS required, as the URI asks). The URI's export name replaces setExportName's.
   * @throws NbdError, AbortedError
   */
  connectUri(uri: string, signal?: AbortSignal): Promise<void> {
    this.target = `NBD server ${uri}`;
    return this.connectWith('nbd_aio_connect_uri', () => this.lib.nbd_aio_connect_uri(this.handle(), uri), signal);
  }

  /** Export size in bytes (`nbd_get_size`). @throws NbdError */
  getSize(): number {
    return Number(this.checkBig('nbd_get_size', this.lib.nbd_get_size(this.handle())));
  }

  /** `nbd_can_meta_context`: whether the server agreed to the context at connect time. @throws NbdError */
  canMetaContext(name: string): boolean {
    return this.check('nbd_can_meta_context', this.lib.nbd_can_meta_context(this.handle(), name)) === 1;
  }

  /** `nbd_can_multi_conn`: whether several connections to this export see consistent data. @throws NbdError */
  canMultiConn(): boolean {
    return this.check('nbd_can_multi_conn', this.lib.nbd_can_multi_conn(this.handle())) === 1;
  }

  /** `nbd_can_trim`. @throws NbdError */
  canTrim(): boolean {
    return this.check('nbd_can_trim', this.lib.nbd_can_trim(this.handle())) === 1;
  }

  /** `nbd_is_read_only`. @throws NbdError */
  isReadOnly(): boolean {
    return this.check('nbd_is_read_only', this.lib.nbd_is_read_only(this.handle())) === 1;
  }

  /** `nbd_get_block_size(LIBNBD_SIZE_MAXIMUM)`: the largest request the server accepts, 0 when it did not say. @throws NbdError */
  getMaxBlockSize(): number {
    return Number(this.checkBig('nbd_get_block_size', this.lib.nbd_get_block_size(this.handle(), 2)));
  }

  /**
   * Reads `buffer.length` bytes at `offset` into `buffer` (`nbd_aio_pread`). The buffer is owned by libnbd until the
   * promise settles (or, after an abort, until the server answers).
   * @throws NbdError (server error, dead connection, closed handle), AbortedError
   */
  pread(buffer: Uint8Array, offset: number, signal?: AbortSignal): Promise<void> {
    const what = `reading ${buffer.length} bytes at offset ${offset} from ${this.target}`;
    return this.issue('nbd_aio_pread', what, signal, { buffer }, () =>
      this.lib.nbd_aio_pread(this.handle(), buffer, buffer.length, offset, NULL_COMPLETION, 0),
    );
  }

  /**
   * Block status of [offset, offset+count) (`nbd_aio_block_status`): one reply per negotiated meta context; a reply
   * may cover less than asked (or, rarely, more). `onlyOne` sets LIBNBD_CMD_FLAG_REQ_ONE.
   * @throws NbdError, AbortedError
   */
  async blockStatus(count: number, offset: number, options: { onlyOne?: boolean; signal?: AbortSignal } = {}): Promise<NbdExtentReply[]> {
    const replies: NbdExtentReply[] = [];
    const callback = registerExtentCallback((_userData, context, replyOffset, entries, nrEntries) => {
      try {
        replies.push({ context, offset: Number(replyOffset), entries: decodeExtentEntries(entries, Number(nrEntries)) });
      } catch (error) {
        log.debug({ err: error }, 'could not decode a block-status reply');
        return -1;
      }
      return 0;
    });
    const what = `block status of ${count} bytes at offset ${offset} from ${this.target}`;
    const cb = { callback, user_data: null, free: null } as const;
    const flags = options.onlyOne ? LIBNBD_CMD_FLAG_REQ_ONE : 0;
    await this.issue('nbd_aio_block_status', what, options.signal, { callback }, () =>
      this.lib.nbd_aio_block_status(this.handle(), count, offset, cb, NULL_COMPLETION, flags),
    );
    return replies;
  }

  /** Discards [offset, offset+count) (`nbd_aio_trim`); fleecing scratch space is freed this way. @throws NbdError, AbortedError */
  trim(count: number, offset: number, signal?: AbortSignal): Promise<void> {
    const what = `trimming ${count} bytes at offset ${offset} on ${this.target}`;
    return this.issue('nbd_aio_trim', what, signal, {}, () =>
      this.lib.nbd_aio_trim(this.handle(), count, offset, NULL_COMPLETION, 0),
    );
  }

  /**
   * Writes `buffer` at `offset` (`nbd_aio_pwrite`). The buffer is owned by libnbd until the promise settles (or, after
   * an abort, until the server answers): do not change it before then.
   * @throws NbdError, AbortedError
   */
  pwrite(buffer: Uint8Array, offset: number, signal?: AbortSignal): Promise<void> {
    const what = `writing ${buffer.length} bytes at offset ${offset} to ${this.target}`;
    return this.issue('nbd_aio_pwrite', what, signal, { buffer }, () =>
      this.lib.nbd_aio_pwrite(this.handle(), buffer, buffer.length, offset, NULL_COMPLETION, 0),
    );
  }

  /**
   * Makes [offset, offset+count) read as zeros (`nbd_aio_zero`); `noHole` keeps it allocated (LIBNBD_CMD_FLAG_NO_HOLE),
   * else the server may punch a hole. @throws NbdError, AbortedError
   */
  zero(count: number, offset: number, options: { noHole?: boolean; signal?: AbortSignal } = {}): Promise<void> {
    const what = `zeroing ${count} bytes at offset ${offset} on ${this.target}`;
    return this.issue('nbd_aio_zero', what, options.signal, {}, () =>
      this.lib.nbd_aio_zero(this.handle(), count, offset, NULL_COMPLETION, options.noHole ? LIBNBD_CMD_FLAG_NO_HOLE : 0),
    );
  }

  /** Makes every completed write durable on the server (`nbd_aio_flush`). @throws NbdError, AbortedError */
  flush(signal?: AbortSignal): Promise<void> {
    return this.issue('nbd_aio_flush', `flushing ${this.target}`, signal, {}, () => this.lib.nbd_aio_flush(this.handle(), NULL_COMPLETION, 0));
  }

  /** `nbd_can_zero`. @throws NbdError */
  canZero(): boolean {
    return this.check('nbd_can_zero', this.lib.nbd_can_zero(this.handle())) === 1;
  }

  /** `nbd_can_flush`. @throws NbdError */
  canFlush(): boolean {
    return this.check('nbd_can_flush', this.lib.nbd_can_flush(this.handle())) === 1;
  }

  /**
   * Tells the server we are going away (`nbd_shutdown`); in-flight commands are abandoned. Safe on a dead connection.
   * @throws NbdError when the handle is closed
   */
  shutdown(): void {
    const h = this.handle();
    if (this.lib.nbd_aio_is_ready(h) !== 1 && this.lib.nbd_aio_is_processing(h) !== 1) return;
    if (this.lib.nbd_shutdown(h, this.pending.size > 0 ? LIBNBD_SHUTDOWN_ABANDON_PENDING : 0) === -1) {
      log.debug({ error: this.lib.nbd_get_error() }, 'nbd_shutdown failed; closing anyway');
    }
  }

  /**
   * Closes the connection and frees the handle (`nbd_close`). Pending commands fail with NbdError. Idempotent; never
   * throws, also when the server already went away.
   */
  close(): void {
    const h = this.ptr;
    if (!h) return;
    this.ptr = null;
    getNbdPoller().remove(this);
    this.socketFd = -1;
    this.lib.nbd_close(h);
    const error = new NbdError('nbd_close', 'the handle was closed while the command was in flight', 0, { what: this.target });
    for (const [cookie, entry] of this.pending) {
      this.pending.delete(cookie);
      this.settle(entry, error);
    }
    if (this.connecting) {
      const { reject } = this.connecting;
      this.connecting = undefined;
      reject(new NbdError('nbd_close', 'the handle was closed while connecting', 0, { what: this.target }));
    }
  }

  /** @internal PollClient */
  wantsPoll(): boolean {
    return this.ptr !== null && (this.pending.size > 0 || this.connecting !== undefined);
  }

  /** @internal PollClient */
  events(): number {
    return this.ptr ? directionToEvents(this.lib.nbd_aio_get_direction(this.ptr)) : 0;
  }

  /** @internal PollClient: runs libnbd's state machine and retires finished commands. */
  onReady(revents: number): void {
    const h = this.ptr;
    if (!h) return;
    let connectionError: NbdError | undefined;
    if (revents & (POLLIN | POLLHUP | POLLERR | POLLNVAL)) {
      if (this.lib.nbd_aio_notify_read(h) === -1) connectionError = this.error('nbd_aio_notify_read');
    }
    if (!connectionError && revents & POLLOUT && this.ptr) {
      if (this.lib.nbd_aio_notify_write(h) === -1) connectionError = this.error('nbd_aio_notify_write');
    }
    if (this.connecting && this.lib.nbd_aio_is_connecting(h) !== 1) {
      const { resolve, reject } = this.connecting;
      this.connecting = undefined;
      if (this.lib.nbd_aio_is_ready(h) === 1) {
        this.socketFd = this.lib.nbd_aio_get_fd(h);
        resolve();
      } else {
        reject(connectionError ?? new NbdError('nbd_aio_connect', `the handshake ended in state ${this.lib.nbd_connection_state(h) ?? 'unknown'}`, 0, { what: `connecting to ${this.target}` }));
      }
    }
    this.reap(connectionError);
  }

  private reap(connectionError?: NbdError): void {
    const h = this.ptr;
    if (!h) return;
    for (const [cookie, entry] of this.pending) {
      const rc = this.lib.nbd_aio_command_completed(h, cookie);
      if (rc === 0) continue;
      this.pending.delete(cookie);
      this.settle(entry, rc === 1 ? undefined : this.error(entry.call, entry.what));
    }
    if (this.pending.size > 0 && (connectionError || this.lib.nbd_aio_is_dead(h) === 1 || this.lib.nbd_aio_is_closed(h) === 1)) {
      const error = connectionError ?? new NbdError('nbd_aio_notify_read', 'the connection to the server is dead', 0, { what: this.target });
      for (const [cookie, entry] of this.pending) {
        this.pending.delete(cookie);
        this.settle(entry, error);
      }
    }
  }

  private settle(entry: Pending, error?: Error): void {
    if (entry.callback !== undefined) unregisterCallback(entry.callback);
    if (entry.settled) return;
    entry.settled = true;
    if (error) entry.reject(error);
    else entry.resolve();
  }

  private issue(
    call: string,
    what: string,
    signal: AbortSignal | undefined,
    extra: { buffer?: Uint8Array; callback?: RegisteredCallback },
    start: () => number | bigint,
  ): Promise<void> {
    if (signal?.aborted) {
      if (extra.callback !== undefined) unregisterCallback(extra.callback);
      return Promise.reject(new AbortedError(`${what} was aborted`, { cause: signal.reason }));
    }
    return new Promise<void>((resolve, reject) => {
      let cookie: number;
      try {
        cookie = Number(this.checkBig(call, start(), what));
      } catch (error) {
        if (extra.callback !== undefined) unregisterCallback(extra.callback);
        reject(error as Error);
        return;
      }
      const onAbort = (): void => {
        entry.settled = true;
        reject(new AbortedError(`${what} was aborted`, { cause: signal?.reason }));
      };
      const entry: Pending = {
        call,
        what,
        settled: false,
        buffer: extra.buffer,
        callback: extra.callback,
        resolve: () => {
          signal?.removeEventListener('abort', onAbort);
          resolve();
        },
        reject: (error) => {
          signal?.removeEventListener('abort', onAbort);
          reject(error);
        },
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      this.pending.set(cookie, entry);
      const poller = getNbdPoller();
      poller.add(this);
      poller.kick();
    });
  }

  private connectWith(call: string, start: () => number, signal?: AbortSignal): Promise<void> {
    if (signal?.aborted) return Promise.reject(new AbortedError(`connecting to ${this.target} was aborted`, { cause: signal.reason }));
    return new Promise<void>((resolve, reject) => {
      try {
        this.check(call, start(), `connecting to ${this.target}`);
      } catch (error) {
        reject(error as Error);
        return;
      }
      const onAbort = (): void => {
        this.close();
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      const done = (error?: Error): void => {
        signal?.removeEventListener('abort', onAbort);
        if (error && signal?.aborted) reject(new AbortedError(`connecting to ${this.target} was aborted`, { cause: signal.reason }));
        else if (error) reject(error);
        else resolve();
      };
      const h = this.handle();
      if (this.lib.nbd_aio_is_ready(h) === 1) {
        this.socketFd = this.lib.nbd_aio_get_fd(h);
        done();
        return;
      }
      this.connecting = { resolve: () => done(), reject: (error) => done(error) };
      this.socketFd = this.lib.nbd_aio_get_fd(h);
      const poller = getNbdPoller();
      poller.add(this);
      poller.kick();
    });
  }

  private handle(): NbdHandlePtr {
    if (!this.ptr) {
      throw new NbdError('nbd_handle', 'the NBD handle is closed', 0, {
        what: this.target,
        hint: 'open a new connection; a closed handle cannot be reused',
      });
    }
    return this.ptr;
  }

  private check(call: string, rc: number, what?: string): number {
    if (rc === -1) throw this.error(call, what);
    return rc;
  }

  private checkBig(call: string, rc: number | bigint, what?: string): number | bigint {
    if (Number(rc) === -1) throw this.error(call, what);
    return rc;
  }

  private error(call: string, what = this.target): NbdError {
    return errorFromLibnbd(this.lib, call, what);
  }
}

function errorFromLibnbd(lib: Libnbd, call: string, what: string): NbdError {
  const message = lib.nbd_get_error() ?? 'unknown libnbd error';
  return new NbdError(call, message, lib.nbd_get_errno(), { what });
}
