// Runs fleeced: the job manager, the API on a unix socket (mode 0600) and optionally on TCP (HTTPS, TLS 1.2+, with a
// bearer token), exit-when-idle, and an orderly stop.
import { existsSync } from 'node:fs';
import { chmod, mkdir, unlink } from 'node:fs/promises';
import { createConnection } from 'node:net';
import { dirname } from 'node:path';
import { JobManager } from '../app/job-manager.js';
import { ConflictError } from '../util/errors.js';
import { getLogger, type Logger } from '../util/logger.js';
import type { DaemonConfig } from './config.js';
import { readHttpsFiles, readToken } from './config.js';
import { registerRepositoryKeys } from '../app/repo-init.js';
import type { Api } from './context.js';
import { buildServer } from './server.js';
import { daemonVersion } from './version.js';

const log = getLogger('daemon');

async function socketInUse(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const conn = createConnection(path);
    conn.once('connect', () => {
      conn.destroy();
      resolve(true);
    });
    conn.once('error', () => resolve(false));
  });
}

export interface RunningDaemon {
  manager: JobManager;
  servers: Api[];
  /** Resolves when the daemon stopped (signal, idle exit, stop()). */
  stopped: Promise<void>;
  stop(reason: string): Promise<void>;
}

/**
 * Starts the daemon. Throws InvalidInputError (token file), ConflictError (another daemon listens on the socket),
 * and listen errors.
 */
export async function startDaemon(config: DaemonConfig, logger?: Logger): Promise<RunningDaemon> {
  if (config.repositoryKeys) registerRepositoryKeys(config.repositoryKeys);
  const token = config.tcp && config.tokenFile ? await readToken(config.tokenFile) : undefined;
  const https = config.tcp && config.https ? await readHttpsFiles(config.https) : undefined;
  await mkdir(config.stateDir, { recursive: true, mode: 0o700 });
  await mkdir(config.runDir, { recursive: true, mode: 0o700 });
  await mkdir(dirname(config.socket), { recursive: true, mode: 0o700 });
  if (existsSync(config.socket)) {
    if (await socketInUse(config.socket)) {
      throw new ConflictError(`another fleeced is listening on ${config.socket}`, { hint: 'stop it first, or give another --socket' });
    }
    await unlink(config.socket);
  }

  const manager = await JobManager.open({
    stateDir: config.stateDir,
    configDir: config.configDir,
    runDir: config.runDir,
    maxParallelJobs: config.maxParallelJobs,
    ...(config.nbdTls ? { nbdTls: config.nbdTls } : {}),
    ...(config.scrub ? { scrub: config.scrub } : {}),
  });
  const ctx = { manager, version: daemonVersion(), startedAt: Date.now() };
  const servers: Api[] = [];
  try {
    const local = await buildServer(ctx, logger ? { logger } : {});
    servers.push(local);
    const oldMask = process.umask(0o177);
    try {
      await local.listen({ path: config.socket });
    } finally {
      process.umask(oldMask);
    }
    await chmod(config.socket, 0o600);
    if (config.tcp && token) {
      const remote = await buildServer(ctx, { token, ...(https ? { https } : {}), ...(logger ? { logger } : {}) });
      servers.push(remote);
      await remote.listen({ host: config.tcp.host, port: config.tcp.port });
    }
  } catch (error) {
    for (const server of servers) await server.close().catch(() => undefined);
    await manager.close();
    throw error;
  }

  let resolveStopped!: () => void;
  const stopped = new Promise<void>((resolve) => {
    resolveStopped = resolve;
  });
  let stopping: Promise<void> | undefined;
  let idleTimer: NodeJS.Timeout | undefined;
  const stop = (reason: string): Promise<void> => {
    stopping ??= (async () => {
      log.info({ reason }, 'stopping');
      if (idleTimer) clearTimeout(idleTimer);
      unsubscribe?.();
      await manager.close();
      for (const server of servers) await server.close().catch((error: unknown) => log.warn({ err: error }, 'close failed'));
      await unlink(config.socket).catch(() => undefined);
      resolveStopped();
    })();
    return stopping;
  };

  let unsubscribe: (() => void) | undefined;
  if (config.exitWhenIdle !== undefined) {
    const idleMs = config.exitWhenIdle * 1000;
    const arm = () => {
      if (idleTimer) clearTimeout(idleTimer);
      idleTimer = undefined;
      if (manager.activeCount() === 0) {
        idleTimer = setTimeout(() => void stop(`no job for ${config.exitWhenIdle} s`), idleMs);
      }
    };
    unsubscribe = manager.subscribe((event) => {
      if (event.type === 'state') arm();
    });
    arm();
  }
  log.info({ socket: config.socket, tcp: config.tcp, https: config.tcp ? https !== undefined : undefined, pid: process.pid }, 'fleeced listening');
  return { manager, servers, stopped, stop };
}
