// Test harness: runs qemu-nbd on a unix socket inside a fleece-test- temp dir, and prepares images with qemu-img/qemu-io.
import { execa, type ResultPromise } from 'execa';
import { watch } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';

export interface QemuNbdOptions {
  /** Directory from makeTempDir(); the socket and pid file go there, so its path is on the command line. */
  dir: string;
  image: string;
  format?: 'raw' | 'qcow2';
  exportName?: string;
  bitmap?: string;
  readOnly?: boolean;
  shared?: number;
  persistent?: boolean;
  /** Extra qemu-nbd arguments (e.g. ['--discard=unmap']). */
  extraArgs?: string[];
}

export interface QemuNbdServer {
  socket: string;
  exportName: string;
  /** nbd+unix:///EXPORT?socket=PATH */
  uri: string;
  pid: number;
  /** Kills qemu-nbd (SIGTERM, then SIGKILL after 5 s) and waits until it exited. */
  stop(): Promise<void>;
}

/** Starts qemu-nbd and resolves once it listens (it writes its pid file after listen). */
export async function startQemuNbd(options: QemuNbdOptions): Promise<QemuNbdServer> {
  const socket = join(options.dir, 'nbd.sock');
  const pidFile = join(options.dir, 'qemu-nbd.pid');
  const exportName = options.exportName ?? '';
  const args = ['-k', socket, '--pid-file', pidFile, '-f', options.format ?? 'qcow2', '-x', exportName];
  if (options.bitmap) args.push('-B', options.bitmap);
  if (options.readOnly) args.push('-r');
  if (options.shared !== undefined) args.push('-e', String(options.shared));
  if (options.persistent ?? true) args.push('-t');
  args.push(...(options.extraArgs ?? []), options.image);
  const child: ResultPromise = execa('qemu-nbd', args, { reject: false, stdin: 'ignore', stdout: 'ignore', stderr: 'pipe', cwd: options.dir });
  const pid = child.pid;
  if (pid === undefined) throw new Error('qemu-nbd did not start');
  const stop = async (): Promise<void> => {
    if (child.exitCode === null && !child.killed) child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
    await child;
    clearTimeout(timer);
  };
  try {
    await new Promise<void>((resolve, reject) => {
      const watcher = watch(options.dir);
      const check = (): void => {
        readFile(pidFile, 'utf8').then(
          (text) => {
            if (text.trim() === String(pid)) {
              watcher.close();
              resolve();
            }
          },
          () => undefined,
        );
      };
      watcher.on('change', check);
      void child.then((result) => {
        watcher.close();
        reject(new Error(`qemu-nbd exited (code ${String(result.exitCode)}) before listening: ${String(result.stderr)}`));
      });
      check();
    });
  } catch (error) {
    await stop();
    throw error;
  }
  return { socket, exportName, uri: `nbd+unix:///${exportName}?socket=${socket}`, pid, stop };
}

/** Runs qemu-img with arguments; throws with its stderr on failure. */
export async function qemuImg(...args: string[]): Promise<string> {
  const { stdout } = await execa('qemu-img', args);
  return stdout;
}

/** Runs qemu-io commands on an image offline (`qemu-io -f FORMAT -c CMD ... IMAGE`); offline writes mark enabled bitmaps dirty. */
export async function qemuIo(image: string, commands: string[], format: 'raw' | 'qcow2' = 'qcow2'): Promise<void> {
  const args = ['-f', format];
  for (const c of commands) args.push('-c', c);
  args.push(image);
  const { stdout } = await execa('qemu-io', args);
  if (/error|failed/i.test(stdout)) throw new Error(`qemu-io ${commands.join('; ')}: ${stdout}`);
}
