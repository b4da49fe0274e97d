// `fleece provider add | list | remove | show`: the registered external backup providers (app/provider-registry.ts),
// used with `fleece backup VM --provider NAME` and `fleece restore --provider NAME --backup ID --out FILE`.
import { resolve } from 'node:path';
import type { Command } from 'commander';
import type { BackupRequest } from '../../app/backup-request.js';
import type { ProviderBackupSummary, ProviderEntry, ProviderRestoreRequest } from '../../app/provider-backup.js';
import { FleeceError } from '../../util/errors.js';
import type { CliContext } from '../context.js';
import { collect } from '../errors.js';
import { formatBytes } from '../progress.js';

/** The provider machinery (typebox contracts, execa, the backup path), loaded by the command that runs, not at start-up. */
const providerApp = () => import('../../app/provider-backup.js');

function describe(entry: ProviderEntry): string {
  if (entry.kind === 'tool') return `tool driver ${entry.tool}`;
  const timeouts = entry.timeouts ? ` (timeouts: ${Object.entries(entry.timeouts).map(([v, s]) => `${v}=${s}s`).join(', ')})` : '';
  return `${entry.exec}${entry.config ? ` --config ${entry.config}` : ''}${timeouts}`;
}

export function registerProviderCommands(program: Command, context: () => CliContext): void {
  const provider = program
    .command('provider')
    .description('register external backup providers (the Proxmox-style provider contract, docs/providers.md) and tool drivers');

  provider
    .command('add')
    .description('register a provider: an executable speaking the provider contract (--exec), or a tool driver defined by a configuration file (--tool)')
    .argument('<name>', 'the name to use with --provider')
    .option('--exec <path>', 'the provider executable (called as `PATH VERB`, JSON on stdin and stdout)')
    .option('--config <file>', "with --exec: the provider's own configuration, passed in every request")
    .option('--timeout <verb=seconds>', 'with --exec: how long a verb may take (repeatable; e.g. backup-vm=7200)', collect)
    .option('--tool <config.json>', 'instead of --exec: a tool driver configuration (command templates and the output check)')
    .addHelpText('after', `
Examples:
  fleece provider add restic1 --exec /usr/local/lib/fleece/restic-provider --config /etc/fleece/restic1.json
  fleece provider add borg1 --tool /etc/fleece/borg-tool.json
  fleece backup vm1 --provider restic1
  fleece restore --provider restic1 --backup vm1-20260101T000000Z --out /tmp/vda.raw`)
    .action(async (name: string, flags: { exec?: string; config?: string; timeout?: string[]; tool?: string }) => {
      const ctx = context();
      if ((flags.exec === undefined) === (flags.tool === undefined)) {
        throw new FleeceError('USAGE', 'give either --exec PATH or --tool CONFIG.json', { hint: 'see `fleece provider add --help`' });
      }
      if (flags.tool !== undefined && (flags.config !== undefined || flags.timeout !== undefined)) {
        throw new FleeceError('USAGE', '--config and --timeout go with --exec; a tool driver has them in its configuration');
      }
      const { ProviderRegistry, parseTimeouts } = await providerApp();
      const entry = await new ProviderRegistry(ctx.configDir).add(flags.exec !== undefined
        ? {
          name, kind: 'exec', exec: resolve(flags.exec),
          ...(flags.config !== undefined ? { config: resolve(flags.config) } : {}),
          ...(flags.timeout ? { timeouts: parseTimeouts(flags.timeout) } : {}),
        }
        : { name, kind: 'tool', tool: resolve(flags.tool!) });
      if (ctx.json) ctx.printJson(entry);
      else ctx.print(`registered backup provider '${name}': ${describe(entry)}`);
    });

  provider
    .command('list')
    .description('list the registered providers')
    .action(async () => {
      const ctx = context();
      const { ProviderRegistry } = await providerApp();
      const entries = await new ProviderRegistry(ctx.configDir).list();
      if (ctx.json) ctx.printJson(entries);
      else if (entries.length === 0) ctx.info('no backup provider is registered (fleece provider add NAME --exec PATH)');
      else for (const e of entries) ctx.print(`${e.name}  ${e.kind}  ${describe(e)}`);
    });

  provider
    .command('remove')
    .description('forget a provider (its backups stay where it put them; fleece\'s record of its last checkpoints stays in the state directory)')
    .argument('<name>')
    .action(async (name: string) => {
      const ctx = context();
      const { ProviderRegistry } = await providerApp();
      const entry = await new ProviderRegistry(ctx.configDir).remove(name);
      if (ctx.json) ctx.printJson(entry);
      else ctx.print(`removed backup provider '${name}'`);
    });

  provider
    .command('show')
    .description("a provider's registration, its last successful backup of a VM (the checkpoint `reuse` starts from) and a tool driver's backups")
    .argument('<name>')
    .option('--vm <name>', 'the VM whose last backup to show')
    .action(async (name: string, flags: { vm?: string }) => {
      const ctx = context();
      const { providerStatus } = await providerApp();
      const status = await providerStatus(ctx.configDir, ctx.stateDir, name, flags.vm);
      if (ctx.json) {
        ctx.printJson(status);
        return;
      }
      ctx.print(`${name}  ${status.entry.kind}  ${describe(status.entry)}`);
      if (flags.vm) {
        ctx.print(status.state
          ? `last successful backup of ${flags.vm}: ${status.state.backupId} at ${status.state.finishedAt}, checkpoint ${status.state.checkpoint ?? '(none)'}`
          : `no successful backup of ${flags.vm} yet`);
      }
      for (const r of status.records) ctx.print(`${r.createdAt.slice(0, 19)}  ${r.backupId}  ${r.vm}  ${r.state}  ${Object.keys(r.disks).join(',')}`);
    });
}

