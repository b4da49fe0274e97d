// fleeced's configuration: a JSON file (default <configDir>/fleeced.conf) overridden by command-line flags.
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { isIP } from 'node:net';
import { nbdTlsFromSettings, type NbdTls } from '../app/nbd-tls-settings.js';
import { resolveConfigDir, resolveRunDir, resolveStateDir } from '../app/paths.js';
import { InvalidInputError } from '../util/errors.js';

/** Every option of the daemon, as the file and the flags give them (all optional). */
export interface DaemonConfigInput {
  socket?: string;
  /** `host:port` to listen on TCP as well (needs tokenFile, and tlsCert + tlsKey unless allowPlainLoopback). */
  tcp?: string;
  tokenFile?: string;
  /** HTTPS for the TCP listener: the certificate (chain) and its key, PEM files. */
  tlsCert?: string;
  tlsKey?: string;
  /** Let the TCP listener speak plain HTTP, on a loopback address only (127.0.0.0/8, ::1, localhost). */
  allowPlainLoopback?: boolean;
  /** NBD over TLS for TCP exports (backup-begin with a tcp `<server>`): x509 directory … */
  nbdTlsDir?: string;
  /** … or keys.psk file. */
  nbdTlsPsk?: string;
  /** x509: QEMU requires client certificates and the reader checks the server's (default true). */
  nbdTlsVerifyPeer?: boolean;
  stateDir?: string;
  configDir?: string;
  runDir?: string;
  maxParallelJobs?: number;
  logLevel?: string;
  logFile?: string;
  /** Exit once no job has been active for this many seconds. */
  exitWhenIdle?: number;
  /** Scrub this repository on a schedule (`fleece verify --sample`): off unless given with scrubIntervalHours. */
  scrubRepo?: string;
  /** Percent of the objects each scrub checks (default 5). */
  scrubSample?: number;
  scrubIntervalHours?: number;
  /** Encrypted repositories' keys (config file only): `{"/backups/vm": {"keyFile": "/etc/fleece/vm.key"}}`, or `passphraseFile`. */
  repositoryKeys?: Record<string, { keyFile?: string; passphraseFile?: string }>;
}

/** The resolved configuration. */
export interface DaemonConfig {
  socket: string;
  tcp?: { host: string; port: number };
  tokenFile?: string;
  /** HTTPS certificate and key files of the TCP listener; absent only with allowPlainLoopback on a loopback address. */
  https?: { certFile: string; keyFile: string };
  /** Set when the TCP listener speaks plain HTTP on loopback, as explicitly allowed. */
  allowPlainLoopback?: true;
  /** NBD TLS credentials of TCP exports. */
  nbdTls?: NbdTls;
  stateDir: string;
  configDir: string;
  runDir: string;
  maxParallelJobs: number;
  logLevel: string;
  logFile?: string;
  exitWhenIdle?: number;
  /** A scrub of `repo` every `intervalMs`, `percent` of its objects each time. */
  scrub?: { repo: string; percent: number; intervalMs: number };
  /** Encrypted repositories' keys by location (registered at start). */
  repositoryKeys?: Record<string, { keyFile?: string; passphraseFile?: string }>;
}

const KEYS: Record<keyof DaemonConfigInput, 'string' | 'number' | 'boolean' | 'object'> = {
  socket: 'string',
  tcp: 'string',
  tokenFile: 'string',
  tlsCert: 'string',
  tlsKey: 'string',
  allowPlainLoopback: 'boolean',
  nbdTlsDir: 'string',
  nbdTlsPsk: 'string',
  nbdTlsVerifyPeer: 'boolean',
  stateDir: 'string',
  configDir: 'string',
  runDir: 'string',
  maxParallelJobs: 'number',
  logLevel: 'string',
  logFile: 'string',
  exitWhenIdle: 'number',
  scrubRepo: 'string',
  scrubSample: 'number',
  scrubIntervalHours: 'number',
  repositoryKeys: 'object',
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

/** True for 127.0.0.0/8, ::1 (also as ::ffff:127.x.y.z) and localhost. */
export function isLoopbackHost(host: string): boolean {
  if (host === 'localhost') return true;
  if (isIP(host) === 4) return host.startsWith('127.');
  if (isIP(host) === 6) return host === '::1' || /^::ffff:127\./i.test(host);
  return false;
}

function parseTcp(value: string): { host: string; port: number } {
  const match = /^(?:\[([^\]]+)\]|([^:]+)):(\d{1,5})$/.exec(value);
  const port = match ? Number(match[3]) : NaN;
  if (!match || port < 1 || port > 65535) throw new InvalidInputError(`tcp '${value}' is not host:port`, { hint: 'e.g. 127.0.0.1:7777' });
  return { host: (match[1] ?? match[2]) as string, port };
}

