// `fleece backup VM --repo DIR`: the main job (see src/app/backup-to-repository.ts), with progress and a summary.
import { resolve } from 'node:path';
import { InvalidArgumentError, Option, type Command } from 'commander';
import type { RepositoryBackupSummary } from '../../app/backup-to-repository.js';
import { checkBackupRequest, type BackupRequest } from '../../app/backup-request.js';
import { repoLocation } from '../../app/repo-location.js';
import { backupThroughProvider, printProviderSummary } from './provider.js';
import type { ProviderBackupSummary } from '../../app/provider-backup.js';
import type { Compression } from '../../app/vocabulary.js';
import type { CliContext } from '../context.js';
import type { DaemonClient } from '../daemon-client.js';
import { AbortedError, FleeceError } from '../../util/errors.js';
import { collect, parseByteSize, parsePositiveInt } from '../errors.js';
import { formatBytes } from '../progress.js';

interface BackupFlags {
  qmp?: string;
  connect?: string;
  guestAgent?: string;
  repo?: string;
  provider?: string;
  full?: boolean;
  incremental?: boolean;
  disk?: string[];
  compression?: Compression;
  bandwidth?: number;
  parallel?: number;
  connections?: number;
  quiesce?: boolean | string;
  trim?: boolean;
  scratchDir?: string;
  checkpoint?: string;
  fleecing?: 'cbw' | 'overlay';
  verifyBitmap?: number;
  keepCheckpoints?: number;
  pruneCheckpoints?: boolean;
}

/** `--verify-bitmap 0.5`, `--verify-bitmap 100%`: a percentage from 0 to 100. */
function parsePercent(text: string): number {
  const n = Number(text.replace(/%$/, ''));
  if (text.trim() === '' || !Number.isFinite(n) || n < 0 || n > 100) throw new InvalidArgumentError(`'${text}' is not a percentage from 0 to 100`);
  return n;
}

/** The one backup request from the command's flags (the daemon builds the same from its API body). */
export function requestFromFlags(vm: string, flags: BackupFlags): BackupRequest {
  const quiesce = flags.quiesce === undefined || flags.quiesce === false ? undefined : flags.quiesce === true ? 'yes' : flags.quiesce;
  return checkBackupRequest({
    vm,
    ...(flags.repo !== undefined ? { repo: repoLocation(flags.repo) } : {}),
    ...(flags.provider !== undefined ? { provider: flags.provider } : {}),
    ...(flags.qmp ? { qmp: resolve(flags.qmp) } : {}),
    ...(flags.connect ? { connect: flags.connect } : {}),
    ...(flags.guestAgent ? { guestAgent: resolve(flags.guestAgent) } : {}),
    level: flags.full ? 'full' : flags.incremental ? 'incremental' : 'auto',
    ...(flags.disk ? { disks: flags.disk } : {}),
    ...(flags.compression && flags.provider === undefined ? { compression: flags.compression } : {}),
    ...(flags.bandwidth ? { bandwidth: flags.bandwidth } : {}),
    ...(flags.parallel ? { parallel: flags.parallel } : {}),
    ...(flags.connections ? { connections: flags.connections } : {}),
    ...(quiesce ? { quiesce } : {}),
    ...(flags.trim ? { trim: true } : {}),
    ...(flags.scratchDir ? { scratchDir: resolve(flags.scratchDir) } : {}),
    ...(flags.checkpoint ? { checkpoint: flags.checkpoint } : {}),
    ...(flags.fleecing ? { fleecing: flags.fleecing } : {}),
    ...(flags.verifyBitmap !== undefined ? { verifyBitmap: flags.verifyBitmap } : {}),
    ...(flags.keepCheckpoints !== undefined ? { keepCheckpoints: flags.keepCheckpoints } : {}),
    ...(flags.pruneCheckpoints === false ? { pruneCheckpoints: false } : {}),
  });
}

