// `fleece backup` as one use case for the CLI and the daemon: resolve the VM, open its control plane, run the
// repository backup (backup/repository-backup.ts), close what was opened.
import { backupVmToRepository, type RepositoryBackupHooks, type RepositoryBackupSummary } from '../backup/repository-backup.js';
import { BackupJournal } from '../backup/journal.js';
import { repositoryOf, type BackupRequest } from './backup-request.js';
import { pruneVmCheckpoints } from './checkpoint-retention.js';
import { pruneBackups } from './retention.js';
import { describeError } from '../util/errors.js';
import { describeReconcile, reconcileVm } from './reconcile.js';
import { openControlPlane, type PlaneEnvironment } from './open-control-plane.js';
import { VmRegistry, validateVmName, type VmEntry } from './vm-registry.js';

/** The VM the request names: ad hoc (--qmp / --connect) or from the registry. Throws NotFoundError when unknown. */
export async function resolveBackupTarget(request: Pick<BackupRequest, 'vm' | 'qmp' | 'guestAgent' | 'connect'>, configDir: string): Promise<VmEntry> {
  if (request.connect !== undefined) return { name: request.vm, connect: request.connect };
  validateVmName(request.vm);
  if (request.qmp !== undefined) return { name: request.vm, qmp: request.qmp, ...(request.guestAgent ? { guestAgent: request.guestAgent } : {}) };
  const entry = await new VmRegistry(configDir).get(request.vm);
  return request.guestAgent ? { ...entry, guestAgent: request.guestAgent } : entry;
}

/** Runs one repository backup of `entry` as `request` says. Throws what backupVmToRepository throws. */
export async function runBackup(
  entry: VmEntry,
  request: BackupRequest,
  env: PlaneEnvironment & { configDir?: string },
  hooks: RepositoryBackupHooks = {},
): Promise<RepositoryBackupSummary & { checkpointsDeleted?: string[]; pruned?: string[] }> {
  // First whatever an interrupted backup of this VM left (a provider backup's too), then take the VM for this process.
  const report = await reconcileVm(entry.name, { stateDir: env.stateDir, ...(env.configDir ? { configDir: env.configDir } : {}), ...(env.qmp ? { qmp: env.qmp.qmp } : {}) });
  if (report) hooks.onEvent?.({ type: 'warning', message: describeReconcile(report) });
  const journal = await BackupJournal.begin(env.stateDir, entry.name);
  let plane;
  try {
    plane = await openControlPlane(entry, { ...env, ...(request.fleecing ? { fleecing: request.fleecing } : {}), ...(request.scratchDir ? { scratchDir: request.scratchDir } : {}), ...(hooks.signal ? { signal: hooks.signal } : {}) });
  } catch (error) {
    await journal.end();
    throw error;
  }
  try {
    const summary = await backupVmToRepository(
      {
        plane,
        journal,
        repo: repositoryOf(request),
        ...(request.level ? { level: request.level } : {}),
        ...(request.disks ? { disks: request.disks } : {}),
        ...(request.compression ? { compression: request.compression } : {}),
        ...(request.parallel ? { parallel: request.parallel } : {}),
        ...(request.connections ? { connections: request.connections } : {}),
        ...(request.bandwidth ? { bandwidth: request.bandwidth } : {}),
        ...(request.trim ? { trim: true } : {}),
        ...(request.quiesce ? { quiesce: request.quiesce } : {}),
        ...(request.checkpoint ? { checkpointName: request.checkpoint } : {}),
        ...(request.verifyBitmap !== undefined ? { verifyBitmap: request.verifyBitmap } : {}),
      },
      hooks,
    );
    if (report) summary.warnings.unshift(describeReconcile(report));
    // The backup is complete whatever happens now: the VM's own retention policy, then the checkpoints nothing here
    // needs any more (warnings only).
    const warn = (message: string) => {
      summary.warnings.push(message);
      hooks.onEvent?.({ type: 'warning', message });
    };
    let pruned: string[] | undefined;
    if (entry.retention) {
      try {
        const result = await pruneBackups({
          repo: repositoryOf(request),
          policy: { keep: entry.retention.keep, vm: entry.name, ...(entry.retention.timeZone ? { timeZone: entry.retention.timeZone } : {}) },
          ...(hooks.signal ? { signal: hooks.signal } : {}),
        });
        pruned = result.deleted;
      } catch (error) {
        warn(`the retention policy of VM '${entry.name}' failed: ${describeError(error)}`);
      }
    }
    if (request.pruneCheckpoints === false) return { ...summary, ...(pruned ? { pruned } : {}) };
    const keep = request.keepCheckpoints ?? entry.retention?.keepCheckpoints;
    const retention = await pruneVmCheckpoints(plane, repositoryOf(request), {
      ...(keep !== undefined ? { keep } : {}), ...(hooks.signal ? { signal: hooks.signal } : {}),
    });
    for (const message of retention.warnings) warn(message);
    return { ...summary, checkpointsDeleted: retention.deleted, ...(pruned ? { pruned } : {}) };
  } finally {
    await plane.close();
    await journal.end();
  }
}
