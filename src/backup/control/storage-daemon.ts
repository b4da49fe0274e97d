// One qemu-storage-daemon process owned by fleece: started with nothing but a QMP monitor on a unix socket (its chardev
// id names fleece, so `pgrep -f fleece` finds it), driven over QMP, always ended (quit, then SIGKILL), socket removed.
import { execa, type ResultPromise } from 'execa';
import { unlink } from 'node:fs/promises';
import { setTimeout as delay } from 'node:timers/promises';
import { QmpClient } from '../../qmp/client.js';
import { QmpClosedError, QmpConnectError } from '../../qmp/errors.js';
import { AbortedError, FleeceError, type FleeceErrorCode, type FleeceErrorOptions } from '../../util/errors.js';
import { getLogger } from '../../util/logger.js';

const log = getLogger('backup.storage-daemon');

/** The chardev id of the monitor; it puts `fleece` on the daemon's command line. */
export const MONITOR_CHARDEV_ID = 'fleece-qmp';
const DEFAULT_START_TIMEOUT_MS = 10_000;
const DEFAULT_STOP_TIMEOUT_MS = 5_000;
const MAX_STDERR_CHARS = 16 * 1024;

/** The storage daemon did not start, or exited while fleece still needed it. */
export class StorageDaemonError extends FleeceError {
  /** What the daemon printed on stderr (the tail). */
  readonly stderr: string;

  constructor(code: Extract<FleeceErrorCode, 'QMP_CONNECT' | 'QMP_CLOSED'>, message: string, stderr: string, options: FleeceErrorOptions = {}) {
    super(code, stderr.trim() ? `${message}: ${stderr.trim()}` : message, options);
    this.stderr = stderr;
  }
}

/** QEMU's option syntax doubles commas inside a value. */
export function escapeOptionValue(value: string): string {
  return value.replaceAll(',', ',,');
}

export interface StorageDaemonOptions {
  /** The QMP socket (its directory must exist; keep it private, e.g. 0700). */
  qmpSocket: string;
  /** A label for logs and QMP ids (the VM). */
  name: string;
  startTimeoutMs?: number;
  signal?: AbortSignal;
  /** Default `qemu-storage-daemon` from PATH. */
  binary?: string;
}

/** A running daemon and its QMP connection. */
export interface StorageDaemon {
  readonly pid: number;
  readonly qmp: QmpClient;
  readonly qmpSocket: string;
  /** True until the process has exited. */
  readonly running: boolean;
  /** How it ended ('exited with status 1', 'was killed by SIGKILL'); undefined while it runs. */
  readonly exitDescription: string | undefined;
  /** Resolves once the process has exited; never rejects. */
  readonly exited: Promise<void>;
  /** The tail of what it printed on stderr. */
  stderr(): string;
  /**
   * `quit` over QMP, up to `timeoutMs` (default 5 s) for the exit, then SIGKILL; closes QMP and removes the QMP
   * socket. Idempotent; never throws. `forced`: it had to be killed.
   */
  stop(options?: { timeoutMs?: number }): Promise<{ forced: boolean }>;
}

/**
 * Starts `qemu-storage-daemon --chardev socket,path=<qmpSocket>,server=on,wait=off,id=fleece-qmp --monitor
 * chardev=fleece-qmp` and connects to its monitor (retrying while the socket is not yet listening).
 * @throws StorageDaemonError (QMP_CONNECT) when it cannot be run, exits, or does not answer in time (with its
 *   stderr); AbortedError when `signal` fires (the process is killed first).
 */
