// Shared by the fault suite's cases: a CLI paused at a phase (FLEECE_TEST_PAUSE_AT, src/util/test-pause.ts), the
// backup containers of a posix repository, every file in a directory (temporary ones too, to prove a failed backup
// left nothing), what libvirt still holds for a domain.
import { execa, type ResultPromise } from 'execa';
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { CLI, cliEnv } from '../e2e/helpers.js';

/** The backup containers (`xx/yy/<id>`) in a posix repository. */
export async function containers(repo: string): Promise<string[]> {
  const out: string[] = [];
  for (const a of await readdir(repo).catch(() => [])) {
    if (a.startsWith('_') || a.startsWith('.')) continue;
    for (const b of await readdir(join(repo, a)).catch(() => [])) {
      for (const id of await readdir(join(repo, a, b)).catch(() => [])) out.push(id);
    }
  }
  return out.sort();
}

/** Every file under `root` (dot files and temporary files too), as sorted relative paths; [] when it does not exist. */
export async function filesUnder(root: string): Promise<string[]> {
  const entries = await readdir(root, { recursive: true, withFileTypes: true }).catch(() => []);
  return entries.filter((e) => !e.isDirectory()).map((e) => join(e.parentPath ?? e.path, e.name).slice(root.length + 1)).sort();
}

export interface PausedCli {
  /** The running CLI: `child.kill('SIGUSR2')` goes on; await it for its result once resumed or killed. */
  child: ResultPromise<{ reject: false }>;
  /** What it printed on stderr so far. */
  stderr(): string;
}

/** Starts `fleece ...args` paused at `phase`; resolves once it says so, rejects when it ends before. */
export async function pausedAt(dir: string, args: string[], phase: string): Promise<PausedCli> {
  const child = execa(process.execPath, [CLI, ...args], {
    env: { ...cliEnv(dir), FLEECE_TEST_PAUSE_AT: phase }, reject: false, timeout: 300_000,
  });
  let stderr = '';
  await new Promise<void>((resolve, reject) => {
    child.stderr!.on('data', (chunk: Buffer) => {
      stderr += chunk.toString();
      if (stderr.includes(`test pause at ${phase}`)) resolve();
    });
    child.then((r) => reject(new Error(`fleece ended (${r.exitCode}) before pausing at ${phase}: ${stderr}`)), reject);
  });
  return { child, stderr: () => stderr }; // wrapped: awaiting the execa promise itself would wait for the process to end
}

export const startPausedAt = pausedAt;

/**
 * Resolves with the first file under `root` that matches `pattern` and is not in `except` (polled: a writer's put
 * finishes in its own time); rejects after `limitMs`. Not a timing assertion: the bound only ends a hung wait.
 */
export async function waitForNewFile(root: string, pattern: RegExp, except: readonly string[], limitMs = 120_000): Promise<string> {
  const started = Date.now();
  for (;;) {
    const found = (await filesUnder(root)).find((f) => pattern.test(f) && !except.includes(f));
    if (found) return found;
    if (Date.now() - started > limitMs) throw new Error(`no new file matching ${pattern} appeared under ${root} in ${limitMs / 1000} s`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

/** The `fleece: …` error lines of a command's stderr (without the test pause's notice). */
export function errorLines(stderr: string): string[] {
  return stderr.split('\n').filter((line) => line.startsWith('fleece: ') && !line.startsWith('fleece: test pause'));
}

/** What libvirt and its QEMU hold for a domain: libvirt's job, QEMU's NBD exports and block jobs. */
export async function libvirtLeftovers(h: { virsh(args: string[]): Promise<string> }, domain: string): Promise<{ job: string; exports: unknown[]; jobs: unknown[] }> {
  const job = (await h.virsh(['domjobinfo', domain])).split('\n')[0]!.replace(/^Job type:\s*/, '').trim();
  const monitor = async (command: string) => (JSON.parse(await h.virsh(['qemu-monitor-command', domain, JSON.stringify({ execute: command })])) as { return: unknown[] }).return;
  return { job, exports: await monitor('query-block-exports'), jobs: await monitor('query-jobs') };
}

/** The domain's libvirt checkpoints, sorted. */
export async function checkpointNames(h: { virsh(args: string[]): Promise<string> }, domain: string): Promise<string[]> {
  return (await h.virsh(['checkpoint-list', domain, '--name'])).split('\n').map((l) => l.trim()).filter(Boolean).sort();
}