/** The provider's stderr lines on fleece's stderr with --verbose (they are in the log file either way). */
function providerLines(ctx: CliContext): ((line: string, verb: string) => void) | undefined {
  return ctx.verbose && !ctx.json ? (line, verb) => process.stderr.write(`[provider ${verb}] ${line}\n`) : undefined;
}

export function printProviderSummary(ctx: CliContext, s: ProviderBackupSummary): void {
  for (const d of s.disks) {
    const what = d.bitmapMode === 'reuse' ? `incremental since ${d.incrementalFrom}` : `full (bitmap ${d.bitmapMode}: ${d.reason})`;
    ctx.print(`${s.vm} ${d.disk}: ${what}, ${formatBytes(d.dirtyBytes)} handed to provider '${s.provider}'`);
  }
  ctx.info(`backup ${s.backupId} of VM '${s.vm}' by provider '${s.provider}' (${s.mechanism}) done in ${(s.durationMs / 1000).toFixed(1)} s, checkpoint ${s.checkpoint ?? '(none)'}`);
}

/** `fleece backup VM --provider NAME`. */
export async function backupThroughProvider(ctx: CliContext, request: BackupRequest): Promise<void> {
  const [{ runProviderBackup }, { resolveBackupTarget }] = await Promise.all([providerApp(), import('../../app/run-backup.js')]);
  const entry = await resolveBackupTarget(request, ctx.configDir);
  const onLine = providerLines(ctx);
  const summary = await runProviderBackup(entry, request, {
    stateDir: ctx.stateDir, runDir: ctx.runDir, configDir: ctx.configDir, ...(onLine ? { onProviderLine: onLine } : {}),
  }, {
    signal: ctx.signal,
    onEvent: (event) => {
      if (event.type === 'mechanism') ctx.info(`backup ${event.backupId} of VM '${request.vm}' through provider '${request.provider}' (${event.mechanism})`);
      else if (event.type === 'bitmaps') for (const d of event.disks) ctx.info(`  ${d.disk}: bitmap ${d.mode} (${d.reason})`);
      else if (event.type === 'warning') ctx.info(`warning: ${event.message}`);
    },
  });
  if (ctx.json) ctx.printJson(summary);
  else printProviderSummary(ctx, summary);
}

/** `fleece restore --provider NAME --backup ID --out FILE`. */
export async function restoreThroughProvider(ctx: CliContext, request: ProviderRestoreRequest): Promise<void> {
  const { runProviderRestore } = await providerApp();
  const onLine = providerLines(ctx);
  const { summary, warnings } = await runProviderRestore(request, {
    stateDir: ctx.stateDir, runDir: ctx.runDir, configDir: ctx.configDir, signal: ctx.signal, ...(onLine ? { onProviderLine: onLine } : {}),
  });
  for (const w of warnings) ctx.info(`warning: ${w}`);
  if (ctx.json) ctx.printJson(summary);
  else ctx.print(`restored volume ${summary.volume} of backup ${summary.backupId} from provider '${summary.provider}' (${summary.mechanism}) to ${summary.out} (${summary.format}, ${formatBytes(summary.size)})`);
}