function printSummary(ctx: CliContext, s: RepositoryBackupSummary & { checkpointsDeleted?: string[] }): void {
  for (const d of s.disks) {
    const kind = d.parentId ? `${d.level ?? 'incremental'} on ${d.parentId}` : 'full';
    ctx.print(`${s.vm} ${d.disk}: backup ${d.backupId} (${kind}), ${formatBytes(d.bytesRead)} read, ${formatBytes(d.bytesStored)} stored in ${d.objects} objects`);
  }
  if (s.checkpointsDeleted && s.checkpointsDeleted.length > 0) ctx.info(`checkpoints no backup here needs any more, deleted: ${s.checkpointsDeleted.join(', ')}`);
  ctx.info(`${s.level} backup of VM '${s.vm}' done in ${(s.durationMs / 1000).toFixed(1)} s: group ${s.groupId}, checkpoint ${s.checkpoint ?? '(none)'}`);
}

export function registerBackupCommand(program: Command, context: () => CliContext): void {
  program
    .command('backup')
    .description('back up a running VM into a repository: all disks (or --disk), full or incremental since the last backup (auto)')
    .argument('<vm>', 'VM name: a libvirt domain (with --connect, or registered), or a bare QEMU (with --qmp, or registered)')
    .option('--repo <dir>', 'the repository directory (created when missing)')
    .option('--provider <name>', 'instead of --repo: hand the point in time to this external backup provider (`fleece provider add`)')
    .option('-c, --connect <uri>', 'libvirt connection URI of the domain (qemu:///system, qemu+unix:///system?socket=…)')
    .option('--qmp <socket>', 'QMP socket of a bare QEMU (instead of the registry)')
    .option('--guest-agent <socket>', 'guest agent socket of a bare QEMU (for --quiesce)')
    .addOption(new Option('--full', 'take a full backup whatever the checkpoints say').conflicts('incremental'))
    .option('--incremental', 'require an incremental backup; fail with the reason when it cannot be done')
    .option('--disk <target>', 'back up only this disk (repeatable)', collect)
    .addOption(new Option('--compression <codec>', 'object compression').choices(['zstd', 'zlib', 'bz2', 'none']).default('zstd'))
    .option('--bandwidth <rate>', 'read at most this many bytes per second over all disks (e.g. 50M)', parseByteSize)
    .option('--parallel <n>', 'disks read at once (default 1)', parsePositiveInt)
    .option('--connections <n>', 'NBD connections per disk (default 2)', parsePositiveInt)
    .option('--quiesce [mode]', "freeze the guest's file systems (guest agent) while the point in time is taken; --quiesce=try warns and goes on without an agent")
    .option('--trim', 'discard what was read from the fleecing scratch image (writable export; frees no space on QEMU 7.2)')
    .option('--scratch-dir <dir>', 'where fleecing scratch images go (default <state-dir>/scratch)')
    .option('--checkpoint <name>', 'name of the new checkpoint (default fleece-<UTC time>)')
    .addOption(new Option('--fleecing <mode>', 'bare QEMU: cbw (copy-before-write + snapshot-access, QEMU >= 7.1; discards free the scratch) or overlay (default for --repo; --provider uses cbw where QEMU allows it)').choices(['cbw', 'overlay']))
    .option('--verify-bitmap <pct>', 'hash this percent of the blocks the dirty bitmap calls clean against the parent; a mismatch makes that disk a compare backup (default 0.5, 0 trusts the bitmap)', parsePercent)
    .option('--keep-checkpoints <n>', 'afterwards keep at most N checkpoints with a backup behind them per disk, delete the older ones fleece made (default 3)', parsePositiveInt)
    .option('--no-prune-checkpoints', 'leave the VM\'s checkpoints alone afterwards (other repositories use them)')
    .addHelpText('after', `
The level is chosen per disk unless --full or --incremental is given: incremental since the newest checkpoint
that has a complete backup of that disk in this repository and whose bitmap is valid, full otherwise; the
reason is printed (and in --json). A libvirt domain is backed up through libvirt (a pull backup job and
libvirt checkpoints, \`virsh checkpoint-list\` shows them); a shut-off domain from its images. The new
checkpoint is kept only when every disk's backup is complete in the repository. Ctrl-C stops the backup and
removes everything it made (exit code 130).

Examples:
  fleece backup vm1 --connect qemu:///system --repo /backups/repo
  fleece backup vm1 --repo /backups/repo --full --compression zstd --json   # vm1 registered with \`fleece vm add\`
  fleece backup vm1 --qmp /run/vm1/qmp.sock --repo /backups/repo`)
    .action(async (vm: string, flags: BackupFlags) => {
      const ctx = context();
      if ((flags.repo === undefined) === (flags.provider === undefined)) {
        throw new FleeceError('USAGE', flags.repo === undefined ? "required option '--repo <dir>' not specified (or --provider <name>)" : '--repo and --provider exclude each other');
      }
      const request = requestFromFlags(vm, flags);
      // Loaded here, not at start-up: the backup machinery is most of fleece (lazy imports keep small commands fast).
      const [{ detectDaemon }, { resolveBackupTarget, runBackup }] = await Promise.all([import('../daemon-client.js'), import('../../app/run-backup.js')]);
      // One process owns each VM: when a fleeced runs and knows this VM, the backup (repository or provider) is its job.
      const daemon = await detectDaemon(ctx.daemonSocket);
      if (daemon && (await daemon.listVms()).some((v) => v.name === vm)) {
        await backupThroughDaemon(ctx, daemon, request);
        return;
      }
      if (request.provider !== undefined) return backupThroughProvider(ctx, request);
      const entry = await resolveBackupTarget(request, ctx.configDir);
      const progress = ctx.progress();
      try {
        const summary = await runBackup(entry, request, { stateDir: ctx.stateDir, runDir: ctx.runDir, configDir: ctx.configDir }, {
          signal: ctx.signal,
          onEvent: (event) => {
            if (event.type === 'level') ctx.info(`${event.level} backup of VM '${vm}': ${event.reason}`);
            else if (event.type === 'started') progress.start(`backup ${vm}`, event.disks.reduce((n, d) => n + d.bytesTotal, 0));
            else if (event.type === 'warning') ctx.info(`warning: ${event.message}`);
          },
          onProgress: (p) => progress.update({ done: p.totalDone, total: p.totalBytes }),
        });
        progress.stop();
        if (ctx.json) ctx.printJson(summary);
        else printSummary(ctx, summary);
      } finally {
        progress.stop();
      }
    });
}

