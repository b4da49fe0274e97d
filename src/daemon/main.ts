#!/usr/bin/env node
// fleeced: the fleece host daemon's command line (flags, configuration file, logging, signals).
import '../util/threadpool-size.js';
import { join, resolve } from 'node:path';
import { rm } from 'node:fs/promises';
import { Command, InvalidArgumentError } from 'commander';
import { pino } from 'pino';
import { resolveConfigDir } from '../app/paths.js';
import { describeError } from '../util/errors.js';
import { setRootLogger } from '../util/logger.js';
import { readConfigFile, resolveDaemonConfig, type DaemonConfigInput } from './config.js';
import { daemonVersion } from './version.js';

function number(name: string) {
  return (value: string): number => {
    const n = Number(value);
    if (!Number.isFinite(n) || n < 0) throw new InvalidArgumentError(`${name} must be a number`);
    return n;
  };
}

async function main(argv: string[]): Promise<number> {
  const program = new Command('fleeced')
    .description('fleece host daemon: HTTP API over a unix socket (and HTTPS over TCP with a bearer token) for VM backups')
    .version(daemonVersion())
    .option('--config <file>', 'JSON configuration file (default <config-dir>/fleeced.conf when it exists)')
    .option('--socket <path>', 'unix socket of the API (default <run-dir>/fleeced.sock)')
    .option('--tcp <host:port>', 'also listen on TCP, HTTPS (requires --token-file, --tls-cert and --tls-key)')
    .option('--token-file <path>', 'file holding the bearer token TCP clients must send')
    .option('--tls-cert <file>', 'HTTPS certificate (PEM) of the TCP listener')
    .option('--tls-key <file>', 'its private key (PEM)')
    .option('--allow-plain-loopback', 'let the TCP listener speak plain HTTP, on a loopback address only')
    .option('--nbd-tls-dir <dir>', 'NBD over TLS for TCP exports: x509 directory (ca-cert.pem, server-*.pem, client-*.pem)')
    .option('--nbd-tls-psk <file>', 'NBD over TLS for TCP exports: a keys.psk file (pre-shared key)')
    .option('--state-dir <dir>', 'state directory (checkpoints, job records); default $FLEECE_STATE_DIR or /var/lib/fleece')
    .option('--config-dir <dir>', 'configuration directory (registered VMs); default $FLEECE_CONFIG_DIR or /etc/fleece')
    .option('--run-dir <dir>', 'runtime directory (sockets); default $FLEECE_RUN_DIR or /run/fleece')
    .option('--max-jobs <n>', 'backup jobs running at the same time (default 4)', number('--max-jobs'))
    .option('--log-level <level>', 'fatal, error, warn, info (default), debug, trace or silent')
    .option('--log-file <path>', 'log to this file instead of stderr')
    .option('--exit-when-idle <seconds>', 'exit once no job has been active for this long', number('--exit-when-idle'))
    .option('--remove-on-exit <path>', 'remove this file or directory once stopped (repeatable; the private fleeced of backup-begin: its registry copy and log)',
      (path: string, paths: string[]) => [...paths, resolve(path)], [] as string[]);
  program.parse(argv);
  const o = program.opts<{
    config?: string;
    socket?: string;
    tcp?: string;
    tokenFile?: string;
    tlsCert?: string;
    tlsKey?: string;
    allowPlainLoopback?: boolean;
    nbdTlsDir?: string;
    nbdTlsPsk?: string;
    stateDir?: string;
    configDir?: string;
    runDir?: string;
    maxJobs?: number;
    logLevel?: string;
    logFile?: string;
    exitWhenIdle?: number;
    removeOnExit: string[];
  }>();
  const flags: DaemonConfigInput = {
    socket: o.socket,
    tcp: o.tcp,
    tokenFile: o.tokenFile,
    tlsCert: o.tlsCert,
    tlsKey: o.tlsKey,
    allowPlainLoopback: o.allowPlainLoopback,
    nbdTlsDir: o.nbdTlsDir !== undefined ? resolve(o.nbdTlsDir) : undefined,
    nbdTlsPsk: o.nbdTlsPsk !== undefined ? resolve(o.nbdTlsPsk) : undefined,
    stateDir: o.stateDir,
    configDir: o.configDir,
    runDir: o.runDir,
    maxParallelJobs: o.maxJobs,
    logLevel: o.logLevel,
    logFile: o.logFile,
    exitWhenIdle: o.exitWhenIdle,
  };
  const configFile = o.config ?? join(resolveConfigDir(o.configDir), 'fleeced.conf');
  const file = await readConfigFile(configFile, o.config !== undefined);
  const config = resolveDaemonConfig(file, flags);

  const logger = pino(
    { name: 'fleeced', level: config.logLevel },
    config.logFile ? pino.destination({ dest: config.logFile, mkdir: true, sync: false }) : pino.destination(2),
  );
  setRootLogger(logger);
  // A request must never take the daemon down: log what escaped instead of crashing.
  process.on('unhandledRejection', (reason) => logger.error({ err: reason }, 'unhandled rejection'));
  // Loaded only now: modules take their loggers from the root logger when they load.
  const { startDaemon } = await import('./daemon.js');
  const daemon = await startDaemon(config, logger);
  for (const signal of ['SIGTERM', 'SIGINT'] as const) {
    process.once(signal, () => void daemon.stop(signal));
  }
  await daemon.stopped;
  logger.flush();
  for (const path of o.removeOnExit) await rm(path, { recursive: true, force: true }).catch(() => undefined);
  return 0;
}

main(process.argv).then(
  (code) => process.exit(code),
  (error: unknown) => {
    process.stderr.write(`fleeced: ${describeError(error)}\n`);
    process.exit(error instanceof Error && 'code' in error && error.code === 'INVALID_INPUT' ? 2 : 1);
  },
);
