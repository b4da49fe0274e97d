// Real QEMU for integration tests and scripts: start qemu-system-x86_64 or qemu-storage-daemon with disks and a QMP socket in a
// fleece-test- directory, play the guest through HMP qemu-io, and always tear the process down. No jest imports here.
import { execa, type ResultPromise } from 'execa';
import { join } from 'node:path';
import { QmpClient } from '../../src/qmp/client.js';
import { QmpClosedError, QmpConnectError } from '../../src/qmp/errors.js';
import { makeTempDir, removeTempDir } from './temp-dir.js';

export interface DiskSpec {
  path: string;
  format?: 'qcow2' | 'raw';
  /** The device id in the guest ('vda'); the storage daemon uses it only to name the node. */
  target: string;
  /** The format node's name; default `disk-${target}`. The file node is `${nodeName}-file`. */
  nodeName?: string;
}

export interface QemuInstance {
  kind: 'system' | 'storage-daemon';
  /** Holds the QMP sockets (and, when the harness made it, everything else); its name contains `fleece-test-`. */
  dir: string;
  qmpPath: string;
  /** Further QMP monitors (`extraQmpSockets`), for tests that need a second owner. */
  extraQmpPaths: string[];
  pid: number;
  /** Connected to `qmpPath`. */
  client: QmpClient;
  disks: DiskSpec[];
  /**
   * System only: runs one qemu-io command through the guest device's BlockBackend (as a guest write would, so
   * dirty bitmaps and copy-before-write see it) and returns what qemu-io printed.
   * @throws Error when qemu-io reports an error (failed I/O, pattern mismatch, unknown device or command).
   */
  guestWrite(target: string, qemuIoCommand: string): Promise<string>;
  /** What the process printed so far. */
  output(): { stdout: string; stderr: string };
  /** True until the process has exited. */
  readonly running: boolean;
  /** QMP `quit`, wait up to 5 s for exit, then SIGKILL; closes the client; removes `dir` only if the harness made it; idempotent. */
  stop(): Promise<void>;
  /** SIGKILL now and wait for the exit (simulates a crash; call stop() afterwards to clean up). */
  kill(): Promise<void>;
}

export interface SystemOptions {
  disks: DiskSpec[];
  /** Where to put the sockets; default a new temp dir that stop() removes. */
  dir?: string;
  extraQmpSockets?: number;
}

export interface StorageDaemonOptions {
  disks: DiskSpec[];
  dir?: string;
  extraQmpSockets?: number;
}

const STARTUP_TIMEOUT_MS = 10_000;
const STOP_TIMEOUT_MS = 5_000;
const MAX_CAPTURED_CHARS = 1 << 20;

/**
 * Every process started here, killed on process exit as a last resort. The exit hook is installed only while a
 * process is alive, so that jest (which loads this module afresh for every test file) does not pile up listeners.
 */
const liveProcesses = new Set<number>();

function killLeftovers(): void {
  for (const pid of liveProcesses) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
}

function track(pid: number): void {
  if (liveProcesses.size === 0) process.on('exit', killLeftovers);
  liveProcesses.add(pid);
}

function untrack(pid: number): void {
  if (liveProcesses.delete(pid) && liveProcesses.size === 0) process.removeListener('exit', killLeftovers);
}

/** The format and file node names of a disk. */
export function diskNodeNames(disk: DiskSpec): { format: string; file: string } {
  const format = disk.nodeName ?? `disk-${disk.target}`;
  return { format, file: `${format}-file` };
}

function diskFormat(disk: { path: string; format?: 'qcow2' | 'raw' }): 'qcow2' | 'raw' {
  return disk.format ?? (disk.path.endsWith('.qcow2') ? 'qcow2' : 'raw');
}

function blockdevArgs(flag: string, disk: DiskSpec): string[] {
  const nodes = diskNodeNames(disk);
  return [
    flag,
    `driver=file,filename=${disk.path},node-name=${nodes.file}`,
    flag,
    `driver=${diskFormat(disk)},file=${nodes.file},node-name=${nodes.format}`,
  ];
}

