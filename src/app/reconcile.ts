// Cleans up after a backup whose process is gone (SIGKILL, a crash, a closed terminal): reads the VM's journal and
// undoes exactly what it lists, newest first — QEMU's nodes, jobs, exports and bitmaps of that backup's tag, the
// libvirt job serving on its socket and the checkpoint it made, its storage daemon, a frozen guest, the repository
// backups it was writing; of a provider backup or restore also its FUSE mounts, the provider's process and the
// cleanup verbs it owed the provider. Nothing the journal does not name is touched.
import { rm } from 'node:fs/promises';
import { setTimeout as delay } from 'node:timers/promises';
import { LibvirtConnection } from '../../native/libvirt/index.js';
import type { ProviderEndpoint } from '../backup/consume/provider-client.js';
import { deleteLibvirtCheckpoint } from '../backup/control/libvirt-checkpoint-delete.js';
import {
  ownerAlive,
  processStartTime,
  readJournal,
  removeJournal,
  restoreJournalKeys,
  type JournalEffect,
  type JournalOwner,
} from '../backup/journal.js';
import { CheckpointStore } from '../checkpoint/store.js';
import { GuestAgentClient } from '../qemu/guest-agent.js';
import { QmpClient } from '../qmp/client.js';
import type { QmpExecutor } from '../qmp/index.js';
import { openRepository, StoreError } from '../repository/index.js';
import { describeError } from '../util/errors.js';
import { getLogger } from '../util/logger.js';
import { cleanupQmpLeftovers } from './jobs/recover.js';
// Provider and host cleanup code (execa, the provider contracts) loads only for a journal that needs it.
const hostCleanup = () => import('../backup/consume/host-cleanup.js');

const log = getLogger('app.reconcile');

export interface ReconcileReport {
  vm: string;
  /** The process that left the journal. */
  owner: JournalOwner;
  cleaned: string[];
  failures: string[];
}

export interface ReconcileOptions {
  stateDir: string;
  /** A QMP connection to the VM already open (the daemon's): used instead of connecting to the journal's socket. */
  qmp?: QmpExecutor;
  /** Where the providers are registered: a killed provider backup's cleanup verbs are owed to them. */
  configDir?: string;
}

/** One line for the user: what was cleaned after which process. */
export function describeReconcile(report: ReconcileReport): string {
  const what = report.cleaned.length > 0 ? report.cleaned.join('; ') : 'nothing was left';
  const failed = report.failures.length > 0 ? `; could not undo: ${report.failures.join('; ')}` : '';
  const run = report.vm.startsWith('_restore-') ? `provider restore (${report.vm.slice(1)})` : `backup of VM '${report.vm}'`;
  return `cleaned up after an interrupted ${run} (fleece process ${report.owner.pid}): ${what}${failed}`;
}

async function removePaths(paths: readonly string[], report: ReconcileReport): Promise<void> {
  for (const path of paths) {
    try {
      await rm(path, { recursive: true, force: true });
    } catch (error) {
      report.failures.push(`${path}: ${describeError(error)}`);
    }
  }
}

async function providerEndpoint(name: string, options: ReconcileOptions): Promise<ProviderEndpoint | undefined> {
  if (options.configDir === undefined) return undefined;
  const { ProviderRegistry, endpointOf } = await import('./provider-registry.js');
  const entry = await new ProviderRegistry(options.configDir).get(name).catch(() => undefined);
  return entry ? endpointOf(entry, { stateDir: options.stateDir }) : undefined;
}

