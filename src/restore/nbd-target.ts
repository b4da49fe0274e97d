// A new qcow2 image written through NBD: `qemu-img create`, then `qemu-nbd` (fleece's child, never daemonized) exports
// it writable on a unix socket in a private 0700 directory, and a BlockSink writes into it over libnbd with several
// requests in flight. Nothing outlives a failure: the child is killed, the socket directory removed; the caller owns
// the image file (a temporary name it renames once the restore has passed its checks).
import { execa, type ResultPromise } from 'execa';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { NbdHandle } from '../../native/nbd-handle.js';
import { AbortedError, FleeceError, InvalidInputError, describeError, throwIfAborted } from '../util/errors.js';
import { getLogger } from '../util/logger.js';
import type { BlockSink } from './block-sink.js';

const log = getLogger('restore.nbd-target');

/** qemu-nbd refuses requests above 32 MiB; smaller pieces keep several in flight. */
const MAX_REQUEST = 4 << 20;
const START_TIMEOUT_MS = 10_000;
const EXIT_TIMEOUT_MS = 10_000;
const MAX_STDERR_CHARS = 8 * 1024;
/** util-linux (essential in Debian): runs qemu-nbd with a parent-death signal. */
const SETPRIV = '/usr/bin/setpriv';
/** Bytes of writes in flight at most: each pins its caller's buffer until the server answers. */
const MAX_BYTES_IN_FLIGHT = 16 << 20;

export interface Qcow2TargetOptions {
  /** Default 64 KiB (qemu-img's): small enough that a mostly empty disk stays small. */
  clusterSize?: number;
  /** Where the private socket directory is made (default beside the image, or the OS temp dir for a long path). */
  socketDir?: string;
  signal?: AbortSignal;
  /** Requests in flight at most (default 8; also at most 16 MiB of data in flight). */
  maxInFlight?: number;
}

/**
 * A BlockSink over NBD whose `close()` also ends qemu-nbd; `finish()` flushes, disconnects and waits for its exit.
 * `write` resolves once the request is sent (errors surface on a later call or at flush): the caller must not reuse
 * the buffer it passed.
 */
export interface Qcow2Target extends BlockSink {
  /** The qemu-nbd child's pid while it runs (tests check it is gone). */
  readonly pid: number | undefined;
  /**
   * Waits for the writes in flight, flushes, disconnects and waits until qemu-nbd has exited cleanly (the image is
   * closed and durable). @throws FleeceError('NBD') when it exits with an error.
   */
  finish(): Promise<void>;
}

/**
 * Creates a new qcow2 of `size` bytes at `path` and exports it writable over NBD. `path` must not exist.
 * @throws FleeceError('NBD' | 'INTERNAL') naming qemu-img / qemu-nbd and their message, AbortedError.
 */
export async function createQcow2Target(path: string, size: number, options: Qcow2TargetOptions = {}): Promise<Qcow2Target> {
  const { signal } = options;
  if (!(size > 0)) throw new InvalidInputError(`a qcow2 restore target needs a positive size, not ${size}`);
  const cluster = options.clusterSize ?? 64 * 1024;
  try {
    await execa('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', `cluster_size=${cluster}`, path, String(size)], {
      stdin: 'ignore', ...(signal ? { cancelSignal: signal } : {}),
    });
  } catch (error) {
    throwIfAborted(signal, `creating ${path}`);
    throw new FleeceError('INTERNAL', `qemu-img create of ${path} failed: ${describeError(error)}`, { cause: error, hint: 'check that qemu-utils is installed and the directory is writable' });
  }
  // Beside the image when the socket path fits (sun_path holds 108 bytes): what a SIGKILL leaves stays in one place.
  const near = dirname(path);
  const dir = await mkdtemp(join(options.socketDir ?? (near.length <= 72 ? near : tmpdir()), '.fleece-restore-'));
  const socket = join(dir, 'nbd.sock');
  // Not --fork: the process stays our child, ended with us (`cleanup`; and, through setpriv's PR_SET_PDEATHSIG, also
  // when we are SIGKILLed before connecting); without --persistent it exits once we disconnect.
  // Writeback cache and one flush at the end; no detect-zeroes: zero blocks are never sent.
  const serve = ['qemu-nbd', '-f', 'qcow2', '-k', socket, '-x', 'restore', '--cache=writeback', '--aio=threads', '--discard=unmap', path];
  const [command, ...args] = existsSync(SETPRIV) ? [SETPRIV, '--pdeathsig', 'KILL', ...serve] : serve;
  const child: ResultPromise = execa(command!, args, { stdin: 'ignore', stdout: 'ignore', stderr: 'pipe', buffer: false, reject: false, cleanup: true });
  let stderr = '';
  child.stderr?.on('data', (chunk: Buffer) => {
    stderr = (stderr + chunk.toString()).slice(-MAX_STDERR_CHARS);
  });
  let exitCode: number | undefined;
  let running = true;
  const exited = child.then((r) => { exitCode = r.exitCode ?? -1; }, () => { exitCode = -1; }).finally(() => { running = false; });
  const kill = async (): Promise<void> => {
    if (running) child.kill('SIGKILL');
    await exited;
    await rm(dir, { recursive: true, force: true });
  };
  const onAbort = (): void => { void kill(); };
  signal?.addEventListener('abort', onAbort, { once: true });

  let handle: NbdHandle | undefined;
  try {
    handle = await connect(socket, () => running, signal);
    if (handle.isReadOnly() || handle.getSize() < size) throw new Error(`the export is ${handle.isReadOnly() ? 'read-only' : `only ${handle.getSize()} bytes`}`);
  } catch (error) {
    handle?.close();
    signal?.removeEventListener('abort', onAbort);
    await kill();
    if (error instanceof AbortedError) throw error;
    throw new FleeceError('NBD', `qemu-nbd could not export the restore target ${path}: ${stderr.trim() || describeError(error)}`, { cause: error, hint: 'install qemu-utils' });
  }
  log.debug({ pid: child.pid, socket, path }, 'qcow2 restore target exported');
  return new NbdQcow2Sink(path, size, handle, child.pid, options.maxInFlight ?? 8, {
    exited: async () => {
      await Promise.race([exited, delay(EXIT_TIMEOUT_MS)]);
      const code = running ? undefined : exitCode;
      signal?.removeEventListener('abort', onAbort);
      await kill();
      if (code !== 0) throw new FleeceError('NBD', `qemu-nbd serving ${path} ${code === undefined ? 'did not exit after the restore' : `exited with status ${code}`}${stderr.trim() ? `: ${stderr.trim()}` : ''}`);
    },
    kill: async () => {
      signal?.removeEventListener('abort', onAbort);
      await kill();
    },
    running: () => running,
  });
}