/**
 * Merges file and flags (flags win) and fills defaults: dirs from the environment (FLEECE_STATE_DIR, …), the socket
 * `<runDir>/fleeced.sock`, 4 parallel jobs, log level info. TCP needs a token file and HTTPS (tlsCert + tlsKey), or
 * allowPlainLoopback on a loopback address. Throws InvalidInputError naming the option.
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
  if ((input.scrubRepo === undefined) !== (input.scrubIntervalHours === undefined)) {
    throw new InvalidInputError('scrubRepo and scrubIntervalHours go together', { hint: 'e.g. "scrubRepo": "/backups/repo", "scrubIntervalHours": 24, "scrubSample": 5' });
  }
  if (input.scrubRepo !== undefined && input.scrubIntervalHours !== undefined) {
    const percent = input.scrubSample ?? 5;
    if (!(percent > 0 && percent <= 100)) throw new InvalidInputError(`scrubSample ${percent} must be a percentage (more than 0, at most 100)`);
    if (!(input.scrubIntervalHours > 0)) throw new InvalidInputError(`scrubIntervalHours ${input.scrubIntervalHours} must be more than 0`);
    if (!input.scrubRepo.startsWith('/') && !input.scrubRepo.startsWith('s3://')) throw new InvalidInputError(`scrubRepo '${input.scrubRepo}' must be an absolute path or an s3:// URL`);
    config.scrub = { repo: input.scrubRepo, percent, intervalMs: input.scrubIntervalHours * 3_600_000 };
  }
  if (config.tcp && !config.tokenFile) {
    throw new InvalidInputError(`tcp ${input.tcp} needs a token file`, { hint: 'give --token-file (tokenFile) with the bearer token clients must send' });
  }
  if ((input.tlsCert === undefined) !== (input.tlsKey === undefined)) {
    throw new InvalidInputError(`tlsCert and tlsKey go together: only ${input.tlsCert !== undefined ? 'tlsCert' : 'tlsKey'} is given`, {
      hint: 'give both the certificate and its private key (--tls-cert, --tls-key)',
    });
  }
  if (input.tlsCert !== undefined && input.tlsKey !== undefined) config.https = { certFile: input.tlsCert, keyFile: input.tlsKey };
  if (config.tcp && !config.https) {
    if (!input.allowPlainLoopback) {
      throw new InvalidInputError(`tcp ${input.tcp} needs HTTPS: the token and every reply would cross the network in clear text`, {
        hint: 'give --tls-cert and --tls-key (tlsCert, tlsKey); plain HTTP only on a loopback address with --allow-plain-loopback (allowPlainLoopback)',
      });
    }
    if (!isLoopbackHost(config.tcp.host)) {
      throw new InvalidInputError(`allowPlainLoopback: tcp ${input.tcp} is not a loopback address, so it needs HTTPS`, {
        hint: 'listen on 127.0.0.1 or ::1, or give --tls-cert and --tls-key',
      });
    }
    config.allowPlainLoopback = true;
  }
  const nbdTls = nbdTlsFromSettings(
    {
      ...(input.nbdTlsDir !== undefined ? { dir: input.nbdTlsDir } : {}),
      ...(input.nbdTlsPsk !== undefined ? { psk: input.nbdTlsPsk } : {}),
      ...(input.nbdTlsVerifyPeer !== undefined ? { verifyPeer: input.nbdTlsVerifyPeer } : {}),
    },
    'nbdTlsDir/nbdTlsPsk',
  );
  if (nbdTls) config.nbdTls = nbdTls;
  if (input.repositoryKeys !== undefined) config.repositoryKeys = checkRepositoryKeys(input.repositoryKeys);
  return config;
}

/** `repositoryKeys`: absolute locations (or s3://), each with exactly one absolute keyFile or passphraseFile. */
function checkRepositoryKeys(value: unknown): Record<string, { keyFile?: string; passphraseFile?: string }> {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new InvalidInputError('repositoryKeys must be an object of repository location → {keyFile} or {passphraseFile}');
  const out: Record<string, { keyFile?: string; passphraseFile?: string }> = {};
  for (const [location, source] of Object.entries(value as Record<string, unknown>)) {
    if (!location.startsWith('/') && !location.startsWith('s3://')) throw new InvalidInputError(`repositoryKeys: '${location}' is not an absolute directory or an s3:// URL`);
    const s = source as Record<string, unknown> | null;
    const keys = typeof s === 'object' && s !== null ? Object.keys(s) : [];
    const [kind] = keys;
    if (keys.length !== 1 || (kind !== 'keyFile' && kind !== 'passphraseFile') || typeof s![kind] !== 'string' || !(s![kind] as string).startsWith('/')) {
      throw new InvalidInputError(`repositoryKeys['${location}'] must be {"keyFile": "/absolute/path"} or {"passphraseFile": "/absolute/path"}`);
    }
    out[location] = { [kind]: s![kind] as string };
  }
  return out;
}

/** The HTTPS certificate and key (PEM). Throws InvalidInputError naming the file that cannot be read. */
export async function readHttpsFiles(https: { certFile: string; keyFile: string }): Promise<{ cert: Buffer; key: Buffer }> {
  const read = async (path: string, what: string) => {
    try {
      return await readFile(path);
    } catch (error) {
      throw new InvalidInputError(`cannot read the HTTPS ${what} ${path}: ${(error as Error).message}`, { cause: error, hint: `check tls${what === 'certificate' ? 'Cert' : 'Key'}` });
    }
  };
  return { cert: await read(https.certFile, 'certificate'), key: await read(https.keyFile, 'key') };
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
