// `fleece list | restore | verify | delete | gc`: repository commands (src/app/repository-operations.ts, restore-group.ts).
import { resolve } from 'node:path';
import { Option, type Command } from 'commander';
import type { BackupSelector } from '../../app/repository-operations.js';
import { repoLocation } from '../../app/repo-location.js';
import type { BackupRecord } from '../../app/vocabulary.js';
import { FleeceError, IntegrityError } from '../../util/errors.js';
import type { CliContext } from '../context.js';
import { formatBytes } from '../progress.js';
import { scrubCommand } from './retention.js';
import { restoreThroughProvider } from './provider.js';

/** Whether every problem of a verify is an object the store could not read (none a mismatch or a missing object). */
function unreadOnly(problems: readonly { error: FleeceError }[]): boolean {
  return problems.length > 0 && problems.every((p) => p.error.code === 'STORE');
}

// The app's repository code loads in the action of the command that runs (start-up stays small: lazy imports).
const repositoryApp = () => import('../../app/repository-operations.js');

interface SelectorFlags {
  backup?: string;
  vm?: string;
  disk?: string;
  at?: string;
}

async function selectorOf(flags: SelectorFlags): Promise<BackupSelector> {
  const { parsePointInTime } = await repositoryApp();
  return {
    ...(flags.backup !== undefined ? { backupId: flags.backup } : {}),
    ...(flags.vm !== undefined ? { vm: flags.vm } : {}),
    ...(flags.disk !== undefined ? { disk: flags.disk } : {}),
    ...(flags.at !== undefined ? { at: parsePointInTime(flags.at) } : {}),
  };
}

function addSelector(command: Command): Command {
  return command
    .option('--backup <id>', 'the backup id (backup_id of one disk backup; its chain is followed)')
    .option('--vm <name>', 'instead of --backup: the newest backup of this VM …')
    .option('--disk <target>', '… of this disk (needed when the VM has several)')
    .option('--at <time>', '… created at or before this time (ISO 8601, UTC unless a zone is given)');
}

function table(rows: string[][]): string {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  return rows.map((r) => r.map((cell, i) => cell.padEnd(widths[i]!)).join('  ').trimEnd()).join('\n');
}

function listRows(records: (BackupRecord & { protected?: true })[]): string {
  const rows = [['CREATED (UTC)', 'VM', 'DISK', 'BACKUP ID', 'LEVEL', 'PARENT', 'SIZE', 'DATA', 'STORED', 'CHECKPOINT', 'GROUP', 'PROTECTED']];
  for (const r of records) {
    rows.push([
      r.createdAt.slice(0, 19), r.vm ?? '-', r.disk ?? '-', r.backupId, r.parentId ? 'incremental' : 'full', r.parentId ?? '-',
      r.size !== undefined ? formatBytes(r.size) : '-', formatBytes(r.dataBytes), r.storedBytes !== undefined ? formatBytes(r.storedBytes) : '-',
      r.checkpoint ?? '-', r.groupId ?? '-', r.protected ? 'protected' : '',
    ]);
  }
  return table(rows);
}

interface RestoreFlags extends SelectorFlags {
  /** Absent only with --provider (checked first thing in the action). */
  repo: string;
  provider?: string;
  out?: string;
  format: 'raw' | 'qcow2';
  force?: boolean;
  group?: string;
  outDir?: string;
  define?: string;
  connect?: string;
}

