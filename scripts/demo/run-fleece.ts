// Runs the fleece CLI (dist/src/cli/main.js) as a child process the way a user would, timing it and sampling its peak RSS.
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { AbortedError } from '../../src/util/errors.js';

/** The project root (this file is compiled to dist/scripts/demo/). */
export const PROJECT_ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
/** The CLI entry point run with node: FLEECE_CLI when set (another build), else this tree's dist/src/cli/main.js. */
export const CLI_PATH = process.env.FLEECE_CLI ?? join(PROJECT_ROOT, 'dist', 'src', 'cli', 'main.js');

export interface RunFleeceOptions {
  /** 'inherit': the user sees stdout and stderr (progress); 'capture-stdout': stdout is returned, stderr shown. */
  output?: 'inherit' | 'capture-stdout' | 'capture';
  env?: NodeJS.ProcessEnv;
  /**
   * Measure the peak RSS with `/usr/bin/time -v` (exact, whole process) when it exists, instead of sampling
   * /proc/<pid>/status every 25 ms.
   */
  timeV?: boolean;
  /**
   * Aborting sends SIGTERM after 2 s if it still runs (a Ctrl-C on the terminal has already sent it SIGINT; the CLI
   * cleans up on either), then SIGKILL after 15 s.
   */
  signal?: AbortSignal;
}

export interface FleeceRun {
  args: string[];
  exitCode: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  seconds: number;
  /** Peak resident set of the fleece process in bytes; 0 when it could not be measured. */
  peakRssBytes: number;
  /** How peakRssBytes was measured. */
  rssSource: 'time -v' | 'VmHWM sampled';
}

const TIME_BINARY = '/usr/bin/time';

/** The process's peak resident set so far (VmHWM), or undefined once it has gone. */
export function readPeakRss(pid: number): number | undefined {
  try {
    const match = /^VmHWM:\s+(\d+)\s+kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return match ? Number(match[1]) * 1024 : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Runs `node dist/src/cli/main.js <args>` and resolves when it exits, whatever its status (check `exitCode`).
 * Throws AbortedError when `signal` aborted it, Error when node could not be started.
 */
export function runFleece(args: string[], options: RunFleeceOptions = {}): Promise<FleeceRun> {
  const output = options.output ?? 'inherit';
  const { signal } = options;
  if (signal?.aborted) return Promise.reject(new AbortedError('fleece was not started: interrupted'));
  const started = performance.now();
  const timeV = options.timeV === true && existsSync(TIME_BINARY);
  const timeFile = timeV ? join(mkdtempSync(join(tmpdir(), 'fleece-time-')), 'time.txt') : undefined;
  const [command, commandArgs] = timeFile
    ? [TIME_BINARY, ['-v', '-o', timeFile, process.execPath, CLI_PATH, ...args]]
    : [process.execPath, [CLI_PATH, ...args]];
  const child = spawn(command, commandArgs, {
    stdio: ['ignore', output === 'inherit' ? 'inherit' : 'pipe', output === 'capture' ? 'pipe' : 'inherit'],
    env: options.env ?? process.env,
  });
  let stdout = '';
  let stderr = '';
  child.stdout?.on('data', (chunk: Buffer) => { stdout += chunk.toString(); });
  child.stderr?.on('data', (chunk: Buffer) => { stderr += chunk.toString(); });
  let peak = 0;
  const sample = (): void => {
    if (child.pid !== undefined) peak = Math.max(peak, readPeakRss(child.pid) ?? 0);
  };
  const sampler = setInterval(sample, timeFile ? 60_000 : 25);
  const timers: NodeJS.Timeout[] = [];
  const onAbort = (): void => {
    timers.push(setTimeout(() => child.kill('SIGTERM'), 2_000), setTimeout(() => child.kill('SIGKILL'), 15_000));
  };
  signal?.addEventListener('abort', onAbort, { once: true });
  return new Promise((resolve, reject) => {
    child.once('error', (error) => {
      clearInterval(sampler);
      signal?.removeEventListener('abort', onAbort);
      reject(new Error(`could not run ${process.execPath} ${CLI_PATH}: ${error.message}`, { cause: error }));
    });
    child.once('close', (exitCode, exitSignal) => {
      clearInterval(sampler);
      for (const timer of timers) clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
      if (signal?.aborted) {
        reject(new AbortedError(`fleece ${args[0] ?? ''} was interrupted`));
        return;
      }
      const seconds = (performance.now() - started) / 1000;
      let rssSource: FleeceRun['rssSource'] = 'VmHWM sampled';
      if (timeFile) {
        const report = readTimeReport(timeFile);
        if (report.exitCode !== undefined) exitCode = report.exitCode;
        if (report.peakRssBytes !== undefined) {
          peak = report.peakRssBytes;
          rssSource = 'time -v';
        }
      }
      resolve({ args, exitCode, signal: exitSignal, stdout, stderr, seconds, peakRssBytes: peak, rssSource });
    });
  });
}

/** Reads what `/usr/bin/time -v -o file` wrote (then removes it): the peak RSS and the command's own exit status. */
function readTimeReport(file: string): { peakRssBytes?: number; exitCode?: number } {
  try {
    const text = readFileSync(file, 'utf8');
    const rss = /Maximum resident set size \(kbytes\): (\d+)/.exec(text);
    const status = /Exit status: (\d+)/.exec(text);
    return {
      ...(rss ? { peakRssBytes: Number(rss[1]) * 1024 } : {}),
      ...(status ? { exitCode: Number(status[1]) } : {}),
    };
  } catch {
    return {};
  } finally {
    rmSync(dirname(file), { recursive: true, force: true });
  }
}

/** The command line as a user would type it (for messages). */
export function describeRun(args: readonly string[]): string {
  return `fleece ${args.map((a) => (/^[\w@%+=:,./-]+$/.test(a) ? a : `'${a.replace(/'/g, `'\\''`)}'`)).join(' ')}`;
}

/**
 * Throws an Error naming the command, its status and what it printed, unless it exited 0.
 */
export function assertSucceeded(run: FleeceRun): void {
  if (run.exitCode === 0) return;
  const status = run.signal ? `was killed by ${run.signal}` : `exited with status ${run.exitCode}`;
  const printed = [run.stderr.trim(), run.stdout.trim()].filter(Boolean).join('\n');
  throw new Error(`${describeRun(run.args)} ${status}${printed ? `:\n${printed}` : ' (its messages are above)'}`);
}
