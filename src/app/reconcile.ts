// Cleans up after a backup whose process is gone (SIGKILL, a crash, a closed terminal): reads the VM's journal and
// undoes exactly what it lists, newest first — QEMU's nodes, jobs, exports and bitmaps of that backup's tag, the
// libvirt job serving on its socket and the checkpoint it made, its storage daemon, a frozen guest, the repository
// backups it was writing. Nothing the journal does not name is touched.
import { rm } from 'node:fs/promises';
import { setTimeout as delay } from 'node:timers/promises';
import { LibvirtConnection } from '../../native/libvirt/index.js';
import {
  ownerAlive,
  processStartTime,
  readJournal,
  removeJournal,
  type JournalEffect,
  type JournalOwner,
} from '../backup/journal.js';
import { CheckpointStore } from '../checkpoint/store.js';
import { GuestAgentClient } from '../qemu/guest-agent.js';
import { QmpClient } from '../qmp/client.js';
import type { QmpExecutor } from '../qmp/index.js';
import { openRepository } from '../repository/index.js';
import { describeError } from '../util/errors.js';
import { getLogger } from '../util/logger.js';
import { cleanupQmpLeftovers } from './jobs/recover.js';

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
}

/** One line for the user: what was cleaned after which process. */
export function describeReconcile(report: ReconcileReport): string {
  const what = report.cleaned.length > 0 ? report.cleaned.join('; ') : 'nothing was left';
  const failed = report.failures.length > 0 ? `; could not undo: ${report.failures.join('; ')}` : '';
  return `cleaned up after an interrupted backup of VM '${report.vm}' (fleece process ${report.owner.pid}): ${what}${failed}`;
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

async function undo(vm: string, effect: JournalEffect, options: ReconcileOptions, report: ReconcileReport): Promise<void> {
  switch (effect.kind) {
    case 'repository-backup': {
      const repo = await openRepository(effect.repo);
      const committed = await repo.get(effect.backupId).then(() => true, () => false);
      if (committed) {
        await repo.delete(effect.backupId);
        report.cleaned.push(`backup ${effect.backupId} of the unfinished VM backup deleted from ${effect.repo}`);
      } else {
        const removed = await repo.discardUncommitted(effect.backupId);
        report.cleaned.push(removed > 0
          ? `${removed} objects of backup ${effect.backupId}, never committed, removed from ${effect.repo}`
          : `backup ${effect.backupId} in ${effect.repo} was never committed (its objects go with \`fleece gc\`)`);
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
        const stats = await conn.jobStats(effect.domain);
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
          await conn.checkpointDelete(effect.domain, effect.newCheckpoint);
          report.cleaned.push(`checkpoint ${effect.newCheckpoint} (its backup never completed)`);
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
      await undo(vm, effect, options, report);
    } catch (error) {
      report.failures.push(`${effect.kind}: ${describeError(error)}`);
    }
  }
  log.info({ ...report }, 'reconciled the journal of an interrupted backup');
  if (report.failures.length === 0) await removeJournal(options.stateDir, vm);
  return report;
}