/** `fleece restore --group`: every disk of a VM backup into --out-dir, then --define (src/app/restore-group.ts). */
async function restoreGroupCommand(ctx: CliContext, flags: RestoreFlags, format: 'raw' | 'qcow2' | undefined): Promise<void> {
  const clashing = ([['--backup', flags.backup], ['--vm', flags.vm], ['--disk', flags.disk], ['--at', flags.at], ['--out', flags.out]] as const)
    .filter(([, given]) => given !== undefined).map(([flag]) => flag);
  if (clashing.length > 0) {
    throw new FleeceError('USAGE', `--group cannot be combined with ${clashing.join(', ')}`, { hint: 'restore a whole VM backup with --group GROUP --out-dir DIR, or one disk with --backup ID (or --vm/--disk/--at) --out FILE' });
  }
  if (flags.outDir === undefined) throw new FleeceError('USAGE', '--group needs --out-dir DIR', { hint: 'each disk is restored to DIR/<disk>.<format>' });
  if ((flags.define === undefined) !== (flags.connect === undefined)) {
    throw new FleeceError('USAGE', flags.define === undefined ? '--connect needs --define NAME' : '--define needs --connect URI', { hint: 'give both: --define NEWNAME --connect qemu:///system' });
  }
  const { openLibvirtDefiner, restoreGroup } = await import('../../app/restore-group.js');
  const progress = ctx.progress();
  let started = false;
  try {
    const result = await restoreGroup(repoLocation(flags.repo), flags.group!, resolve(flags.outDir), {
      ...(format !== undefined ? { format } : {}),
      ...(flags.force ? { overwrite: true } : {}),
      ...(flags.define !== undefined ? { define: { name: flags.define, connect: flags.connect!, openDefiner: openLibvirtDefiner } } : {}),
    }, {
      signal: ctx.signal,
      onDisk: ({ disk, index, count }) => {
        progress.stop();
        started = false;
        ctx.info(`restoring disk ${disk} (${index + 1} of ${count})`);
      },
      onProgress: (disk, done, total) => {
        if (!started) progress.start(`restore ${disk}`, total);
        started = true;
        progress.update({ done, total });
      },
    });
    progress.stop();
    for (const warning of result.warnings) ctx.info(`warning: ${warning}`);
    if (ctx.json) {
      ctx.printJson({
        groupId: result.groupId, vm: result.vm ?? null, outDir: result.outDir,
        disks: result.disks.map((d) => ({ disk: d.disk, out: d.out, format: d.format, ...d.summary })),
        defined: result.defined ? { name: result.defined.name, connect: result.defined.connect } : null,
        warnings: result.warnings,
      });
      return;
    }
    for (const d of result.disks) {
      const s = d.summary;
      ctx.print(`restored disk ${d.disk}: backup ${s.backupId} (chain of ${s.chain.length}) to ${d.out} (${d.format}): ${formatBytes(s.bytesWritten)} written, ${s.verified ? 'sha256 verified' : 'not re-hashed'}`);
    }
    if (result.defined) ctx.print(`defined domain '${result.defined.name}' at ${result.defined.connect} on the restored disks (new uuid and MAC addresses; start it with \`virsh -c '${result.defined.connect}' start ${result.defined.name}\`)`);
  } finally {
    progress.stop();
  }
}