/** Runs the backup as a job of the fleeced that owns the VM: the same request, its progress, its summary. */
async function backupThroughDaemon(ctx: CliContext, daemon: DaemonClient, request: BackupRequest): Promise<void> {
  const { vm, qmp: _qmp, connect: _connect, guestAgent: _agent, ...body } = request;
  ctx.info(`backing up VM '${vm}' as a job of fleeced (${daemon.socketPath})`);
  let job = await daemon.repositoryBackup(vm, body);
  const progress = ctx.progress();
  const onAbort = () => void daemon.abortJob(job.id).catch(() => undefined);
  ctx.signal.addEventListener('abort', onAbort, { once: true });
  try {
    let started = false;
    for await (const event of daemon.jobEvents(job.id)) {
      job = event.job;
      if (!started && job.dataTotal > 0) {
        progress.start(`backup ${vm}`, job.dataTotal);
        started = true;
      }
      if (started) progress.update({ done: job.dataProcessed, total: job.dataTotal });
    }
    job = await daemon.job(job.id);
  } finally {
    ctx.signal.removeEventListener('abort', onAbort);
    progress.stop();
  }
  if (job.state === 'cancelled' || ctx.signal.aborted) throw new AbortedError(`the backup of VM '${vm}' was interrupted; nothing of it was kept`);
  if (job.state !== 'completed') throw new FleeceError('INTERNAL', `the backup job ${job.id} of VM '${vm}' ${job.state}: ${job.error ?? 'no reason given'}`);
  if (ctx.json) ctx.printJson(job.result);
  else if (request.provider !== undefined) printProviderSummary(ctx, job.result as ProviderBackupSummary);
  else printSummary(ctx, job.result as RepositoryBackupSummary);
}
