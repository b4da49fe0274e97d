// fleeced's configuration: a JSON file (default <configDir>/fleeced.conf) overridden by command-line flags.
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { resolveConfigDir, resolveRunDir, resolveStateDir } from '../app/paths.js';
import { InvalidInputError } from '../util/errors.js';

/** Every option of the daemon, as the file and the flags give them (all optional). */
export interface DaemonConfigInput {
  socket?: string;
  /** `host:port` to listen on TCP as well (needs tokenFile). */
  tcp?: string;
  tokenFile?: string;
  stateDir?: string;
  configDir?: string;
  runDir?: string;
  maxParallelJobs?: number;
  logLevel?: string;
  logFile?: string;
  /** Exit once no job has been active for this many seconds. */
  exitWhenIdle?: number;
}

/** The resolved configuration. */
export interface DaemonConfig {
  socket: string;
  tcp?: { host: string; port: number };
  tokenFile?: string;
  stateDir: string;
  configDir: string;
  runDir: string;
  maxParallelJobs: number;
  logLevel: string;
  logFile?: string;
  exitWhenIdle?: number;
}

const KEYS: Record<keyof DaemonConfigInput, 'string' | 'number'> = {
  socket: 'string',
  tcp: 'string',
  tokenFile: 'string',
  stateDir: 'string',
  configDir: 'string',
  runDir: 'string',
  maxParallelJobs: 'number',
  logLevel: 'string',
  logFile: 'string',
  exitWhenIdle: 'number',
};

const LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'];

/** Reads a configuration file; an absent file is `{}` unless `required`. Throws InvalidInputError naming the key. */
export async function readConfigFile(path: string, required: boolean): Promise<DaemonConfigInput> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (error) {
    if (!required && (error as NodeJS.ErrnoException).code === 'ENOENT') return {};
    throw new InvalidInputError(`cannot read the configuration file ${path}: ${(error as Error).message}`, { cause: error });
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (error) {
    throw new InvalidInputError(`the configuration file ${path} is not valid JSON: ${(error as Error).message}`, { cause: error });
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
    throw new InvalidInputError(`the configuration file ${path} must hold a JSON object`);
  }
  const out: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(parsed)) {
    if (key.startsWith('//') || key === '$comment') continue;
    const type = KEYS[key as keyof DaemonConfigInput];
    if (!type) throw new InvalidInputError(`${path}: unknown option '${key}'`, { hint: `known options: ${Object.keys(KEYS).join(', ')}` });
    if (value === null) continue;
    if (typeof value !== type) throw new InvalidInputError(`${path}: option '${key}' must be a ${type}`);
    out[key] = value;
  }
  return out as DaemonConfigInput;
}

function parseTcp(value: string): { host: string; port: number } {
  const match = /^(?:\[([^\]]+)\]|([^:]+)):(\d{1,5})$/.exec(value);
  const port = match ? Number(match[3]) : NaN;
  if (!match || port < 1 || port > 65535) throw new InvalidInputError(`tcp '${value}' is not host:port`, { hint: 'e.g. 127.0.0.1:7777' });
  return { host: (match[1] ?? match[2]) as string, port };
}

/**
 * Merges file and flags (flags win) and fills defaults: dirs from the environment (FLEECE_STATE_DIR, …), the socket
 * `<runDir>/fleeced.sock`, 4 parallel jobs, log level info. Throws InvalidInputError naming the option.
 */
export function resolveDaemonConfig(file: DaemonConfigInput, flags: DaemonConfigInput, env: NodeJS.ProcessEnv = process.env): DaemonConfig {
  const input: DaemonConfigInput = { ...file };
  for (const [key, value] of Object.entries(flags)) if (value !== undefined) (input as Record<string, unknown>)[key] = value;
  const runDir = input.runDir ?? resolveRunDir(env);
  const maxParallelJobs = input.maxParallelJobs ?? 4;
  if (!Number.isInteger(maxParallelJobs) || maxParallelJobs < 1) {
    throw new InvalidInputError(`maxParallelJobs ${maxParallelJobs} must be a whole number of at least 1`);
  }
  const logLevel = input.logLevel ?? 'info';
  if (!LEVELS.includes(logLevel)) throw new InvalidInputError(`logLevel '${logLevel}' is unknown`, { hint: `use one of ${LEVELS.join(', ')}` });
  if (input.exitWhenIdle !== undefined && (!Number.isFinite(input.exitWhenIdle) || input.exitWhenIdle < 0)) {
    throw new InvalidInputError(`exitWhenIdle ${input.exitWhenIdle} must be a number of seconds (0 or more)`);
  }
  const config: DaemonConfig = {
    socket: input.socket ?? join(runDir, 'fleeced.sock'),
    stateDir: resolveStateDir(input.stateDir, env),
    configDir: resolveConfigDir(input.configDir, env),
    runDir,
    maxParallelJobs,
    logLevel,
  };
  if (input.tcp !== undefined) config.tcp = parseTcp(input.tcp);
  if (input.tokenFile !== undefined) config.tokenFile = input.tokenFile;
  if (input.logFile !== undefined) config.logFile = input.logFile;
  if (input.exitWhenIdle !== undefined) config.exitWhenIdle = input.exitWhenIdle;
  if (config.tcp && !config.tokenFile) {
    throw new InvalidInputError(`tcp ${input.tcp} needs a token file`, { hint: 'give --token-file (tokenFile) with the bearer token clients must send' });
  }
  return config;
}

/** The bearer token from its file (trimmed). Throws InvalidInputError when it is unreadable or empty. */
export async function readToken(path: string): Promise<string> {
  let token: string;
  try {
    token = (await readFile(path, 'utf8')).trim();
  } catch (error) {
    throw new InvalidInputError(`cannot read the token file ${path}: ${(error as Error).message}`, { cause: error });
  }
  if (token.length < 16) throw new InvalidInputError(`the token file ${path} holds no token of at least 16 characters`, { hint: 'write a long random token into it, e.g. openssl rand -hex 32' });
  return token;
}
