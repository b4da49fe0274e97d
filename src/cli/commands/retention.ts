// `fleece prune | protect | unprotect | consolidate`, and the output of `fleece verify --sample` (src/app/retention.ts).
import { resolve } from 'node:path';
import { Option, type Command } from 'commander';
import type { BackupSelector } from '../../app/repository-operations.js';
import type { KeepOptions, PrunePlan } from '../../app/retention.js';
import { repoLocation } from '../../app/repo-location.js';
import { FleeceError, IntegrityError } from '../../util/errors.js';
import type { CliContext } from '../context.js';
import { formatBytes } from '../progress.js';

// The app's retention code loads in the action of the command that runs (start-up stays small: lazy imports).
const retentionApp = () => import('../../app/retention.js');

function table(rows: string[][]): string {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  return rows.map((r) => r.map((cell, i) => cell.padEnd(widths[i]!)).join('  ').trimEnd()).join('\n');
}

/** A count option: a whole number of 0 or more. @throws FleeceError USAGE. */
function count(flag: string): (text: string) => number {
  return (text) => {
    if (!/^\d+$/.test(text.trim())) throw new FleeceError('USAGE', `${flag} '${text}' is not a count`, { hint: `give a whole number, e.g. ${flag} 7` });
    return Number(text);
  };
}

/** The plan as text: per scope, one line per group, newest first. */
export function formatPrunePlan(plan: PrunePlan, dryRun: boolean, describeReason: (reason: PrunePlan['scopes'][number]['groups'][number]['reason']) => string): string {
  const out: string[] = [];
  for (const scope of plan.scopes) {
    const keep = scope.groups.filter((g) => g.action === 'keep').length;
    const name = scope.vm !== null ? `VM ${scope.scope}` : scope.scope;
    out.push(`${name}: ${scope.groups.length} group(s), keep ${keep}, ${dryRun ? 'would remove' : 'remove'} ${scope.groups.length - keep}`);
    const rows = [['CREATED (UTC)', 'GROUP', 'DISKS', 'ACTION', 'WHY']];
    for (const g of scope.groups) {
      rows.push([g.createdAt.slice(0, 19), g.groupId ?? `${g.key} (no group)`, g.disks.join(','), g.action, describeReason(g.reason)]);
    }
    out.push(table(rows).split('\n').map((l) => `  ${l}`).join('\n'));
  }
  return out.join('\n');
}

interface PruneFlags {
  repo: string;
  vm?: string;
  keepLast?: number;
  keepHourly?: number;
  keepDaily?: number;
  keepWeekly?: number;
  keepMonthly?: number;
  keepYearly?: number;
  timezone: string;
  dryRun?: boolean;
  keepCheckpoints?: number;
  pruneCheckpoints?: boolean;
  qmp?: string;
  connect?: string;
}

interface TargetFlags { repo: string; backup?: string; group?: string }

function targetOf(flags: TargetFlags): { backupId?: string; groupId?: string } {
  return { ...(flags.backup !== undefined ? { backupId: flags.backup } : {}), ...(flags.group !== undefined ? { groupId: flags.group } : {}) };
}

function addTarget(command: Command): Command {
  return command
    .requiredOption('--repo <dir>', 'the repository directory, or s3://BUCKET[/PREFIX]')
    .option('--backup <id>', 'one disk backup')
    .option('--group <id>', 'every disk backup of this VM backup group (the GROUP column of `fleece list`)');
}

