// `fleece backup VM --repo DIR`: the main job (see src/app/backup-to-repository.ts), with progress and a summary.
import { resolve } from 'node:path';
import { Option, type Command } from 'commander';
import { backupVmToRepository, type RepositoryBackupSummary } from '../../app/backup-to-repository.js';
import type { RequestedLevel } from '../../app/backup-level.js';
import { openVm } from '../../app/vm-context.js';
import type { Compression } from '../../repository/index.js';
import type { CliContext } from '../context.js';
import { collect, parseByteSize, parsePositiveInt } from '../errors.js';
import { formatBytes } from '../progress.js';

interface BackupFlags {
  qmp?: string;
  guestAgent?: string;
  repo: string;
  full?: boolean;
  incremental?: boolean;
  disk?: string[];
  compression?: Compression;
  bandwidth?: number;
  parallel?: number;
  connections?: number;
  quiesce?: boolean;
  trim?: boolean;
  scratchDir?: string;
  checkpoint?: string;
}

function printSummary(ctx: CliContext, s: RepositoryBackupSummary): void {
  for (const d of s.disks) {
    const kind = d.parentId ? `incremental on ${d.parentId}` : 'full';
    ctx.print(`${s.vm} ${d.disk}: backup ${d.backupId} (${kind}), ${formatBytes(d.bytesRead)} read, ${formatBytes(d.bytesStored)} stored in ${d.objects} objects`);
  }
  ctx.info(`${s.level} backup of VM '${s.vm}' done in ${(s.durationMs / 1000).toFixed(1)} s: group ${s.groupId}, checkpoint ${s.checkpoint ?? '(none)'}`);
}

export function registerBackupCommand(program: Command, context: () => CliContext): void {
  program
    .command('backup')
    .description('back up a running VM into a repository: all disks (or --disk), full or incremental since the last backup (auto)')
    .argument('<vm>', 'VM name (registered with `fleece vm add`, or any name with --qmp)')
    .requiredOption('--repo <dir>', 'the repository directory (created when missing)')
    .option('--qmp <socket>', 'QMP socket of the VM (instead of the registry)')
    .option('--guest-agent <socket>', 'guest agent socket (for --quiesce)')
    .addOption(new Option('--full', 'take a full backup whatever the checkpoints say').conflicts('incremental'))
    .option('--incremental', 'require an incremental backup; fail with the reason when it cannot be done')
    .option('--disk <target>', 'back up only this disk (repeatable)', collect)
    .addOption(new Option('--compression <codec>', 'object compression').choices(['zstd', 'zlib', 'bz2', 'none']).default('zstd'))
    .option('--bandwidth <rate>', 'read at most this many bytes per second over all disks (e.g. 50M)', parseByteSize)
    .option('--parallel <n>', 'disks read at once (default 1)', parsePositiveInt)
    .option('--connections <n>', 'NBD connections per disk (default 2)', parsePositiveInt)
    .option('--quiesce', 'freeze the guest file systems (guest agent) while the backup point is taken')
    .option('--trim', 'discard what was read from the fleecing scratch image (writable export; frees no space on QEMU 7.2)')
    .option('--scratch-dir <dir>', 'where fleecing scratch images go (default <state-dir>/scratch)')
    .option('--checkpoint <name>', 'name of the new checkpoint (default fleece-<UTC time>)')
    .addHelpText('after', `
The level is chosen automatically unless --full or --incremental is given: incremental since the newest
checkpoint that has a complete backup of every disk in this repository and whose bitmaps are valid, full
otherwise; the reason is printed (and in --json). The new checkpoint is kept only when every disk's backup
is complete in the repository. Ctrl-C stops the backup and removes everything it made (exit code 130).

Examples:
  fleece backup vm1 --qmp /run/vm1/qmp.sock --repo /backups/repo
  fleece backup vm1 --repo /backups/repo --full --compression zstd --json`)
    .action(async (vm: string, flags: BackupFlags) => {
      const ctx = context();
      const level: RequestedLevel = flags.full ? 'full' : flags.incremental ? 'incremental' : 'auto';
      const conn = await openVm({
        vm,
        ...(flags.qmp ? { qmp: resolve(flags.qmp) } : {}),
        ...(flags.guestAgent ? { guestAgent: resolve(flags.guestAgent) } : {}),
        configDir: ctx.configDir,
        stateDir: ctx.stateDir,
        signal: ctx.signal,
      });
      const progress = ctx.progress();
      try {
        const summary = await backupVmToRepository(
          {
            vm: conn.vm,
            qmp: conn.qmp,
            checkpoints: conn.checkpoints,
            repo: resolve(flags.repo),
            level,
            ...(flags.disk ? { disks: flags.disk } : {}),
            ...(flags.compression ? { compression: flags.compression } : {}),
            stateDir: ctx.stateDir,
            runDir: ctx.runDir,
            ...(flags.scratchDir ? { scratchDir: resolve(flags.scratchDir) } : {}),
            ...(flags.parallel ? { parallel: flags.parallel } : {}),
            ...(flags.connections ? { connections: flags.connections } : {}),
            ...(flags.bandwidth ? { bandwidth: flags.bandwidth } : {}),
            ...(flags.trim ? { trim: true } : {}),
            ...(flags.quiesce ? { quiesce: true } : {}),
            ...(conn.entry.guestAgent ? { guestAgent: conn.entry.guestAgent } : {}),
            ...(flags.checkpoint ? { checkpointName: flags.checkpoint } : {}),
          },
          {
            signal: ctx.signal,
            onEvent: (event) => {
              if (event.type === 'level') ctx.info(`${event.level} backup of VM '${conn.vm}': ${event.reason}`);
              else if (event.type === 'started') progress.start(`backup ${conn.vm}`, event.disks.reduce((n, d) => n + d.bytesTotal, 0));
              else if (event.type === 'warning') ctx.info(`warning: ${event.message}`);
            },
            onProgress: (p) => progress.update({ done: p.totalDone, total: p.totalBytes }),
          },
        );
        progress.stop();
        if (ctx.json) ctx.printJson(summary);
        else printSummary(ctx, summary);
      } finally {
        progress.stop();
        await conn.close();
      }
    });
}
