// A private fleeced for one backup-begin when none runs: detached, exits 5 s after its last job ended.
import { spawn } from 'node:child_process';
import { closeSync, existsSync, openSync, readFileSync } from 'node:fs';
import { copyFile, mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as delay } from 'node:timers/promises';
import type { VmEntry } from '../../app/vm-registry.js';
import { VmRegistry } from '../../app/vm-registry.js';
import { AbortedError, FleeceError } from '../../util/errors.js';
import type { CliContext } from '../context.js';
import { detectDaemon, type DaemonClient } from '../daemon-client.js';

/** Seconds the private daemon stays up once no job is active. */
export const PRIVATE_DAEMON_IDLE_SECONDS = 5;

export interface PrivateDaemon {
  pid: number;
  client: DaemonClient;
  /** Its stdout and stderr. */
  logFile: string;
  /** Its configuration directory: a copy of the user's VM registry plus the --qmp VM. */
  configDir: string;
  /** Sends SIGTERM (for a backup-begin that failed before a job existed). */
  stop(): void;
}

/** The compiled daemon entry beside this file (dist/src/daemon/main.js). */
export function daemonMainPath(): string {
  return fileURLToPath(new URL('../../daemon/main.js', import.meta.url));
}

function logTail(file: string): string {
  try {
    return readFileSync(file, 'utf8').trimEnd().split('\n').slice(-5).join('\n');
  } catch {
    return '';
  }
}

/**
 * Starts `node dist/src/daemon/main.js --socket <ctx.daemonSocket> --exit-when-idle 5 …` detached, with stdio to
 * `<runDir>/fleeced-private.log`, its registry a copy of the user's plus `vm` (the --qmp VM), and waits until it
 * answers /v1/health. It removes both once it stopped.
 * @throws FleeceError when fleeced is not built, exits early (with the end of its log) or does not answer in 20 s;
 *   AbortedError when the context's signal fires (the daemon is stopped then).
 */
export async function startPrivateDaemon(ctx: CliContext, vm?: VmEntry): Promise<PrivateDaemon> {
  const main = daemonMainPath();
  if (!existsSync(main)) {
    throw new FleeceError('INTERNAL', `fleeced is not built: ${main} does not exist`, { hint: 'run npm run build' });
  }
  await mkdir(ctx.runDir, { recursive: true, mode: 0o700 });
  const configDir = join(ctx.runDir, 'fleeced-private');
  await rm(configDir, { recursive: true, force: true });
  await mkdir(configDir, { recursive: true, mode: 0o700 });
  const userVms = join(ctx.configDir, 'vms.json');
  if (existsSync(userVms)) await copyFile(userVms, join(configDir, 'vms.json'));
  if (vm) {
    const registry = new VmRegistry(configDir);
    if ((await registry.list()).some((entry) => entry.name === vm.name)) await registry.remove(vm.name);
    await registry.add(vm);
  }
  const logFile = join(ctx.runDir, 'fleeced-private.log');
  const fd = openSync(logFile, 'a', 0o600);
  const args = [
    main,
    '--socket', ctx.daemonSocket,
    '--state-dir', ctx.stateDir,
    '--config-dir', configDir,
    '--run-dir', ctx.runDir,
    '--exit-when-idle', String(PRIVATE_DAEMON_IDLE_SECONDS),
    // Nothing of it stays in the run directory once it stopped (a daemon that fails to start keeps its log for us).
    '--remove-on-exit', configDir, '--remove-on-exit', logFile,
  ];
  const child = spawn(process.execPath, args, { detached: true, stdio: ['ignore', fd, fd] });
  closeSync(fd);
  let exited: string | undefined;
  child.once('exit', (code, signal) => {
    exited = signal ? `signal ${signal}` : `exit code ${code}`;
  });
  child.once('error', (error) => {
    exited = error.message;
  });
  child.unref();
  const pid = child.pid ?? -1;
  const stop = () => {
    if (exited === undefined && pid > 0) {
      try {
        process.kill(pid, 'SIGTERM');
      } catch {
        // already gone
      }
    }
  };
  // fleeced announces nothing but its socket, so wait for /v1/health, bounded by its exit and 20 s.
  const deadline = Date.now() + 20_000;
  for (;;) {
    if (ctx.signal.aborted) {
      stop();
      throw new AbortedError('starting a private fleeced was aborted');
    }
    if (exited !== undefined) {
      throw new FleeceError('INTERNAL', `the private fleeced stopped at start (${exited}): ${logTail(logFile) || 'no output'}`, {
        hint: `see ${logFile}`,
      });
    }
    const client = await detectDaemon(ctx.daemonSocket, { timeoutMs: 1000 });
    if (client) return { pid, client, logFile, configDir, stop };
    if (Date.now() > deadline) {
      stop();
      throw new FleeceError('INTERNAL', `the private fleeced did not answer on ${ctx.daemonSocket} within 20 s`, { hint: `see ${logFile}` });
    }
    await delay(50);
  }
}