/**
 * Starts `qemu-system-x86_64 -S` (TCG, 64 MiB, no OS) with one virtio-blk device per disk and a QMP client connected.
 * @throws Error when QEMU exits or its socket does not accept a QMP connection within 10 s (with QEMU's stderr).
 */
export async function startQemuSystem(opts: SystemOptions): Promise<QemuInstance> {
  const { dir, ownsDir } = await resolveDir(opts.dir, 'qemu');
  const sockets = socketPaths(dir, opts.extraQmpSockets ?? 0);
  const args = ['-S', '-nodefaults', '-display', 'none', '-machine', 'pc,accel=tcg', '-m', '64'];
  for (const path of sockets) args.push('-qmp', `unix:${path},server=on,wait=off`);
  for (const disk of opts.disks) {
    args.push(...blockdevArgs('-blockdev', disk));
    args.push('-device', `virtio-blk-pci,drive=${diskNodeNames(disk).format},id=${disk.target}`);
  }
  return launch('system', 'qemu-system-x86_64', args, dir, ownsDir, sockets, opts.disks);
}

/**
 * Starts `qemu-storage-daemon` with a file and a format node per disk (no guest device, no HMP).
 * @throws Error when it exits or its socket does not accept a QMP connection within 10 s (with its stderr).
 */
export async function startStorageDaemon(opts: StorageDaemonOptions): Promise<QemuInstance> {
  const { dir, ownsDir } = await resolveDir(opts.dir, 'qsd');
  const sockets = socketPaths(dir, opts.extraQmpSockets ?? 0);
  const args: string[] = [];
  sockets.forEach((path, i) => {
    args.push('--chardev', `socket,path=${path},server=on,wait=off,id=mon${i}`, '--monitor', `chardev=mon${i}`);
  });
  for (const disk of opts.disks) args.push(...blockdevArgs('--blockdev', disk));
  return launch('storage-daemon', 'qemu-storage-daemon', args, dir, ownsDir, sockets, opts.disks);
}

async function resolveDir(dir: string | undefined, label: string): Promise<{ dir: string; ownsDir: boolean }> {
  if (dir) return { dir, ownsDir: false };
  return { dir: await makeTempDir(label), ownsDir: true };
}

function socketPaths(dir: string, extra: number): string[] {
  return [join(dir, 'qmp.sock'), ...Array.from({ length: extra }, (_, i) => join(dir, `qmp-${i + 1}.sock`))];
}

/** A process's output so far (the tail when long), with a wait for new text to match. */
class CapturedText {
  text = '';
  #offset = 0; // characters dropped from the front
  #waiters = new Set<() => void>();

