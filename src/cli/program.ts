// The fleece command line: global options, the repository commands, the VM registry and the virsh-like commands.
import { resolve as resolvePath } from 'node:path';
import { Command, Option } from 'commander';
import { setRootLogger } from '../util/logger.js';
import { createCliContext, type CliContext, type GlobalOptions } from './context.js';
import { registerBackupCommand } from './commands/backup.js';
import { registerRepositoryCommands } from './commands/repository.js';
import { registerRetentionCommands } from './commands/retention.js';
import { registerVmCommands } from './commands/vm.js';
import { registerVirshCommands } from './commands/virsh.js';
import { registerRecoverCommand } from './commands/recover.js';
import { registerProviderCommands } from './commands/provider.js';
import { registerRepoCommands } from './commands/repo.js';

export const VERSION = '0.1.0';

/** Points the shared pino logger at --log-file (debug with --verbose, info otherwise). */
async function setupLogging(options: GlobalOptions): Promise<void> {
  if (!options.logFile) return;
  const { pino } = await import('pino');
  const destination = pino.destination({ dest: options.logFile, sync: true, mkdir: true });
  setRootLogger(pino({ name: 'fleece', level: options.verbose ? 'debug' : 'info' }, destination));
}

/**
 * Builds the program; `signal` is aborted on SIGINT/SIGTERM and reaches every long command through its context.
 * Commander's own errors are thrown (exitOverride) so main maps them to exit code 2.
 */
export function buildProgram(signal: AbortSignal, env: NodeJS.ProcessEnv = process.env): Command {
  const program = new Command('fleece');
  program
    .description('Point-in-time backups of running QEMU VMs (full and incremental, via fleecing) into a Cinder-format repository')
    .version(VERSION, '-V, --version')
    .option('--state-dir <dir>', 'state directory: checkpoint metadata, scratch images (default $FLEECE_STATE_DIR or /var/lib/fleece)')
    .option('--config-dir <dir>', 'configuration directory: registered VMs (default $FLEECE_CONFIG_DIR or /etc/fleece)')
    .addOption(new Option('--run-dir <dir>', 'runtime directory for NBD sockets (default $FLEECE_RUN_DIR or /run/fleece)').hideHelp())
    .option('--daemon-socket <path>', 'the fleeced API socket (virsh-like commands)')
    .option('--json', 'print results as JSON (for scripts); no progress output')
    .option('-q, --quiet', 'print only results and errors')
    .option('-v, --verbose', 'debug logs (with --log-file) and stack traces on errors')
    .option('--log-file <file>', 'write logs (pino JSON lines) to this file')
    .option('--key-file <file>', 'the key of an encrypted repository (32 bytes; default $FLEECE_KEY_FILE)')
    .option('--passphrase-file <file>', 'the passphrase of an encrypted repository (default $FLEECE_PASSPHRASE_FILE, or $FLEECE_PASSPHRASE itself)')
    .showHelpAfterError('(run the command with --help for its usage)')
    .exitOverride()
    .configureOutput({
      outputError: (text, write) => write(`fleece: ${text.replace(/^error: /, '')}`),
    });
  program.hook('preAction', async () => setupLogging(program.opts<GlobalOptions>()));
  // The repository layer takes an encrypted repository's key from the environment (as the daemon's children do).
  program.hook('preAction', () => {
    const { keyFile, passphraseFile } = program.opts<{ keyFile?: string; passphraseFile?: string }>();
    if (keyFile !== undefined) process.env.FLEECE_KEY_FILE = resolvePath(keyFile);
    if (passphraseFile !== undefined) process.env.FLEECE_PASSPHRASE_FILE = resolvePath(passphraseFile);
  });
  const context = (): CliContext => createCliContext(program.opts<GlobalOptions>(), signal, env);
  registerBackupCommand(program, context);
  registerRepositoryCommands(program, context);
  registerRetentionCommands(program, context);
  registerVmCommands(program, context);
  registerVirshCommands(program, context);
  registerRecoverCommand(program, context);
  registerProviderCommands(program, context);
  registerRepoCommands(program, context);
  // Subcommands inherit exitOverride and the error output format.
  for (const command of program.commands) {
    command.exitOverride().showHelpAfterError('(run the command with --help for its usage)').configureOutput({
      outputError: (text, write) => write(`fleece: ${text.replace(/^error: /, '')}`),
    });
  }
  return program;
}