/** The cleanup verbs a killed provider run owed its provider. */
async function undoProviderCall(effect: Extract<JournalEffect, { kind: 'provider-backup' | 'provider-job' | 'provider-restore' }>, owner: JournalOwner, options: ReconcileOptions, report: ReconcileReport): Promise<void> {
  const endpoint = await providerEndpoint(effect.provider, options);
  if (!endpoint) {
    report.cleaned.push(`provider '${effect.provider}' is not registered${options.configDir === undefined ? ' here' : ' any more'}: its cleanup was skipped`);
    return;
  }
  const why = `the fleece process that ran it (pid ${owner.pid}) was interrupted`;
  switch (effect.kind) {
    case 'provider-backup':
      await endpoint.call('backup-cleanup', { vm: effect.vm, 'backup-id': effect.backupId, success: false, error: why });
      report.cleaned.push(`backup-cleanup {success: false} of backup ${effect.backupId} at provider '${effect.provider}'`);
      return;
    case 'provider-job':
      await endpoint.call('job-cleanup', { success: false });
      report.cleaned.push(`job-cleanup {success: false} at provider '${effect.provider}'`);
      return;
    case 'provider-restore':
      if (effect.volume !== undefined) {
        await endpoint.call('restore-volume-cleanup', { 'backup-id': effect.backupId, volume: effect.volume, success: false });
      } else {
        await endpoint.call('restore-vm-cleanup', { 'backup-id': effect.backupId, success: false });
      }
      report.cleaned.push(`restore cleanup of backup ${effect.backupId} at provider '${effect.provider}'`);
  }
}

/** Deletes the repository backup of a VM backup that did not end, committed or not. Throws StoreError. */
async function undoRepositoryBackup(effect: Extract<JournalEffect, { kind: 'repository-backup' }>, report: ReconcileReport): Promise<void> {
  const repo = await openRepository(effect.repo);
  const committed = await repo.get(effect.backupId).then(() => true, () => false);
  if (committed) {
    await repo.delete(effect.backupId);
    report.cleaned.push(`backup ${effect.backupId} of the unfinished VM backup deleted from ${effect.repo}`);
    return;
  }
  const removed = await repo.discardUncommitted(effect.backupId, effect.container !== undefined ? { container: effect.container } : {});
  report.cleaned.push(removed > 0
    ? `${removed} objects of backup ${effect.backupId}, never committed, removed from ${effect.repo}`
    : repo.layout === 'posix' || effect.container !== undefined
      ? `backup ${effect.backupId} in ${effect.repo} was never committed and left no object`
      : `backup ${effect.backupId} in ${effect.repo} was never committed (its objects go with \`fleece gc\`)`);
}

