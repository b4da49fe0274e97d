// What every CLI command receives: the global options parsed once into a typed object, and output helpers.
import { resolveConfigDir, resolveRunDir, resolveStateDir } from '../app/paths.js';
import { createProgressReporter, type ProgressReporter } from './progress.js';

export interface GlobalOptions {
  stateDir?: string;
  configDir?: string;
  runDir?: string;
  json?: boolean;
  quiet?: boolean;
  verbose?: boolean;
  logFile?: string;
  /** Path of the fleeced API socket; default <runDir>/fleeced.sock. */
  daemonSocket?: string;
}

export interface CliContext {
  stateDir: string;
  configDir: string;
  runDir: string;
  json: boolean;
  quiet: boolean;
  verbose: boolean;
  daemonSocket: string;
  /** Writes a result line to stdout (suppressed by nothing: results are what scripts read). */
  print(text: string): void;
  /** Writes a JSON document to stdout. */
  printJson(value: unknown): void;
  /** Writes a status line to stderr unless --quiet or --json. */
  info(text: string): void;
  progress(): ProgressReporter;
  /** Aborted on SIGINT/SIGTERM; long commands pass it down so cleanup runs. */
  signal: AbortSignal;
}

export function createCliContext(options: GlobalOptions, signal: AbortSignal, env: NodeJS.ProcessEnv = process.env): CliContext {
  const runDir = options.runDir ?? resolveRunDir(env);
  const json = options.json ?? false;
  const quiet = options.quiet ?? false;
  return {
    stateDir: resolveStateDir(options.stateDir, env),
    configDir: resolveConfigDir(options.configDir, env),
    runDir,
    json,
    quiet,
    verbose: options.verbose ?? false,
    daemonSocket: options.daemonSocket ?? env.FLEECE_DAEMON_SOCKET ?? `${runDir}/fleeced.sock`,
    print: (text) => process.stdout.write(text.endsWith('\n') ? text : `${text}\n`),
    printJson: (value) => process.stdout.write(`${JSON.stringify(value, null, 2)}\n`),
    info: (text) => {
      if (!quiet && !json) process.stderr.write(`${text}\n`);
    },
    progress: () => createProgressReporter({ quiet, json }),
    signal,
  };
}