export function registerRepositoryCommands(program: Command, context: () => CliContext): void {
  program
    .command('list')
    .description('list the complete backups in a repository (oldest first); a damaged or newer-format backup is named on stderr and makes the exit code 1')
    .requiredOption('--repo <dir>', 'the repository directory, or s3://BUCKET[/PREFIX]')
    .option('--vm <name>', 'only this VM')
    .option('--disk <target>', 'only this disk')
    .action(async (flags: { repo: string; vm?: string; disk?: string }) => {
      const ctx = context();
      const { listRepository } = await repositoryApp();
      const { records, unreadable } = await listRepository(repoLocation(flags.repo), {
        ...(flags.vm !== undefined ? { vm: flags.vm } : {}), ...(flags.disk !== undefined ? { disk: flags.disk } : {}), signal: ctx.signal, withProtection: true,
      });
      if (ctx.json) ctx.printJson([...records, ...unreadable]);
      else if (records.length === 0 && unreadable.length === 0) ctx.info(`no backups in ${repoLocation(flags.repo)}${flags.vm ? ` for VM '${flags.vm}'` : ''}`);
      else if (records.length > 0) ctx.print(listRows(records));
      // Shown, never hidden; exit 1 (docs/reliability.md): a script must notice a backup it cannot use.
      for (const u of unreadable) {
        const what = `backup ${u.backupId ?? '?'} (${u.container}/${u.object})`;
        process.stderr.write(`warning: ${u.state === 'newer-format'
          ? `${what}: written by a newer fleece (format ${u.formatVersion}); this fleece cannot read it`
          : `${what}: DAMAGED, its _metadata cannot be read: ${u.reason}; run fleece verify, restore from another backup`}\n`);
      }
      if (unreadable.length > 0) process.exitCode = 1;
    });

  addSelector(program
    .command('restore')
    .description('restore one disk backup (its whole chain) into a new raw or qcow2 file, or every disk of a VM backup group into a directory (optionally defined as a new libvirt domain), checking every object and the final sha256s')
    .option('--repo <dir>', 'the repository directory, or s3://BUCKET[/PREFIX]')
    .option('--provider <name>', 'instead of --repo: restore --backup ID (the provider\'s backup id; --disk picks the volume) from this backup provider')
    .option('--out <file>', 'the file to create (one disk backup)'))
    .option('--group <id>', 'instead of one backup: every disk backup of this VM backup group (the GROUP column of `fleece list`)')
    .option('--out-dir <dir>', 'with --group: the directory to restore into, one <disk>.<format> image per disk (created if missing)')
    .addOption(new Option('--format <format>', 'output format (with --group the default is qcow2)').choices(['raw', 'qcow2']).default('raw'))
    .option('--force', 'replace --out (with --group: the images in --out-dir) when it exists')
    .option('--define <name>', 'with --group: define a new libvirt domain of this name from the backup\'s domain XML, on the restored images')
    .option('--connect <uri>', 'with --define: the libvirt URI to define it at (e.g. qemu:///system)')
    .addHelpText('after', `
Examples:
  fleece restore --repo /backups/repo --backup 3f2c…-… --out /tmp/vda.raw
  fleece restore --repo /backups/repo --vm vm1 --disk vda --at 2025-01-02T03:00:00Z --out vda.qcow2 --format qcow2
  fleece restore --repo /backups/repo --group 8d1e…-… --out-dir /var/lib/libvirt/images/vm1-restored \\
                 --define vm1-restored --connect qemu:///system`)
    .action(async (flags: RestoreFlags, command: Command) => {
      if (flags.provider !== undefined) {
        if (flags.repo !== undefined || flags.group !== undefined || flags.vm !== undefined || flags.at !== undefined) {
          throw new FleeceError('USAGE', '--provider goes with --backup ID --out FILE [--disk NAME] [--format]: not with --repo, --group, --vm or --at');
        }
        if (flags.backup === undefined || flags.out === undefined) throw new FleeceError('USAGE', '--provider needs --backup ID and --out FILE');
        await restoreThroughProvider(context(), {
          provider: flags.provider, backupId: flags.backup, out: resolve(flags.out), format: flags.format,
          ...(flags.disk !== undefined ? { disk: flags.disk } : {}), ...(flags.force ? { overwrite: true } : {}),
        });
        return;
      }
      if ((flags.repo as string | undefined) === undefined) throw new FleeceError('USAGE', "required option '--repo <dir>' not specified (or --provider <name>)");
      if (flags.group !== undefined) {
        await restoreGroupCommand(context(), flags, command.getOptionValueSource('format') === 'default' ? undefined : flags.format);
        return;
      }
      for (const [flag, given] of [['--out-dir', flags.outDir], ['--define', flags.define], ['--connect', flags.connect]] as const) {
        if (given !== undefined) throw new FleeceError('USAGE', `${flag} needs --group`, { hint: 'restore a whole VM backup with --group GROUP --out-dir DIR, or one disk with --out FILE' });
      }
      if (flags.out === undefined) {
        throw new FleeceError('USAGE', "required option '--out <file>' not specified", { hint: 'give --out FILE (one disk backup), or --group GROUP --out-dir DIR (a whole VM backup)' });
      }
      const out = flags.out;
      const ctx = context();
      const { restoreToFile } = await repositoryApp();
      const selector = await selectorOf(flags);
      const progress = ctx.progress();
      let started = false;
      try {
        const result = await restoreToFile(
          { repo: repoLocation(flags.repo), selector, out: resolve(out), format: flags.format, ...(flags.force ? { overwrite: true } : {}) },
          {
            signal: ctx.signal,
            onProgress: (done, total) => {
              if (!started) progress.start('restore', total);
              started = true;
              progress.update({ done, total });
            },
          },
        );
        progress.stop();
        const s = result.summary;
        if (ctx.json) ctx.printJson({ vm: result.record.vm ?? null, disk: result.record.disk ?? null, out: result.out, format: result.format, ...s });
        else ctx.print(`restored backup ${s.backupId} (chain of ${s.chain.length}) to ${result.out} (${result.format}): ${formatBytes(s.bytesWritten)} written, ${s.verified ? 'sha256 verified' : 'not re-hashed'}`);
      } finally {
        progress.stop();
      }
    });

  addSelector(program
    .command('verify')
    .description('check a backup and its chain: every object present, md5 per object (--deep: every sha256 block too)')
    .requiredOption('--repo <dir>', 'the repository directory, or s3://BUCKET[/PREFIX]'))
    .option('--deep', 'decompress and re-hash every block against the _sha256file')
    .option('--sample <pct>', 'scrub: check a random PCT % of the objects of every backup (or of the named backup\'s chain), md5 and sha256, and list the backups each damaged object affects')
    .option('--seed <n>', 'with --sample: the seed of the choice (a previous run prints it)')
    .action(async (flags: SelectorFlags & { repo: string; deep?: boolean; sample?: string; seed?: string }) => {
      const ctx = context();
      const named = flags.backup !== undefined || flags.vm !== undefined;
      if (flags.sample !== undefined) return scrubCommand(ctx, { repo: flags.repo, sample: flags.sample, ...(flags.seed !== undefined ? { seed: flags.seed } : {}) }, named ? await selectorOf(flags) : undefined);
      const { verifyBackup } = await repositoryApp();
      const { record, report } = await verifyBackup(repoLocation(flags.repo), await selectorOf(flags), { ...(flags.deep ? { deep: true } : {}), signal: ctx.signal });
      if (ctx.json) {
        ctx.printJson({ ...report, problems: report.problems.map((p) => ({ backupId: p.backupId, object: p.object, message: p.message })) });
      } else {
        for (const p of report.problems) ctx.print(`problem: backup ${p.backupId}: ${p.object}: ${p.message}`);
        const state = report.ok ? 'OK' : unreadOnly(report.problems) ? 'NOT VERIFIED (objects could not be read)' : 'DAMAGED';
        ctx.print(`backup ${record.backupId}: ${state} (${report.backups.length} backup(s) in the chain, ${report.objectsChecked} objects, ${formatBytes(report.bytesChecked)} checked)`);
      }
      if (!report.ok && unreadOnly(report.problems)) {
        // The storage failed (EIO, a network error…), not the data: saying "damaged" would send the user to restore
        // an older backup, when the first thing to do is to fix the storage and verify again.
        throw new FleeceError('STORE', `backup ${record.backupId} could not be verified: ${report.problems.length} object(s) could not be read (first: ${report.problems[0]!.message})`);
      }
      if (!report.ok) {
        throw new IntegrityError(`backup ${record.backupId} failed verification with ${report.problems.length} problem(s)`, {
          hint: 'restore an older backup or take a new full backup',
        });
      }
    });

  program
    .command('delete')
    .description('delete a backup (--cascade: and the incrementals built on it), or every disk backup of a group')
    .requiredOption('--repo <dir>', 'the repository directory, or s3://BUCKET[/PREFIX]')
    .option('--backup <id>', 'the backup to delete')
    .option('--group <id>', 'delete every disk backup of this VM backup group')
    .option('--cascade', 'also delete the backups that depend on it')
    .action(async (flags: { repo: string; backup?: string; group?: string; cascade?: boolean }) => {
      const ctx = context();
      const { deleteBackups } = await repositoryApp();
      const report = await deleteBackups(repoLocation(flags.repo), {
        ...(flags.backup !== undefined ? { backupId: flags.backup } : {}),
        ...(flags.group !== undefined ? { groupId: flags.group } : {}),
        ...(flags.cascade ? { cascade: true } : {}),
        signal: ctx.signal,
      });
      if (ctx.json) ctx.printJson(report);
      else ctx.print(`deleted ${report.deleted.length} backup(s): ${report.deleted.join(', ')} (${report.objectsRemoved} objects)`);
    });

  program
    .command('gc')
    .description('remove objects that no backup references (left by interrupted backups), older than a grace period')
    .requiredOption('--repo <dir>', 'the repository directory, or s3://BUCKET[/PREFIX]')
    .option('--dry-run', 'only report what would be removed')
    .option('--grace <seconds>', 'only remove objects older than this (default 86400: a running backup has no _metadata yet)')
    .action(async (flags: { repo: string; dryRun?: boolean; grace?: string }) => {
      const ctx = context();
      let gracePeriodMs: number | undefined;
      if (flags.grace !== undefined) {
        const seconds = Number(flags.grace);
        if (!Number.isFinite(seconds) || seconds < 0) throw new FleeceError('USAGE', `--grace '${flags.grace}' is not a number of seconds`, { hint: 'e.g. --grace 3600' });
        gracePeriodMs = seconds * 1000;
      }
      const { collectRepositoryGarbage } = await repositoryApp();
      const report = await collectRepositoryGarbage(repoLocation(flags.repo), {
        ...(flags.dryRun ? { dryRun: true } : {}), ...(gracePeriodMs !== undefined ? { gracePeriodMs } : {}), signal: ctx.signal,
      });
      if (ctx.json) ctx.printJson(report);
      else {
        ctx.print(`${flags.dryRun ? 'would remove' : 'removed'} ${report.removed.length} object(s), ${formatBytes(report.bytesFreed)}`);
        for (const s of report.skipped) ctx.print(`skipped container ${s.container}: ${s.object}: ${s.reason}`);
      }
    });
}