export async function startStorageDaemon(options: StorageDaemonOptions): Promise<StorageDaemon> {
  const { qmpSocket, signal } = options;
  const binary = options.binary ?? 'qemu-storage-daemon';
  const args = [
    '--chardev', `socket,path=${escapeOptionValue(qmpSocket)},server=on,wait=off,id=${MONITOR_CHARDEV_ID}`,
    '--monitor', `chardev=${MONITOR_CHARDEV_ID}`,
  ];
  const child: ResultPromise = execa(binary, args, {
    reject: false,
    stdin: 'ignore',
    stdout: 'ignore',
    stderr: 'pipe',
    buffer: false,
    cleanup: true,
  });
  let stderr = '';
  child.stderr?.on('data', (chunk: Buffer) => {
    stderr += chunk.toString();
    if (stderr.length > MAX_STDERR_CHARS) stderr = stderr.slice(-MAX_STDERR_CHARS / 2);
  });
  let running = true;
  let exitDescription: string | undefined;
  const exited: Promise<void> = child.then(
    (result) => {
      exitDescription = result.signal
        ? `was killed by ${result.signal}`
        : result.exitCode !== undefined
          ? `exited with status ${result.exitCode}`
          : `could not be run (${result.shortMessage})`;
    },
    (error: unknown) => {
      exitDescription = `could not be run (${String(error)})`;
    },
  ).finally(() => {
    running = false;
  });
  const killNow = async (): Promise<void> => {
    if (running) child.kill('SIGKILL');
    await exited;
    await unlink(qmpSocket).catch(() => undefined);
  };

  let qmp: QmpClient;
  try {
    qmp = await connect(qmpSocket, options, exited, () => running);
  } catch (error) {
    await killNow();
    if (error instanceof AbortedError) throw error;
    const why = exitDescription ? `it ${exitDescription}` : `its QMP socket ${qmpSocket} did not answer`;
    const hint = exitDescription?.startsWith('could not be run') ? 'install qemu-system-common (Debian) or qemu-storage-daemon' : undefined;
    throw new StorageDaemonError('QMP_CONNECT', `${binary} did not start: ${why}`, stderr, { cause: error, ...(hint ? { hint } : {}) });
  }
  log.debug({ pid: child.pid, qmpSocket }, 'storage daemon started');

  let stopping: Promise<{ forced: boolean }> | undefined;
  return {
    pid: child.pid!,
    qmp,
    qmpSocket,
    get running() {
      return running;
    },
    get exitDescription() {
      return exitDescription;
    },
    exited,
    stderr: () => stderr,
    stop: (stopOptions = {}) => {
      stopping ??= (async () => {
        let forced = false;
        if (running && !qmp.closed) {
          try {
            await qmp.execute('quit', undefined, { timeoutMs: 2000 });
          } catch (error) {
            if (!(error instanceof QmpClosedError)) log.debug({ err: error }, 'quit failed; terminating the storage daemon');
          }
        }
        if (running) {
          const timer = setTimeout(() => {
            forced = true;
            child.kill('SIGKILL');
          }, stopOptions.timeoutMs ?? DEFAULT_STOP_TIMEOUT_MS);
          await exited;
          clearTimeout(timer);
        }
        await qmp.close();
        await unlink(qmpSocket).catch(() => undefined);
        log.debug({ pid: child.pid, forced, exit: exitDescription }, 'storage daemon stopped');
        return { forced };
      })();
      return stopping;
    },
  };
}

async function connect(
  path: string,
  options: StorageDaemonOptions,
  exited: Promise<void>,
  isRunning: () => boolean,
): Promise<QmpClient> {
  const deadline = Date.now() + (options.startTimeoutMs ?? DEFAULT_START_TIMEOUT_MS);
  const { signal } = options;
  let lastError: unknown = new Error('no attempt was made');
  while (Date.now() < deadline && isRunning()) {
    if (signal?.aborted) throw new AbortedError('starting qemu-storage-daemon was aborted', { cause: signal.reason });
    try {
      return await QmpClient.connect({ path }, {
        timeoutMs: Math.max(500, deadline - Date.now()),
        name: options.name,
        ...(signal ? { signal } : {}),
      });
    } catch (error) {
      if (!(error instanceof QmpConnectError)) throw error;
      lastError = error;
      // The socket appears a moment after the process starts; no event tells when it listens.
      await Promise.race([exited, delay(10)]);
    }
  }
  throw lastError;
}