export function registerRetentionCommands(program: Command, context: () => CliContext): void {
  program
    .command('prune')
    .description('remove backup groups a keep policy does not keep (Proxmox Backup Server\'s rules, per VM), never a protected one nor a parent a kept incremental needs')
    .requiredOption('--repo <dir>', 'the repository directory, or s3://BUCKET[/PREFIX]')
    .option('--vm <name>', 'only this VM\'s backups (default: every VM, each on its own)')
    .option('--keep-last <n>', 'keep the newest N groups', count('--keep-last'))
    .option('--keep-hourly <n>', 'keep the newest group of each of the last N hours that have one', count('--keep-hourly'))
    .option('--keep-daily <n>', 'keep the newest group of each of the last N days that have one', count('--keep-daily'))
    .option('--keep-weekly <n>', 'keep the newest group of each of the last N ISO weeks (Monday to Sunday) that have one', count('--keep-weekly'))
    .option('--keep-monthly <n>', 'keep the newest group of each of the last N months that have one', count('--keep-monthly'))
    .option('--keep-yearly <n>', 'keep the newest group of each of the last N years that have one', count('--keep-yearly'))
    .addOption(new Option('--timezone <zone>', 'the time zone whose hours, days, weeks… the rules count (IANA name)').default('UTC'))
    .option('--dry-run', 'print the plan (each group: keep or remove, and why), remove nothing')
    .option('--keep-checkpoints <n>', 'then keep at most N checkpoints with a backup behind them per disk of each VM that lost backups (default 3)', count('--keep-checkpoints'))
    .option('--no-prune-checkpoints', 'leave the VMs\' checkpoints alone')
    .option('--qmp <socket>', 'with --vm: the QMP socket of that bare QEMU, whose checkpoints to prune (default: the registry)')
    .option('-c, --connect <uri>', 'with --vm: the libvirt URI of that domain, whose checkpoints to prune (default: the registry)')
    .addHelpText('after', `
The rules run in the order last, hourly, daily, weekly, monthly, yearly; each keeps the newest group of a period
that no earlier rule covered, for N periods. A group is every disk backup of one \`fleece backup\` run. A protected
group (\`fleece protect\`) is always kept and counts for no rule; a kept incremental keeps its parents' groups.
Then, for each VM that lost backups, the checkpoints no remaining backup ended at are deleted through the VM's
control plane (registered VMs, or --vm with --qmp/--connect), at most --keep-checkpoints kept per disk.

Examples:
  fleece prune --repo /backups/repo --keep-last 3 --keep-daily 7 --keep-weekly 4 --dry-run
  fleece prune --repo /backups/repo --vm web --keep-daily 14 --keep-monthly 12`)
    .action(async (flags: PruneFlags) => {
      const ctx = context();
      const { describeKeepOptions, describeReason, keepsSomething, pruneBackups } = await retentionApp();
      const keep: KeepOptions = {
        ...(flags.keepLast !== undefined ? { last: flags.keepLast } : {}),
        ...(flags.keepHourly !== undefined ? { hourly: flags.keepHourly } : {}),
        ...(flags.keepDaily !== undefined ? { daily: flags.keepDaily } : {}),
        ...(flags.keepWeekly !== undefined ? { weekly: flags.keepWeekly } : {}),
        ...(flags.keepMonthly !== undefined ? { monthly: flags.keepMonthly } : {}),
        ...(flags.keepYearly !== undefined ? { yearly: flags.keepYearly } : {}),
      };
      if (!keepsSomething(keep)) {
        throw new FleeceError('USAGE', 'prune needs at least one --keep-* option of 1 or more', { hint: 'e.g. --keep-last 3 --keep-daily 7 (add --dry-run to see the plan first)' });
      }
      if ((flags.qmp !== undefined || flags.connect !== undefined) && flags.vm === undefined) {
        throw new FleeceError('USAGE', '--qmp and --connect name one VM: give --vm too');
      }
      if (flags.keepCheckpoints === 0) throw new FleeceError('USAGE', '--keep-checkpoints must be 1 or more', { hint: 'use --no-prune-checkpoints to keep them all' });
      const entry = flags.vm !== undefined && (flags.qmp !== undefined || flags.connect !== undefined)
        ? await (await import('../../app/run-backup.js')).resolveBackupTarget({ vm: flags.vm, ...(flags.qmp ? { qmp: resolve(flags.qmp) } : {}), ...(flags.connect ? { connect: flags.connect } : {}) }, ctx.configDir)
        : undefined;
      const result = await pruneBackups({
        ...(flags.pruneCheckpoints !== false ? {
          checkpoints: {
            ...(flags.keepCheckpoints !== undefined ? { keep: flags.keepCheckpoints } : {}),
            env: { stateDir: ctx.stateDir, runDir: ctx.runDir, configDir: ctx.configDir }, ...(entry ? { entry } : {}),
          },
        } : {}),
        repo: repoLocation(flags.repo),
        policy: { keep, timeZone: flags.timezone, ...(flags.vm !== undefined ? { vm: flags.vm } : {}) },
        ...(flags.dryRun ? { dryRun: true } : {}),
        signal: ctx.signal,
        onDelete: (backupId, i, n) => ctx.info(`deleting backup ${backupId} (${i + 1} of ${n})`),
      });
      const { plan } = result;
      if (ctx.json) {
        ctx.printJson({
          dryRun: result.dryRun, at: plan.at, policy: plan.policy,
          scopes: plan.scopes.map((s) => ({
            scope: s.scope, vm: s.vm,
            groups: s.groups.map((g) => ({
              key: g.key, groupId: g.groupId, createdAt: g.createdAt, disks: g.disks,
              backups: g.backups.map((b) => ({ backupId: b.backupId, disk: b.disk ?? null, parentId: b.parentId, protected: b.protected === true })),
              action: g.action, reason: g.reason, why: describeReason(g.reason),
            })),
          })),
          removeOrder: plan.removeOrder, deleted: result.deleted, objectsRemoved: result.objectsRemoved, bytesFreed: result.bytesFreed,
          ...(result.checkpoints ? { checkpoints: result.checkpoints } : {}),
        });
        return;
      }
      if (plan.scopes.length === 0) {
        ctx.print('no backups to prune');
        return;
      }
      ctx.print(`prune ${describeKeepOptions(keep)}${flags.timezone !== 'UTC' ? ` (periods in ${flags.timezone})` : ''}`);
      ctx.print(formatPrunePlan(plan, result.dryRun, describeReason));
      const groups = plan.scopes.flatMap((s) => s.groups).filter((g) => g.action === 'remove').length;
      if (result.dryRun) ctx.print(`dry run: would remove ${groups} group(s), ${plan.removeOrder.length} backup(s), freeing ${formatBytes(result.bytesFreed)}`);
      else ctx.print(`removed ${groups} group(s), ${result.deleted.length} backup(s) (${result.objectsRemoved} objects, ${formatBytes(result.bytesFreed)} freed)`);
      if (result.checkpoints?.length) {
        const { describeCheckpointRetention } = await import('../../app/checkpoint-retention.js');
        for (const report of result.checkpoints) for (const line of describeCheckpointRetention(report)) ctx.info(line);
      }
    });

  for (const protect of [true, false]) {
    const name = protect ? 'protect' : 'unprotect';
    const command = addTarget(program
      .command(name)
      .description(protect
        ? 'mark a backup (or every disk backup of a group) protected: prune never removes its group (the mark is in its _metadata\'s extra_metadata)'
        : 'remove the protection mark of a backup (or of every disk backup of a group)'));
    if (protect) command.option('--note <text>', 'why it is kept (stored with the mark)');
    command.action(async (flags: TargetFlags & { note?: string }) => {
      const ctx = context();
      const { protectBackups } = await retentionApp();
      const result = await protectBackups(repoLocation(flags.repo), targetOf(flags), protect, {
        ...(flags.note !== undefined ? { note: flags.note } : {}), signal: ctx.signal,
      });
      if (ctx.json) {
        ctx.printJson(result);
        return;
      }
      for (const b of result.backups) {
        const what = `backup ${b.backupId}${b.vm !== null ? ` (VM ${b.vm}${b.disk !== null ? ` disk ${b.disk}` : ''})` : ''}`;
        ctx.print(`${b.changed ? (protect ? 'protected' : 'unprotected') : (protect ? 'already protected' : 'was not protected')}: ${what}`);
      }
    });
  }

  addTarget(program
    .command('consolidate')
    .description('write a new full backup equal to a backup\'s point of its chain (a synthetic full), from the repository alone; the next incremental builds on it and the older chain can be pruned'))
    .addOption(new Option('--compression <codec>', 'compression of the new full').choices(['zstd', 'zlib', 'bz2', 'none']))
    .addHelpText('after', `
Cinder's format cannot point at another backup's objects, so the data is read once and written again: it costs the
point's data in reads (only objects still holding some of it) and a full's worth of writes.

Examples:
  fleece consolidate --repo /backups/repo --backup 3f2c…-…
  fleece consolidate --repo /backups/repo --group 8d1e…-…     # every disk of one VM backup, into one new group`)
    .action(async (flags: TargetFlags & { compression?: 'zstd' | 'zlib' | 'bz2' | 'none' }) => {
      const ctx = context();
      const progress = ctx.progress();
      let current: string | undefined;
      try {
        const { consolidateBackups } = await retentionApp();
        const result = await consolidateBackups({
          repo: repoLocation(flags.repo), target: targetOf(flags),
          ...(flags.compression !== undefined ? { compression: flags.compression } : {}),
          signal: ctx.signal,
          onProgress: (disk, done, total) => {
            if (current !== disk) {
              progress.stop();
              progress.start(`consolidate ${disk}`, total);
              current = disk;
            }
            progress.update({ done, total });
          },
        });
        progress.stop();
        if (ctx.json) {
          ctx.printJson(result);
          return;
        }
        for (const d of result.disks) {
          const what = d.vm !== undefined ? ` (VM ${d.vm}${d.disk !== undefined ? ` disk ${d.disk}` : ''})` : '';
          ctx.print(`consolidated backup ${d.sourceId}${what}, a chain of ${d.chain.length}, into full backup ${d.backupId} (group ${result.groupId}): `
            + `read ${d.objectsRead} objects, ${formatBytes(d.bytesRead)} stored (${formatBytes(d.bytesDecoded)} of data); `
            + `wrote ${d.objectsWritten} objects, ${formatBytes(d.bytesWritten)}; the chain holds ${formatBytes(d.chainStoredBytes)}; ${(d.durationMs / 1000).toFixed(1)} s`);
        }
        ctx.info('the next incremental backup builds on the new full; `fleece prune` can then remove the older chain');
      } finally {
        progress.stop();
      }
    });
}