async function undo(vm: string, effect: JournalEffect, owner: JournalOwner, options: ReconcileOptions, report: ReconcileReport): Promise<void> {
  switch (effect.kind) {
    case 'provider-backup':
    case 'provider-job':
    case 'provider-restore':
      try {
        await undoProviderCall(effect, owner, options, report);
      } catch (error) {
        // Not retried: the provider was told and failed, or cannot be reached; a journal kept for it would block the VM.
        report.cleaned.push(`provider '${effect.provider}' failed its cleanup (${describeError(error)}); not retried`);
      }
      return;
    case 'mount': {
      const { killIfSame, unmountFuse } = await hostCleanup();
      await unmountFuse(effect.path);
      await killIfSame(effect.pid, effect.startTime);
      await rm(effect.path, { force: true, recursive: true });
      report.cleaned.push(`FUSE mount ${effect.path}`);
      return;
    }
    case 'process':
      await (await hostCleanup()).killIfSame(effect.pid, effect.startTime);
      report.cleaned.push(`${effect.what}${effect.pid ? ` (pid ${effect.pid})` : ''}`);
      return;
    case 'path':
      await removePaths([effect.path], report);
      return;
    case 'repository-backup': {
      try {
        await undoRepositoryBackup(effect, report);
      } catch (error) {
        // A writer that aborted committed nothing: its leftovers are garbage, and an unreachable store must not keep
        // the VM from being backed up (into another repository, say) until it answers again.
        if (!effect.aborted || !(error instanceof StoreError)) throw error;
        report.cleaned.push(`the objects the failed backup ${effect.backupId} left in ${effect.repo} could not be removed (${describeError(error)}): \`fleece gc\` removes them`);
      }
      return;
    }
    case 'guest-frozen': {
      if (effect.agent) {
        const agent = await GuestAgentClient.connect(effect.agent);
        try {
          await agent.thaw();
        } finally {
          agent.close();
        }
      } else if (effect.connect && effect.domain) {
        const conn = await LibvirtConnection.open(effect.connect);
        try {
          await conn.fsThaw(effect.domain);
        } finally {
          await conn.close();
        }
      }
      report.cleaned.push("the guest's file systems thawed");
      return;
    }
    case 'qmp-pull': {
      const qmp = options.qmp ?? (await QmpClient.connect({ path: effect.qmp }, { name: vm }));
      try {
        const result = await cleanupQmpLeftovers(vm, {
          qmp: effect.qmp, tag: effect.tag, nbdServer: effect.nbdServer, createdFiles: effect.files,
          ...(effect.newCheckpoint ? { newCheckpoint: effect.newCheckpoint } : {}),
          ...(effect.socket ? { socket: effect.socket } : {}),
        }, qmp, new CheckpointStore(options.stateDir));
        report.cleaned.push(...result.cleaned);
        report.failures.push(...result.failures);
      } finally {
        if (!options.qmp) await (qmp as QmpClient).close();
      }
      return;
    }
    case 'libvirt-pull': {
      const conn = await LibvirtConnection.open(effect.connect);
      try {
        // A job ends with its QEMU: a shut-off domain has none (and libvirt refuses to be asked).
        const { state } = await conn.domainState(effect.domain);
        const stats = state === 'shutoff' || state === 'crashed' ? { type: 'none' } : await conn.jobStats(effect.domain);
        if (stats.type !== 'none') {
          // Only the job serving on this backup's own socket (or, over TCP+TLS, writing its own scratch files) is
          // ended: never another owner's.
          const xml = await conn.backupXml(effect.domain).catch(() => '');
          if (xml.includes(effect.socketDir) || effect.files.some((file) => xml.includes(file))) {
            await conn.abortJob(effect.domain);
            report.cleaned.push(`libvirt backup job of domain ${effect.domain}`);
          }
        }
        if (effect.newCheckpoint && (await conn.listCheckpoints(effect.domain)).includes(effect.newCheckpoint)) {
          const how = await deleteLibvirtCheckpoint(conn, effect.domain, effect.newCheckpoint);
          if (how !== 'absent') {
            report.cleaned.push(`checkpoint ${effect.newCheckpoint} (its backup never completed${how === 'images' ? '; the domain is shut off: its bitmaps removed from the images' : ''})`);
          }
        }
      } finally {
        await conn.close();
      }
      await removePaths([effect.socketDir, ...effect.files], report);
      return;
    }
    case 'storage-daemon': {
      if (processStartTime(effect.pid) === effect.startTime) {
        process.kill(effect.pid, 'SIGTERM');
        for (let i = 0; i < 50 && processStartTime(effect.pid) === effect.startTime; i++) await delay(100);
        if (processStartTime(effect.pid) === effect.startTime) process.kill(effect.pid, 'SIGKILL');
        report.cleaned.push(`qemu-storage-daemon (pid ${effect.pid})`);
      }
      await removePaths(effect.files, report);
      return;
    }
  }
}

/**
 * Reconciles the VM's journal when its owner is gone; undefined when there is none, or its owner still runs (then
 * the next BackupJournal.begin says another backup runs). The journal is removed once everything it lists is
 * undone; what failed stays listed for the next try. Never throws for a failed undo (it is in the report).
 */
export async function reconcileVm(vm: string, options: ReconcileOptions): Promise<ReconcileReport | undefined> {
  const record = await readJournal(options.stateDir, vm);
  if (!record || ownerAlive(record.owner)) return undefined;
  const report: ReconcileReport = { vm, owner: record.owner, cleaned: [], failures: [] };
  for (const { effect } of [...record.effects].reverse()) {
    try {
      await undo(vm, effect, record.owner, options, report);
    } catch (error) {
      report.failures.push(`${effect.kind}: ${describeError(error)}`);
    }
  }
  log.info({ ...report }, 'reconciled the journal of an interrupted backup');
  if (report.failures.length === 0) await removeJournal(options.stateDir, vm);
  return report;
}

/** Reconciles the journals of provider restores whose process is gone (they take no VM). Never throws for an undo. */
export async function reconcileRestores(options: ReconcileOptions): Promise<ReconcileReport[]> {
  const reports: ReconcileReport[] = [];
  for (const key of await restoreJournalKeys(options.stateDir)) {
    const report = await reconcileVm(key, options).catch((error: unknown) => {
      log.warn({ key, err: error }, 'an unreadable restore journal was left alone');
      return undefined;
    });
    if (report) reports.push(report);
  }
  return reports;
}
