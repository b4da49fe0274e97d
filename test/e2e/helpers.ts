// Runs the built fleece CLI (dist/src/cli/main.js) as a child process, with state, config and run directories
// inside a fleece-test- directory; raw reference copies of live images; what QEMU still holds.
import { execa, type ResultPromise } from 'execa';
import { existsSync } from 'node:fs';
import { join } from 'node:path';

export const ROOT = process.cwd();
export const CLI = process.env.FLEECE_CLI ?? join(ROOT, 'dist', 'src', 'cli', 'main.js');

export interface CliResult {
  exitCode: number;
  stdout: string;
  stderr: string;
}

/** The environment and global flags of one test's fleece: everything under `dir`. */
export function cliEnv(dir: string): NodeJS.ProcessEnv {
  return {
    ...process.env,
    FLEECE_STATE_DIR: join(dir, 'state'),
    FLEECE_CONFIG_DIR: join(dir, 'config'),
    FLEECE_RUN_DIR: join(dir, 'run'),
    FLEECE_LOG_LEVEL: 'silent',
  };
}

function ensureBuilt(): void {
  if (!existsSync(CLI)) throw new Error(`${CLI} is missing: run \`npx tsc -p tsconfig.json\` (or npm run build) first`);
}

/** Starts `node dist/src/cli/main.js ...args` (stdout/stderr piped; never rejects on a non-zero exit). */
export function startCli(dir: string, args: string[]): ResultPromise<{ reject: false; all: false }> {
  ensureBuilt();
  return execa(process.execPath, [CLI, ...args], { env: cliEnv(dir), reject: false, all: false, timeout: 120_000 });
}

/** Runs the CLI to its end. */
export async function runCli(dir: string, args: string[]): Promise<CliResult> {
  const result = await startCli(dir, args);
  return { exitCode: result.exitCode ?? -1, stdout: String(result.stdout), stderr: String(result.stderr) };
}

/** Runs the CLI with --json and parses its stdout; throws with its stderr when it failed. */
export async function runCliJson<T>(dir: string, args: string[]): Promise<T> {
  const result = await runCli(dir, [...args, '--json']);
  if (result.exitCode !== 0) throw new Error(`fleece ${args.join(' ')} exited ${result.exitCode}: ${result.stderr}`);
  return JSON.parse(result.stdout) as T;
}

/** The `--json` document of `fleece backup`. */
export interface BackupJson {
  vm: string;
  level: 'full' | 'incremental';
  reason: string;
  checkpoint: string | null;
  incrementalFrom: string | null;
  groupId: string;
  controlPlane: 'qmp' | 'libvirt' | 'offline';
  disks: {
    disk: string; level: 'full' | 'incremental'; reason: string; backupId: string; parentId: string | null;
    bytesRead: number; bytesStored: number; objects: number; size: number;
  }[];
  skipped: { disk: string; reason: string }[];
  durationMs: number;
  bytesRead: number;
  bytesStored: number;
}
