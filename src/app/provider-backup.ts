// `fleece backup VM --provider NAME` and `fleece restore --provider NAME` as use cases for the CLI (and the daemon):
// the registered provider, whatever an interrupted run left (the VM's journal, or a restore's), a
// private 0700 directory for this run's sockets and mounts, the VM's control plane, the provider consumer.
import { randomBytes } from 'node:crypto';
import { mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { backupVmToProvider, type ProviderBackupHooks, type ProviderBackupSummary } from '../backup/consume/provider-consumer.js';
import type { ProviderVerb } from '../backup/consume/provider-contract.js';
import { restoreFromProvider, type ProviderRestoreSummary } from '../backup/consume/provider-restore.js';
import {
  checkpointsOfOtherProviders, listToolRecords, readProviderState, stateCheckpoints, type ProviderVmState, type ToolBackupRecord,
} from '../backup/consume/provider-state.js';
import type { ControlPlane } from '../backup/control/control-plane.js';
import { BackupJournal } from '../backup/journal.js';
import { InvalidInputError, describeError } from '../util/errors.js';
import type { BackupRequest } from './backup-request.js';
import { openControlPlane, type PlaneEnvironment } from './open-control-plane.js';
import { describeReconcile, reconcileRestores, reconcileVm } from './reconcile.js';
import { ProviderRegistry, endpointOf, type ProviderEntry } from './provider-registry.js';
import type { VmEntry } from './vm-registry.js';

export type { ProviderBackupSummary, ProviderRestoreSummary, ProviderEntry, ProviderVmState, ToolBackupRecord };
export { ProviderRegistry, parseTimeouts } from './provider-registry.js';

export interface ProviderEnvironment extends PlaneEnvironment {
  configDir: string;
  /** Each stderr line of the provider, as it comes. */
  onProviderLine?: (line: string, verb: ProviderVerb) => void;
}

/** A private 0700 directory for one run under the run directory (a short name: sockets live there), journaled first. */
async function privateDir(runDir: string, journal: BackupJournal): Promise<{ dir: string; id: number }> {
  await mkdir(runDir, { recursive: true, mode: 0o700 });
  const dir = join(runDir, `p-${randomBytes(4).toString('hex')}`);
  const id = await journal.record({ kind: 'path', path: dir });
  await mkdir(dir, { mode: 0o700 });
  return { dir, id };
}

/**
 * After a successful provider backup that made a checkpoint: the checkpoints the provider's previous backup ended at
 * are no longer its chain's start, so they go (unless another provider's last backup starts from one). Without this,
 * every provider backup would leave one more checkpoint (a bitmap per disk that QEMU updates on every guest write).
 */
async function pruneProviderCheckpoints(plane: ControlPlane, stateDir: string, previous: ProviderVmState | undefined, summary: ProviderBackupSummary): Promise<{ deleted: string[]; warnings: string[] }> {
  if (summary.checkpoint === null || !summary.disks.some((d) => d.bitmapMode === 'new' || d.bitmapMode === 'reuse')) return { deleted: [], warnings: [] };
  const others = await checkpointsOfOtherProviders(stateDir, summary.vm, summary.provider);
  const obsolete = stateCheckpoints(previous).filter((cp) => cp !== summary.checkpoint && !others.has(cp));
  if (obsolete.length === 0) return { deleted: [], warnings: [] };
  // The backup is the provider's and recorded already: a failing deletion is a warning, never a failed backup.
  const result = await plane.deleteCheckpoints(obsolete).catch((error: unknown) => ({
    deleted: [] as string[], skipped: obsolete.map((name) => ({ name, reason: describeError(error) })),
  }));
  return {
    deleted: result.deleted,
    warnings: result.skipped.map((s) => `checkpoint ${s.name} of provider '${summary.provider}''s previous backup was not deleted: ${s.reason}`),
  };
}

/**
 * Backs the VM up through the provider the request names. @throws what backupVmToProvider throws, NotFoundError
 * (no such provider), ConflictError (another backup of the VM runs).
 */
export async function runProviderBackup(
  entry: VmEntry,
  request: BackupRequest,
  env: ProviderEnvironment,
  hooks: ProviderBackupHooks = {},
): Promise<ProviderBackupSummary> {
  if (request.provider === undefined) throw new InvalidInputError('the backup request names no provider');
  if (request.level === 'incremental') {
    throw new InvalidInputError('--incremental does not apply to a provider backup: the provider chooses per volume (query-incremental)', { hint: 'leave it out, or give --full' });
  }
  const registry = new ProviderRegistry(env.configDir);
  const provider = await registry.get(request.provider);
  const endpoint = endpointOf(provider, { stateDir: env.stateDir, ...(env.onProviderLine ? { onStderr: env.onProviderLine } : {}) });
  const reconciled: string[] = [];
  const warn = (message: string) => {
    reconciled.push(message);
    hooks.onEvent?.({ type: 'warning', message });
  };
  const report = await reconcileVm(entry.name, { stateDir: env.stateDir, configDir: env.configDir, ...(env.qmp ? { qmp: env.qmp.qmp } : {}) });
  if (report) warn(describeReconcile(report));

  const journal = await BackupJournal.begin(env.stateDir, entry.name);
  const previous = await readProviderState(env.stateDir, provider.name, entry.name).catch(() => undefined);
  let workDir: string | undefined;
  let dirId: number | undefined;
  let plane;
  try {
    ({ dir: workDir, id: dirId } = await privateDir(env.runDir, journal));
    plane = await openControlPlane(entry, {
      // Copy-before-write where QEMU allows it: what the provider discards after reading really leaves the scratch.
      ...env, runDir: workDir, fleecing: request.fleecing ?? 'auto', ...(request.scratchDir ? { scratchDir: request.scratchDir } : {}), ...(hooks.signal ? { signal: hooks.signal } : {}),
    });
    const summary = await backupVmToProvider({
      plane,
      endpoint,
      stateDir: env.stateDir,
      workDir,
      journal,
      ...(request.level === 'full' ? { level: 'full' as const } : {}),
      ...(request.disks ? { disks: request.disks } : {}),
      ...(request.bandwidth ? { bandwidth: request.bandwidth } : {}),
      ...(request.quiesce ? { quiesce: request.quiesce } : {}),
      ...(request.checkpoint ? { checkpointName: request.checkpoint } : {}),
    }, hooks);
    const pruned = await pruneProviderCheckpoints(plane, env.stateDir, previous, summary);
    for (const message of pruned.warnings) hooks.onEvent?.({ type: 'warning', message });
    return { ...summary, checkpointsDeleted: pruned.deleted, warnings: [...reconciled, ...summary.warnings, ...pruned.warnings] };
  } finally {
    await plane?.close();
    if (workDir) await rm(workDir, { recursive: true, force: true }).catch(() => undefined);
    if (dirId !== undefined) await journal.clear(dirId).catch(() => undefined);
    await journal.end();
  }
}

export interface ProviderRestoreRequest {
  provider: string;
  backupId: string;
  out: string;
  format?: 'raw' | 'qcow2';
  disk?: string;
  overwrite?: boolean;
}

/** Restores one volume of a provider's backup into a new image. @throws what restoreFromProvider throws, NotFoundError. */
export async function runProviderRestore(request: ProviderRestoreRequest, env: ProviderEnvironment & { signal?: AbortSignal }): Promise<{ summary: ProviderRestoreSummary; warnings: string[] }> {
  const registry = new ProviderRegistry(env.configDir);
  const provider = await registry.get(request.provider);
  const endpoint = endpointOf(provider, { stateDir: env.stateDir, ...(env.onProviderLine ? { onStderr: env.onProviderLine } : {}) });
  const warnings = (await reconcileRestores({ stateDir: env.stateDir, configDir: env.configDir })).map(describeReconcile);
  const journal = await BackupJournal.beginRestore(env.stateDir);
  let workDir: string | undefined;
  let dirId: number | undefined;
  try {
    ({ dir: workDir, id: dirId } = await privateDir(env.runDir, journal));
    const summary = await restoreFromProvider({
      endpoint,
      backupId: request.backupId,
      out: request.out,
      format: request.format ?? 'raw',
      workDir,
      journal,
      ...(request.disk ? { volume: request.disk } : {}),
      ...(request.overwrite ? { overwrite: true } : {}),
      ...(env.signal ? { signal: env.signal } : {}),
    });
    return { summary, warnings };
  } finally {
    if (workDir) await rm(workDir, { recursive: true, force: true }).catch(() => undefined);
    if (dirId !== undefined) await journal.clear(dirId).catch(() => undefined);
    await journal.end();
  }
}

/** What fleece knows of a provider: its last successful backup of `vm`, and a tool driver's records. */
export async function providerStatus(configDir: string, stateDir: string, name: string, vm?: string): Promise<{ entry: ProviderEntry; state?: ProviderVmState; records: ToolBackupRecord[] }> {
  const entry = await new ProviderRegistry(configDir).get(name);
  const state = vm ? await readProviderState(stateDir, name, vm) : undefined;
  const records = entry.kind === 'tool' ? await listToolRecords(stateDir, name) : [];
  return { entry, ...(state ? { state } : {}), records };
}
