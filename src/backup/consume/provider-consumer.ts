// A backup of a VM through an external provider, for every control plane: the provider contract's calls in
// Proxmox's order around one point in time (the control plane's begin), the bitmap mode chosen per volume, the
// volumes handed over as NBD exports or virtual files, and the provider's last successful checkpoint recorded.
//
//   job-init → backup-init → get-mechanism → query-incremental → (bitmap modes) → begin → backup-vm
//   → unmount, finish (the new checkpoint stays) → backup-cleanup {success: true} → state written → job-cleanup
// Any failure: unmount, abort (exports, jobs, scratch, the new checkpoint gone), backup-cleanup {success: false,
// error}, job-cleanup {success: false} — both cleanups always, each once; the provider's state stays as it was, so
// the next backup reuses the bitmap of the last backup that succeeded.
import { mkdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { checkpointBitmaps, type Checkpoint } from '../../checkpoint/model.js';
import type { CheckpointCheck } from '../../checkpoint/manager.js';
import { dirtyExtents } from '../../nbd/context-extents.js';
import { NbdSource } from '../../nbd/nbd-source.js';
import { AbortedError, InvalidInputError, describeError, throwIfAborted } from '../../util/errors.js';
import { lazyLogger } from './lazy-logger.js';
import { CheckpointBitmapInvalidError, type ControlPlane, type DiskExport, type Inspection, type PointInTime, type QuiesceMode, type SourceDisk } from '../control/control-plane.js';
import { processStartTime, type BackupJournal } from '../journal.js';
import { defaultCheckpointName } from '../repository-backup.js';
import { mountVirtualFile, type VirtualFile } from './nbdfuse-mount.js';
import type { ProviderEndpoint } from './provider-client.js';
import { ProviderError, type BitmapModeValue, type ProviderBackupVolume, type ReplyOf } from './provider-contract.js';
import { readProviderState, writeProviderState, type ProviderVmState } from './provider-state.js';

const log = lazyLogger('backup.provider-consumer');

export interface ProviderBackupOptions {
  plane: ControlPlane;
  endpoint: ProviderEndpoint;
  /** Where the provider's state (its last successful checkpoint per VM) is kept. */
  stateDir: string;
  /** A private 0700 directory (created when missing) for the virtual files and region files. */
  workDir: string;
  /** 'full': a new bitmap on every disk whatever the provider asked. Default 'auto'. */
  level?: 'auto' | 'full';
  disks?: readonly string[];
  /** Bytes per second, passed to the provider as `bandwidth-limit`. */
  bandwidth?: number;
  quiesce?: QuiesceMode;
  checkpointName?: string;
  /**
   * The VM's backup journal: the control plane's effects, the consumer's own (mounts, the provider's process) and
   * what it owes the provider (the cleanup verbs), so that one reconcile undoes all of a killed run.
   */
  journal?: BackupJournal;
}

export interface ProviderDiskSummary {
  disk: string;
  size: number;
  bitmapMode: BitmapModeValue;
  reason: string;
  incrementalFrom: string | null;
  /** Bytes in the regions the provider was asked to read. */
  dirtyBytes: number;
}

/** What `fleece backup --provider … --json` prints. */
export interface ProviderBackupSummary {
  vm: string;
  provider: string;
  providerKind: 'exec' | 'tool';
  backupId: string;
  mechanism: 'nbd' | 'file-handle';
  controlPlane: ControlPlane['kind'];
  /** The checkpoint this backup ends at (null when no disk got a bitmap). */
  checkpoint: string | null;
  disks: ProviderDiskSummary[];
  skipped: { disk: string; reason: string }[];
  stats: NonNullable<ReplyOf<'backup-vm'>['stats']> & NonNullable<ReplyOf<'backup-cleanup'>['stats']>;
  /** Older checkpoints of this provider's chain deleted once this backup was recorded (app/provider-backup.ts). */
  checkpointsDeleted: string[];
  warnings: string[];
  durationMs: number;
}

export type ProviderBackupEvent =
  | { type: 'mechanism'; mechanism: 'nbd' | 'file-handle'; backupId: string }
  | { type: 'bitmaps'; disks: { disk: string; mode: BitmapModeValue; reason: string; incrementalFrom?: string }[] }
  | { type: 'started'; checkpoint: string | null; disks: { disk: string; dirtyBytes: number }[] }
  | { type: 'warning'; message: string };

export interface ProviderBackupHooks {
  signal?: AbortSignal;
  onEvent?: (event: ProviderBackupEvent) => void;
}

/** The bitmap mode of one disk and why (the answer to query-incremental against what fleece knows). */
export interface BitmapChoice {
  disk: string;
  mode: BitmapModeValue;
  reason: string;
  /** reuse: incremental since this checkpoint. */
  incrementalFrom?: string;
}

export interface BitmapChoiceInput {
  provider: string;
  disks: readonly SourceDisk[];
  /** The provider's answer: per volume new or use (a volume left out: no bitmap). */
  asked: Readonly<Record<string, 'new' | 'use'>>;
  state: ProviderVmState | undefined;
  checkpoints: readonly Checkpoint[];
  checks: readonly CheckpointCheck[];
  /** False when no new checkpoint can be made (a shut-off VM). */
  canCheckpoint: boolean;
  level: 'auto' | 'full';
}

/** Chooses each disk's bitmap mode (pure): none, new (with the reason when the provider asked for use), reuse. */
export function chooseBitmapModes(input: BitmapChoiceInput): BitmapChoice[] {
  const { provider, state } = input;
  return input.disks.map((disk): BitmapChoice => {
    const target = disk.target;
    const asked = input.asked[target];
    if (disk.format !== 'qcow2') return { disk: target, mode: 'none', reason: `disk ${target} is ${disk.format}: it cannot hold a bitmap` };
    if (asked === undefined) return { disk: target, mode: 'none', reason: `provider '${provider}' asked for no bitmap on disk ${target}` };
    const fresh = (reason: string): BitmapChoice => input.canCheckpoint
      ? { disk: target, mode: 'new', reason }
      : { disk: target, mode: 'none', reason: `${reason}; the VM is shut off, so no new bitmap can be made` };
    if (input.level === 'full') return fresh('a full backup was asked for (--full)');
    if (asked === 'new') return fresh(`provider '${provider}' asked for a new bitmap`);
    const last = state?.disks[target];
    if (!state || !last || last.checkpoint === null) return fresh(`provider '${provider}' has no successful backup of disk ${target} with a bitmap yet`);
    const cp = input.checkpoints.find((c) => c.name === last.checkpoint);
    if (!cp) return fresh(`checkpoint ${last.checkpoint} of provider '${provider}''s last backup ${state.backupId} is gone`);
    if (!checkpointBitmaps(cp).some((b) => b.disk === target)) return fresh(`checkpoint ${cp.name} has no bitmap on disk ${target}`);
    const check = input.checks.find((c) => c.name === cp.name)?.disks.find((d) => d.disk === target);
    if (check && check.state !== 'ok') {
      return fresh(`the bitmap of checkpoint ${cp.name} on disk ${target} is ${check.state}${check.detail ? ` (${check.detail})` : ''}`);
    }
    if (last.size !== disk.virtualSize) return fresh(`disk ${target} changed size since provider '${provider}''s last backup (${last.size} → ${disk.virtualSize} bytes)`);
    return { disk: target, mode: 'reuse', reason: `incremental since checkpoint ${cp.name} (provider '${provider}''s backup ${state.backupId})`, incrementalFrom: cp.name };
  });
}

function selectDisks(vm: string, inspection: Inspection, wanted: readonly string[] | undefined): SourceDisk[] {
  if (inspection.disks.length === 0) throw new InvalidInputError(`VM '${vm}' has no disk to back up`);
  if (!wanted || wanted.length === 0) return inspection.disks;
  return [...new Set(wanted)].map((target) => {
    const disk = inspection.disks.find((d) => d.target === target);
    if (!disk) throw new InvalidInputError(`VM '${vm}' has no disk '${target}' that can be backed up`, { hint: `disks: ${inspection.disks.map((d) => d.target).join(', ')}` });
    return disk;
  });
}

/** Writes the `offset length` lines of the regions to read and returns their byte count. */
async function writeRegions(path: string, exp: DiskExport, choice: BitmapChoice, signal: AbortSignal): Promise<number> {
  if (choice.mode !== 'reuse') {
    await writeFile(path, `0 ${exp.size}\n`, { mode: 0o600 });
    return exp.size;
  }
  const source = await NbdSource.open(exp.socket ? { socket: exp.socket, exportName: exp.exportName } : { uri: exp.uri }, { metaContexts: [exp.context], connections: 1, signal });
  try {
    const lines: string[] = [];
    let bytes = 0;
    for await (const e of dirtyExtents(source, exp.context, { signal })) {
      lines.push(`${e.offset} ${e.length}`);
      bytes += e.length;
    }
    await writeFile(path, lines.length > 0 ? `${lines.join('\n')}\n` : '', { mode: 0o600 });
    return bytes;
  } finally {
    await source.close();
  }
}

/** Dirty bytes of an incremental export (what an nbd provider will read), from its bitmap context. */
async function dirtyBytesOf(exp: DiskExport, signal: AbortSignal): Promise<number> {
  const source = await NbdSource.open(exp.socket ? { socket: exp.socket, exportName: exp.exportName } : { uri: exp.uri }, { metaContexts: [exp.context], connections: 1, signal });
  try {
    let bytes = 0;
    for await (const e of dirtyExtents(source, exp.context, { signal })) bytes += e.length;
    return bytes;
  } finally {
    await source.close();
  }
}

/**
 * Backs a VM up through a provider (see the module comment for the order of calls).
 * @throws ProviderError (naming the provider, the verb and what was wrong), the control plane's errors,
 *   InvalidInputError, NbdfuseError, AbortedError. On every error the provider was told (backup-cleanup
 *   {success: false}), nothing of the attempt stays in QEMU or libvirt, and the provider's state is unchanged.
 */
export async function backupVmToProvider(options: ProviderBackupOptions, hooks: ProviderBackupHooks = {}): Promise<ProviderBackupSummary> {
  const started = Date.now();
  const startTime = Math.floor(started / 1000);
  const { plane, endpoint, journal: pj } = options;
  const provider = endpoint.name;
  const vm = plane.vm;
  const { signal } = hooks;
  const emit = (event: ProviderBackupEvent) => hooks.onEvent?.(event);
  const warnings: string[] = [];
  const warn = (message: string) => {
    warnings.push(message);
    emit({ type: 'warning', message });
  };
  throwIfAborted(signal, `the backup of VM '${vm}' through provider '${provider}'`);
  if (options.bandwidth !== undefined && !(Number.isSafeInteger(options.bandwidth) && options.bandwidth > 0)) {
    throw new InvalidInputError(`--bandwidth ${options.bandwidth} is not a positive number of bytes per second`);
  }
  const inner = new AbortController();
  const onOuterAbort = () => inner.abort(signal?.reason);
  signal?.addEventListener('abort', onOuterAbort, { once: true });
  const call = { signal: inner.signal, workDir: options.workDir };

  const inspection = await plane.inspect({ signal: inner.signal });
  const disks = selectDisks(vm, inspection, options.disks);
  for (const skip of inspection.skipped) warn(`disk ${skip.target} is skipped: ${skip.reason}`);
  await mkdir(options.workDir, { recursive: true, mode: 0o700 });

  let jobJournal: number | undefined;
  let jobInit = false;
  let backupId: string | undefined;
  let backupJournal: number | undefined;
  let backupCleanupCalled = false;
  let point: PointInTime | undefined;
  let finished = false;
  const mounts: VirtualFile[] = [];
  const regionFiles: string[] = [];
  const unmountAll = async () => {
    for (const m of mounts.splice(0)) await m.unmount();
    for (const f of regionFiles.splice(0)) await rm(f, { force: true });
  };
  const sayWarnings = (reply: { warnings?: string[] }) => {
    for (const w of reply.warnings ?? []) warn(`provider '${provider}': ${w}`);
  };

  try {
    jobJournal = await pj?.record({ kind: 'provider-job', provider });
    jobInit = true;
    sayWarnings(await endpoint.call('job-init', { 'start-time': startTime }, call));
    const init = await endpoint.call('backup-init', { vm, 'vm-type': 'qemu', 'start-time': startTime }, call);
    sayWarnings(init);
    backupId = init['backup-id'];
    backupJournal = await pj?.record({ kind: 'provider-backup', provider, vm, backupId });
    const mechanismReply = await endpoint.call('get-mechanism', { vm, 'vm-type': 'qemu', 'backup-id': backupId }, call);
    sayWarnings(mechanismReply);
    const mechanism = mechanismReply.mechanism;
    emit({ type: 'mechanism', mechanism, backupId });
    const query = await endpoint.call('query-incremental', {
      vm, 'backup-id': backupId, volumes: Object.fromEntries(disks.map((d) => [d.target, { size: d.virtualSize }])),
    }, call);
    sayWarnings(query);
    for (const name of Object.keys(query.volumes)) {
      if (!disks.some((d) => d.target === name)) {
        throw new ProviderError(provider, 'query-incremental', 'contract', `answered for volume '${name}', which is not one of ${disks.map((d) => d.target).join(', ')}`);
      }
    }

    // The bitmap modes; a bitmap the hypervisor refuses when it takes the point in time makes that disk new.
    const state = await readProviderState(options.stateDir, provider, vm);
    let checks = inspection.checks;
    const choose = () => chooseBitmapModes({
      provider, disks, asked: query.volumes, state, checkpoints: inspection.checkpoints, checks, canCheckpoint: inspection.canCheckpoint, level: options.level ?? 'auto',
    });
    let choices = choose();
    const checkpointName = options.checkpointName ?? defaultCheckpointName();
    for (let attempt = 0; ; attempt++) {
      const bitmapDisks = choices.filter((c) => c.mode !== 'none').map((c) => c.disk);
      try {
        point = await plane.begin({
          disks: choices.map((c) => ({ target: c.disk, ...(c.incrementalFrom ? { incrementalFrom: c.incrementalFrom } : {}) })),
          ...(bitmapDisks.length > 0 && inspection.canCheckpoint ? { checkpoint: { name: checkpointName, disks: bitmapDisks } } : {}),
          quiesce: options.quiesce ?? 'no',
          exportWritable: true,
          ...(options.journal ? { journal: options.journal } : {}),
          signal: inner.signal,
        });
        break;
      } catch (error) {
        if (!(error instanceof CheckpointBitmapInvalidError) || attempt > disks.length) throw error;
        checks = checks.map((c) => (c.name !== error.checkpoint ? c : {
          ...c, valid: false, disks: c.disks.map((d) => (d.disk === error.disk ? { ...d, state: 'inconsistent' as const, detail: error.detail } : d)),
        }));
        choices = choose();
      }
    }
    emit({ type: 'bitmaps', disks: choices.map((c) => ({ disk: c.disk, mode: c.mode, reason: c.reason, ...(c.incrementalFrom ? { incrementalFrom: c.incrementalFrom } : {}) })) });
    for (const w of point.warnings) warn(w);

    // The volumes as the mechanism shows them.
    const volumes: Record<string, ProviderBackupVolume> = {};
    const summaries: ProviderDiskSummary[] = [];
    for (const choice of choices) {
      const exp = point.exports.find((e) => e.disk === choice.disk)!;
      if (exp.tls) {
        throw new InvalidInputError(`disk ${choice.disk} of VM '${vm}' is exported over NBD with TLS: providers get unix-socket exports only`, {
          hint: 'register the VM without TLS credentials to back it up through a provider',
        });
      }
      const volume: ProviderBackupVolume = {
        size: exp.size,
        'bitmap-mode': choice.mode,
        ...(choice.mode !== 'reuse' ? { 'bitmap-reason': choice.reason } : {}),
        ...(choice.incrementalFrom ? { 'incremental-from': choice.incrementalFrom } : {}),
      };
      let dirtyBytes = exp.size;
      if (mechanism === 'nbd') {
        volume['nbd-uri'] = exp.uri;
        if (exp.socket) volume['nbd-socket'] = exp.socket;
        volume['nbd-export'] = exp.exportName;
        if (choice.mode === 'reuse') {
          volume['meta-context'] = exp.context;
          volume['bitmap-name'] = exp.context.replace(/^qemu:dirty-bitmap:/, '');
          dirtyBytes = await dirtyBytesOf(exp, inner.signal);
        }
      } else {
        const regions = join(options.workDir, `${choice.disk}.regions`);
        regionFiles.push(regions);
        dirtyBytes = await writeRegions(regions, exp, choice, inner.signal);
        const file = await mountVirtualFile({
          dir: options.workDir, name: choice.disk, uri: exp.uri, regions, discard: true, ...(pj ? { journal: pj } : {}), signal: inner.signal,
        });
        mounts.push(file);
        volume.file = file.path;
        volume['dirty-regions'] = regions;
      }
      volume['dirty-bytes'] = dirtyBytes;
      volumes[choice.disk] = volume;
      summaries.push({ disk: choice.disk, size: exp.size, bitmapMode: choice.mode, reason: choice.reason, incrementalFrom: choice.incrementalFrom ?? null, dirtyBytes });
    }
    emit({ type: 'started', checkpoint: point.checkpoint, disks: summaries.map((s) => ({ disk: s.disk, dirtyBytes: s.dirtyBytes })) });
    log.info({ vm, provider, backupId, mechanism, volumes }, 'calling backup-vm');

    // The provider's process is journaled too: a killed fleece leaves no provider reading a gone export.
    const processJournal = await pj?.record({ kind: 'process', what: `provider '${provider}' backup-vm` });
    const spawned = (pid: number) => {
      if (processJournal !== undefined) void pj?.update(processJournal, { kind: 'process', what: `provider '${provider}' backup-vm`, pid, startTime: processStartTime(pid) ?? '' });
    };
    const backupReply = await endpoint.call('backup-vm', {
      vm,
      'backup-id': backupId,
      mechanism,
      'guest-config': inspection.guestConfig ? { format: inspection.guestConfig.format, text: inspection.guestConfig.text } : null,
      volumes,
      info: {
        'start-time': startTime,
        'control-plane': plane.kind,
        checkpoint: point.checkpoint,
        ...(options.bandwidth !== undefined ? { 'bandwidth-limit': options.bandwidth } : {}),
      },
    }, { ...call, onSpawn: spawned }).finally(() => (processJournal !== undefined ? pj?.clear(processJournal) : undefined));
    sayWarnings(backupReply);

    // The provider has everything: end the point in time (the new checkpoint stays), then tell the provider.
    await unmountAll();
    throwIfAborted(inner.signal, `the backup of VM '${vm}' through provider '${provider}'`);
    const result = await point.finish();
    finished = true;
    for (const w of result.warnings) warn(w);
    backupCleanupCalled = true;
    const cleanup = await endpoint.call('backup-cleanup', { vm, 'backup-id': backupId, success: true }, { workDir: options.workDir });
    sayWarnings(cleanup);
    if (backupJournal !== undefined) await pj?.clear(backupJournal);
    backupJournal = undefined;

    // Only now is this the provider's last successful backup: `reuse` starts from its checkpoint next time.
    const checkpoint = point.checkpoint;
    await writeProviderState(options.stateDir, {
      version: 1, provider, vm, backupId, checkpoint, finishedAt: new Date().toISOString(),
      disks: Object.fromEntries(choices.map((c) => {
        const size = volumes[c.disk]!.size;
        // A shut-off VM made no checkpoint: a reused bitmap still counts from the old one.
        const at = c.mode === 'none' ? null : checkpoint ?? (c.mode === 'reuse' ? c.incrementalFrom ?? null : null);
        return [c.disk, { size, bitmapMode: c.mode, checkpoint: at }];
      })),
    });
    // The backup is the provider's and recorded: a failing job-cleanup is worth a warning, not a failed backup.
    jobInit = false;
    await endpoint.call('job-cleanup', { success: true }, { workDir: options.workDir }).then(sayWarnings, (error: unknown) => {
      warn(`provider '${provider}' failed job-cleanup after the backup: ${describeError(error)}`);
    });
    if (jobJournal !== undefined) await pj?.clear(jobJournal);
    return {
      vm, provider, providerKind: endpoint.kind, backupId, mechanism, controlPlane: plane.kind, checkpoint, disks: summaries,
      skipped: inspection.skipped.map((d) => ({ disk: d.target, reason: d.reason })),
      stats: { ...(backupReply.stats ?? {}), ...(cleanup.stats ?? {}) },
      checkpointsDeleted: [],
      warnings, durationMs: Date.now() - started,
    };
  } catch (error) {
    inner.abort(error);
    await unmountAll();
    if (point && !finished) await point.abort(error);
    const message = describeError(error);
    // Cleanup runs whatever happened, each verb once, without the aborted signal (it must reach the provider).
    if (backupId !== undefined && !backupCleanupCalled) {
      await endpoint.call('backup-cleanup', { vm, 'backup-id': backupId, success: false, error: message }, { workDir: options.workDir }).then(
        () => undefined,
        (e: unknown) => log.warn({ provider, err: e }, 'backup-cleanup after a failure failed'),
      );
    }
    if (backupJournal !== undefined) await pj?.clear(backupJournal).catch(() => undefined);
    if (jobInit) {
      await endpoint.call('job-cleanup', { success: false }, { workDir: options.workDir }).then(
        () => undefined,
        (e: unknown) => log.warn({ provider, err: e }, 'job-cleanup after a failure failed'),
      );
    }
    if (jobJournal !== undefined) await pj?.clear(jobJournal).catch(() => undefined);
    if (signal?.aborted) {
      throw new AbortedError(`the backup of VM '${vm}' through provider '${provider}' was interrupted; the provider was told, and nothing of it stays in the VM`, { cause: error });
    }
    throw error;
  } finally {
    signal?.removeEventListener('abort', onOuterAbort);
  }
}