  append(chunk: Buffer | string): void {
    this.text += chunk.toString();
    if (this.text.length > MAX_CAPTURED_CHARS) {
      const drop = this.text.length - MAX_CAPTURED_CHARS / 2;
      this.text = this.text.slice(drop);
      this.#offset += drop;
    }
    for (const wake of [...this.#waiters]) wake();
  }

  /** A position that stays valid when the front is dropped. */
  mark(): number {
    return this.#offset + this.text.length;
  }

  since(mark: number): string {
    return this.text.slice(Math.max(0, mark - this.#offset));
  }

  /** Resolves true once `test(text since mark)` holds, false after `timeoutMs`. */
  until(mark: number, test: (text: string) => boolean, timeoutMs: number): Promise<boolean> {
    if (test(this.since(mark))) return Promise.resolve(true);
    return new Promise((resolve) => {
      const finish = (value: boolean): void => {
        clearTimeout(timer);
        this.#waiters.delete(wake);
        resolve(value);
      };
      const wake = (): void => {
        if (test(this.since(mark))) finish(true);
      };
      const timer = setTimeout(() => finish(false), timeoutMs);
      this.#waiters.add(wake);
    });
  }
}

async function launch(
  kind: QemuInstance['kind'],
  binary: string,
  args: string[],
  dir: string,
  ownsDir: boolean,
  sockets: string[],
  disks: DiskSpec[],
): Promise<QemuInstance> {
  const child: ResultPromise = execa(binary, args, {
    reject: false,
    stdin: 'ignore',
    stdout: 'pipe',
    stderr: 'pipe',
    buffer: false,
    cleanup: true,
  });
  const stdout = new CapturedText();
  const stderr = new CapturedText();
  child.stdout?.on('data', (chunk: Buffer) => stdout.append(chunk));
  child.stderr?.on('data', (chunk: Buffer) => stderr.append(chunk));
  let running = child.pid !== undefined;
  let exitDescription = 'it exited';
  if (child.pid !== undefined) track(child.pid);
  const exited: Promise<void> = child.then(
    (result) => {
      exitDescription = result.signal
        ? `it was killed by ${result.signal}`
        : result.exitCode !== undefined
          ? `it exited with status ${result.exitCode}`
          : `it could not be run: ${result.shortMessage}`;
    },
    () => undefined,
  ).finally(() => {
    running = false;
    if (child.pid !== undefined) untrack(child.pid);
  });

  const killNow = async (): Promise<void> => {
    if (running) child.kill('SIGKILL');
    await exited;
  };

  let client: QmpClient;
  try {
    client = await connectWhenReady(sockets[0]!, exited, () => running, () => stderr.text, binary, () => exitDescription);
  } catch (error) {
    await killNow();
    if (ownsDir) await removeTempDir(dir);
    throw error;
  }

  let stopping: Promise<void> | undefined;
  const instance: QemuInstance = {
    kind,
    dir,
    qmpPath: sockets[0]!,
    extraQmpPaths: sockets.slice(1),
    pid: child.pid!,
    client,
    disks,
    get running() {
      return running;
    },
    output: () => ({ stdout: stdout.text, stderr: stderr.text }),
    guestWrite: (target, command) => {
      if (kind !== 'system') {
        return Promise.reject(new Error('guestWrite needs qemu-system (the storage daemon has no HMP or guest device)'));
      }
      return guestIo(client, stdout, stderr, target, command);
    },
    stop: () => {
      stopping ??= (async () => {
        if (running && !client.closed) {
          try {
            await client.execute('quit', undefined, { timeoutMs: 2000 });
          } catch (error) {
            if (!(error instanceof QmpClosedError)) child.kill('SIGTERM');
          }
        }
        if (running) {
          const timer = setTimeout(() => child.kill('SIGKILL'), STOP_TIMEOUT_MS);
          await exited;
          clearTimeout(timer);
        }
        await client.close();
        if (ownsDir) await removeTempDir(dir);
      })();
      return stopping;
    },
    kill: async () => {
      await killNow();
      await client.close();
    },
  };
  return instance;
}

async function connectWhenReady(
  path: string,
  exited: Promise<void>,
  isRunning: () => boolean,
  stderr: () => string,
  binary: string,
  exitDescription: () => string,
): Promise<QmpClient> {
  const deadline = Date.now() + STARTUP_TIMEOUT_MS;
  let lastError: unknown;
  while (Date.now() < deadline) {
    if (!isRunning()) break;
    try {
      return await QmpClient.connect({ path }, { timeoutMs: Math.max(500, deadline - Date.now()), name: 'harness' });
    } catch (error) {
      lastError = error;
      // The socket file appears a moment after the process starts: wait a little or until the process dies.
      if (!(error instanceof QmpConnectError)) break;
      await Promise.race([exited, new Promise((resolve) => setTimeout(resolve, 25))]);
    }
  }
  if (!isRunning()) await exited;
  const why = isRunning()
    ? `its QMP socket ${path} did not accept a connection within ${STARTUP_TIMEOUT_MS} ms`
    : exitDescription();
  const detail = lastError instanceof Error ? ` (last error: ${lastError.message})` : '';
  throw new Error(`${binary} did not start: ${why}${detail}; stderr:\n${stderr().trim()}`, { cause: lastError });
}

/** qemu-io commands whose completion prints a summary line ("... ops/sec)") or a "failed" line. */
const REPORTING_COMMANDS = new Set(['read', 'write', 'readv', 'writev', 'discard', 'aio_read', 'aio_write']);
const ERROR_PATTERN = /failed|not found|error|invalid|cannot|permission denied|read-only/i;

async function guestIo(
  client: QmpClient,
  stdout: CapturedText,
  stderr: CapturedText,
  target: string,
  command: string,
): Promise<string> {
  if (command.includes('"')) throw new Error(`guestWrite: the qemu-io command must not contain a double quote: ${command}`);
  const outMark = stdout.mark();
  const errMark = stderr.mark();
  const hmp = `qemu-io -d /machine/peripheral/${target}/virtio-backend "${command}"`;
  const reply = await client.execute<string>('human-monitor-command', { 'command-line': hmp });
  // qemu-io prints to QEMU's stdout, which may reach us a moment after the QMP reply: wait for its summary line.
  const reports = REPORTING_COMMANDS.has(command.trim().split(/\s+/)[0] ?? '');
  const done = (text: string): boolean => /ops\/sec\)\s*$|failed[^\n]*\n/m.test(text);
  let completed = false;
  if (reply.trim() === '') {
    completed = reports
      ? await stdout.until(outMark, done, 5000)
      : await stdout.until(outMark, () => false, 50); // commands without a summary: give their output a moment
  }
  const out = stdout.since(outMark);
  const err = stderr.since(errMark);
  const problems = [reply.trim(), ...out.split('\n').filter((l) => ERROR_PATTERN.test(l)), err.trim()].filter(
    (line) => line.length > 0 && ERROR_PATTERN.test(line),
  );
  if (problems.length > 0 || (reports && !completed)) {
    throw new Error(
      `guest qemu-io "${command}" on ${target} failed: ${problems.join('; ') || 'no completion reported within 5 s'}`,
    );
  }
  return out;
}

/**
 * `qemu-img create -f <format> <path> <size>`; format defaults to qcow2.
 * @throws Error with qemu-img's stderr when it fails.
 */
export async function createDisk(path: string, opts: { size: string | number; format?: 'qcow2' | 'raw' }): Promise<void> {
  await qemuImg(['create', '-q', '-f', opts.format ?? 'qcow2', path, String(opts.size)]);
}

/**
 * Runs qemu-io commands on an image that no QEMU has open (`-c 'write -P 0x33 0 1M'`, `-c 'read -P 0x33 0 1M'`):
 * writes of patterns or zeroes, and checks of what is there. Format defaults to qcow2 for `.qcow2` files, else raw.
 * `shared: true` opens read-only with `-U` (reading an image a running QEMU holds; its cache may hide recent writes).
 * @throws Error when qemu-io fails (exit status 1: failed I/O, pattern mismatch, bad command), with its output.
 */
export async function qemuIo(
  path: string,
  commands: string[],
  format?: 'qcow2' | 'raw',
  options: { shared?: boolean } = {},
): Promise<void> {
  const args = ['-f', format ?? diskFormat({ path }), ...(options.shared ? ['-r', '-U'] : [])];
  for (const command of commands) args.push('-c', command);
  args.push(path);
  const result = await execa('qemu-io', args, { reject: false, all: true });
  const output = result.all ?? '';
  if (result.exitCode !== 0 || /failed|not found/i.test(output)) {
    throw new Error(`qemu-io ${commands.map((c) => `-c '${c}'`).join(' ')} ${path} failed:\n${output.trim()}`);
  }
}

/**
 * Runs qemu-img and returns its stdout.
 * @throws Error (execa's, with stderr and the command line) when it exits non-zero.
 */
export async function qemuImg(args: string[]): Promise<string> {
  const result = await execa('qemu-img', args);
  return result.stdout;
}

/** Pids of the processes started here that are still running (for leak checks). */
export function livePids(): number[] {
  return [...liveProcesses];
}