async function connect(socket: string, isRunning: () => boolean, signal?: AbortSignal): Promise<NbdHandle> {
  const deadline = Date.now() + START_TIMEOUT_MS;
  let last: unknown = new Error('qemu-nbd did not start listening');
  while (Date.now() < deadline && isRunning()) {
    throwIfAborted(signal, 'starting qemu-nbd for the restore');
    const handle = NbdHandle.create();
    try {
      handle.setExportName('restore');
      await handle.connectUnix(socket, signal);
      return handle;
    } catch (error) {
      handle.close();
      if (error instanceof AbortedError) throw error;
      last = error;
      // The socket appears a moment after the process starts; nothing tells when it listens.
      await delay(10);
    }
  }
  throw last;
}

class NbdQcow2Sink implements Qcow2Target {
  readonly startsZeroed = true;
  readonly name: string;
  private readonly inFlight = new Set<Promise<void>>();
  private bytesInFlight = 0;
  private failure: unknown;
  private closed = false;

  constructor(
    readonly path: string,
    readonly size: number,
    private readonly handle: NbdHandle,
    private readonly childPid: number | undefined,
    private readonly maxInFlight: number,
    private readonly process: { exited: () => Promise<void>; kill: () => Promise<void>; running: () => boolean },
  ) {
    this.name = path;
  }

  get pid(): number | undefined {
    return this.process.running() ? this.childPid : undefined;
  }

  /** Issues one request and returns once there is room for another (a failure of any request surfaces here). */
  private async submit(start: () => Promise<void>, bytes = 0): Promise<void> {
    if (this.failure) throw this.failure;
    this.bytesInFlight += bytes;
    const p = start().then(
      () => { this.inFlight.delete(p); this.bytesInFlight -= bytes; },
      (error: unknown) => { this.inFlight.delete(p); this.bytesInFlight -= bytes; this.failure ??= error; },
    );
    this.inFlight.add(p);
    while (this.inFlight.size >= this.maxInFlight || this.bytesInFlight >= MAX_BYTES_IN_FLIGHT) await Promise.race(this.inFlight);
    if (this.failure) throw this.failure;
  }

  private check(offset: number, length: number): void {
    if (offset < 0 || offset + length > this.size) throw new InvalidInputError(`write at ${offset} length ${length} is outside ${this.name} (size ${this.size})`);
  }

  async write(offset: number, data: Uint8Array): Promise<void> {
    this.check(offset, data.length);
    for (let done = 0; done < data.length; done += MAX_REQUEST) {
      const piece = data.subarray(done, Math.min(data.length, done + MAX_REQUEST));
      await this.submit(() => this.handle.pwrite(piece, offset + done), piece.length);
    }
  }

  async zeroRange(offset: number, length: number): Promise<void> {
    this.check(offset, length);
    // A fresh qcow2 reads zeros already; this runs only where data written earlier must read as zeros again.
    for (let done = 0; done < length; done += 1 << 30) {
      const n = Math.min(1 << 30, length - done);
      await this.submit(() => this.handle.zero(n, offset + done));
    }
  }

  async read(offset: number, length: number, into?: Buffer): Promise<Buffer> {
    await this.drain();
    const buf = into && into.length >= length ? into.subarray(0, length) : Buffer.allocUnsafeSlow(length);
    for (let done = 0; done < length; done += MAX_REQUEST) {
      await this.handle.pread(buf.subarray(done, Math.min(length, done + MAX_REQUEST)), offset + done);
    }
    return buf;
  }

  private async drain(): Promise<void> {
    while (this.inFlight.size > 0) await Promise.all(this.inFlight);
    if (this.failure) throw this.failure;
  }

  async flush(): Promise<void> {
    await this.drain();
    if (this.failure) throw this.failure;
    await this.handle.flush();
  }

  async finish(): Promise<void> {
    await this.flush();
    this.handle.shutdown();
    this.handle.close();
    this.closed = true;
    await this.process.exited();
  }

  async close(): Promise<void> {
    if (this.closed) {
      await this.process.kill();
      return;
    }
    this.closed = true;
    this.handle.close();
    await this.process.kill();
  }
}
