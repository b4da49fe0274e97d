// Shared by fault cases: a fleece paused at a phase (FLEECE_TEST_PAUSE_AT, src/util/test-pause.ts); every file in a
// repository directory (temporary ones too), to prove a failed backup left nothing.
import { execa, type ResultPromise } from 'execa';
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { CLI, cliEnv } from '../e2e/helpers.js';

export interface PausedCli {
  /** The running fleece: `child.kill('SIGUSR2')` goes on; awaiting it waits for the process to end. */
  child: ResultPromise<{ reject: false; timeout: number; env: NodeJS.ProcessEnv }>;
}

/** Rejects when fleece ends before reaching `phase`. */
export async function startPausedAt(dir: string, args: string[], phase: string): Promise<PausedCli> {
  const child = execa(process.execPath, [CLI, ...args], { env: { ...cliEnv(dir), FLEECE_TEST_PAUSE_AT: phase }, reject: false, timeout: 180_000 });
  let stderr = '';
  await new Promise<void>((resolve, reject) => {
    child.stderr!.on('data', (chunk: Buffer) => {
      stderr += chunk.toString();
      if (stderr.includes(`test pause at ${phase}`)) resolve();
    });
    child.then((r) => reject(new Error(`fleece ended (${r.exitCode}) before pausing at ${phase}: ${stderr}`)), reject);
  });
  return { child }; // wrapped: awaiting the execa promise itself would wait for the process to end
}

/** Every file under `root` (dot files and temporary files too), as sorted relative paths. */
export async function filesUnder(root: string): Promise<string[]> {
  const entries = await readdir(root, { recursive: true, withFileTypes: true });
  return entries.filter((e) => !e.isDirectory()).map((e) => join(e.parentPath, e.name).slice(root.length + 1)).sort();
}

/**
 * Resolves with the first file under `root` that matches `pattern` and is not in `except` (polled: a writer's put
 * finishes in its own time); rejects after `limitMs`. Not a timing assertion: the bound only ends a hung wait.
 */
export async function waitForNewFile(root: string, pattern: RegExp, except: readonly string[], limitMs = 120_000): Promise<string> {
  const started = Date.now();
  for (;;) {
    const found = (await filesUnder(root).catch(() => [])).find((f) => pattern.test(f) && !except.includes(f));
    if (found) return found;
    if (Date.now() - started > limitMs) throw new Error(`no new file matching ${pattern} appeared under ${root} in ${limitMs / 1000} s`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

/** The `fleece: …` error lines of a command's stderr (without the test pause's notice). */
export function errorLines(stderr: string): string[] {
  return stderr.split('\n').filter((line) => line.startsWith('fleece: ') && !line.startsWith('fleece: test pause'));
}