/** `fleece verify --sample PCT [--seed N]` (registered by the verify command in repository.ts). */
export async function scrubCommand(ctx: CliContext, flags: { repo: string; sample: string; seed?: string }, selector: BackupSelector | undefined): Promise<void> {
  const percent = Number(flags.sample.replace(/%$/, ''));
  if (!Number.isFinite(percent) || percent <= 0 || percent > 100) throw new FleeceError('USAGE', `--sample '${flags.sample}' is not a percentage`, { hint: 'give more than 0 and at most 100, e.g. --sample 5' });
  let seed: number | undefined;
  if (flags.seed !== undefined) {
    if (!/^\d+$/.test(flags.seed) || Number(flags.seed) >= 2 ** 32) throw new FleeceError('USAGE', `--seed '${flags.seed}' is not a 32-bit number`, { hint: 'use the seed a previous run printed' });
    seed = Number(flags.seed);
  }
  // No progress bar: the reporter counts bytes, a scrub counts objects (and reads only the sampled ones).
  const { scrubBackups } = await retentionApp();
  const { record, report } = await scrubBackups({
    repo: repoLocation(flags.repo), percent, ...(selector ? { selector } : {}), ...(seed !== undefined ? { seed } : {}), signal: ctx.signal,
  });
  if (ctx.json) {
    ctx.printJson({ ...report, ...(record ? { backupId: record.backupId } : {}), problems: report.problems.map((p) => ({ backupId: p.backupId, object: p.object, message: p.message, affected: p.affected })) });
  } else {
    for (const p of report.problems) {
      ctx.print(`damaged: ${p.message.includes(p.object) ? p.message : `${p.object}: ${p.message}`}`);
      ctx.print(`  affects ${p.affected.length} backup(s): ${p.affected.length > 0 ? p.affected.join(', ') : 'unknown (the manifest names none)'}`);
    }
    const scope = record ? `the chain of backup ${record.backupId}` : 'the repository';
    ctx.print(`scrub of ${scope}: ${report.percent} % sample (seed ${report.seed}): ${report.objectsChecked} of ${report.objectsTotal} objects `
      + `(${formatBytes(report.bytesChecked)}) in ${report.backupsSampled} of ${report.backups} backup(s) checked: `
      + `${report.ok ? 'OK' : `DAMAGED (${report.problems.length} problem(s), ${report.damaged.length} backup(s) affected)`}`);
  }
  if (!report.ok) {
    throw new IntegrityError(`the scrub found ${report.problems.length} problem(s) affecting ${report.damaged.length} backup(s): ${report.damaged.join(', ')}`, {
      hint: 'run `fleece verify --deep --backup ID` on them; restore older backups or take new full backups',
    });
  }
}

