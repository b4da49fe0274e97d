// The QMP control plane: fleece drives QEMU itself — the checkpoint's bitmaps and the fleecing of every disk in one
// transaction, an NBD server exporting each disk's scratch node, the guest frozen through its agent around it.
import { join } from 'node:path';
import type { CheckpointManager, PreparedCheckpoint } from '../../checkpoint/manager.js';
import { queryDisks } from '../../qemu/block-graph.js';
import { GuestAgentClient } from '../../qemu/guest-agent.js';
import { QmpClosedError, type QmpExecutor } from '../../qmp/index.js';
import { InvalidInputError, describeError } from '../../util/errors.js';
import type { BackupRegistry } from '../backup-registry.js';
import { newJobTag } from '../begin-backup.js';
import { startCbwFleecing } from '../fleecing-cbw.js';
import { startPullBackup } from '../pull-backup.js';
import type { BeginRequest, CheckpointDeletion, ControlPlane, Inspection, PointInTime } from './control-plane.js';

export interface QmpControlPlaneOptions {
  vm: string;
  qmp: QmpExecutor;
  checkpoints: CheckpointManager;
  /** Where scratch images go (created 0700). */
  scratchDir: string;
  /** Where the NBD socket goes (mode 0600 in a 0700 directory). */
  runDir: string;
  /** The guest agent's socket, for quiesce. */
  guestAgent?: string;
  /** The QMP socket `qmp` is connected to: named in the journal, so that another process can clean up. */
  qmpSocket?: string;
  /** One backup per VM at a time (the daemon passes its registry). */
  registry?: BackupRegistry;
  /** Closes the QMP connection when the plane is closed (the plane opened it). */
  onClose?: () => Promise<void>;
  /**
   * 'overlay' (default): a qcow2 scratch overlay and blockdev-backup sync:none. 'cbw' (QEMU ≥ 7.1): the
   * copy-before-write filter and a snapshot-access export (backup/fleecing-cbw.ts): what a reader discards leaves
   * the scratch, and an incremental export refuses reads outside its bitmap. 'auto': cbw when QEMU is 7.1 or newer
   * and every disk is a guest device, else overlay.
   */
  fleecing?: 'overlay' | 'cbw' | 'auto';
}

/** cbw where QEMU (≥ 7.1: snapshot-access) and the disks (a guest device to insert the filter under) allow it. */
async function resolveFleecing(qmp: QmpExecutor, disks: readonly { qdev: string }[]): Promise<'overlay' | 'cbw'> {
  const version = await qmp.execute<{ qemu: { major: number; minor: number } }>('query-version').catch(() => undefined);
  const recent = version !== undefined && (version.qemu.major > 7 || (version.qemu.major === 7 && version.qemu.minor >= 1));
  return recent && disks.every((d) => d.qdev !== '') ? 'cbw' : 'overlay';
}

/**
 * Thaws the guest through a new agent connection after a freeze that may or may not have reached it (the agent runs
 * commands in order, so the thaw comes after a pending freeze). Tries for up to a minute; never throws.
 */
async function thawAgain(socket: string): Promise<void> {
  const deadline = Date.now() + 60_000;
  while (Date.now() < deadline) {
    try {
      const rescue = await GuestAgentClient.connect(socket, { timeoutMs: 20_000 });
      try {
        const status = await rescue.execute<string>('guest-fsfreeze-status', undefined, { timeoutMs: 20_000 });
        if (status !== 'frozen') return;
        await rescue.thaw();
        return;
      } finally {
        rescue.close();
      }
    } catch {
      await new Promise((resolve) => setTimeout(resolve, 500));
    }
  }
}

/** Why QEMU can no longer serve the backup (its QMP connection closed: it exited or was killed), or undefined. */
async function qemuGone(qmp: QmpExecutor): Promise<{ why: string; hint: string } | undefined> {
  try {
    await qmp.execute('query-status', undefined, { timeoutMs: 30_000 });
    return undefined;
  } catch (error) {
    if (!(error instanceof QmpClosedError)) return undefined;
    return {
      why: `QEMU went away (its QMP connection ${error.socket} closed: QEMU exited or was killed)`,
      hint: 'start the VM again and take the backup again (the earlier backups are unchanged)',
    };
  }
}

export class QmpControlPlane implements ControlPlane {
  readonly kind = 'qmp' as const;
  readonly vm: string;

  constructor(private readonly options: QmpControlPlaneOptions) {
    this.vm = options.vm;
  }

  async inspect(options: { signal?: AbortSignal } = {}): Promise<Inspection> {
    const { qmp, checkpoints } = this.options;
    const signal = options.signal ? { signal: options.signal } : {};
    const [disks, list, checks] = await Promise.all([queryDisks(qmp, signal), checkpoints.list(), checkpoints.validate(signal)]);
    return {
      disks: disks.map((d) => ({ target: d.target, virtualSize: d.virtualSize, format: d.format, path: d.filename })),
      skipped: [],
      checkpoints: list,
      checks,
      canCheckpoint: true,
    };
  }

  async begin(request: BeginRequest): Promise<PointInTime> {
    const { vm, qmp, checkpoints } = this.options;
    const { signal } = request;
    const all = await queryDisks(qmp, signal ? { signal } : {});
    const disks = request.disks.map((d) => {
      const disk = all.find((x) => x.target === d.target);
      if (!disk) throw new InvalidInputError(`VM '${vm}' has no disk '${d.target}'`);
      return { disk, ...(d.incrementalFrom ? { incrementalFrom: d.incrementalFrom } : {}) };
    });
    let prepared: PreparedCheckpoint | undefined;
    if (request.checkpoint && request.checkpoint.disks.length > 0) {
      prepared = await checkpoints.prepareCreate(request.checkpoint.name, { disks: request.checkpoint.disks, ...(signal ? { signal } : {}) });
    }
    const warnings: string[] = [];
    const { journal } = request;
    const tag = newJobTag();
    // Every name the pull backup will use is known from its tag: journaled before any of it exists.
    const journalId = journal && this.options.qmpSocket
      ? await journal.record({
        kind: 'qmp-pull',
        qmp: this.options.qmpSocket,
        tag,
        ...(prepared ? { newCheckpoint: prepared.checkpoint.name } : {}),
        files: disks.map((d) => join(this.options.scratchDir, `${vm}-${d.disk.target}-${tag}.qcow2`)),
        socket: join(this.options.runDir, `${vm}-${tag}.sock`),
        nbdServer: true,
      })
      : undefined;
    const quiesce = request.quiesce ?? 'no';
    let agent: GuestAgentClient | undefined;
    let frozen = false;
    let frozenId: number | undefined;
    let freezeSent = false;
    if (quiesce !== 'no') {
      if (!this.options.guestAgent) {
        const message = `--quiesce needs the guest agent socket of VM '${vm}'`;
        const hint = 'pass --guest-agent PATH or register the VM with `fleece vm add NAME --qmp … --guest-agent PATH`';
        if (quiesce === 'yes') {
          if (journalId !== undefined) await journal?.clear(journalId);
          throw new InvalidInputError(message, { hint });
        }
        warnings.push(`${message}: the backup is crash-consistent, not quiesced (${hint})`);
      } else {
        try {
          agent = await GuestAgentClient.connect(this.options.guestAgent, signal ? { signal } : {});
          frozenId = await journal?.record({ kind: 'guest-frozen', agent: this.options.guestAgent });
          freezeSent = true;
          await agent.freeze(signal ? { signal } : {});
          frozen = true;
        } catch (error) {
          // The freeze may have reached the agent before it failed (aborted, timed out): thaw whatever happened.
          // A fresh connection: the first one may be waiting for the freeze's reply. QEMU serves one agent client at
          // a time, so the first one is closed before.
          agent?.close();
          if (freezeSent) await thawAgain(this.options.guestAgent);
          if (frozenId !== undefined) {
            await journal?.clear(frozenId);
            frozenId = undefined;
          }
          agent?.close();
          agent = undefined;
          if (quiesce === 'yes') {
            if (journalId !== undefined) await journal?.clear(journalId);
            throw error;
          }
          warnings.push(`could not freeze the guest's file systems (${describeError(error)}): the backup is crash-consistent, not quiesced`);
        }
      }
    }
    let session: { exports: readonly { disk: string; exportName: string; socket?: string; uri: string; context: string; incrementalFrom?: string; size: number }[]; finish(): Promise<{ warnings: string[] }>; abort(reason?: unknown): Promise<void> };
    try {
      const fleecing = this.options.fleecing === 'auto' ? await resolveFleecing(qmp, disks.map((d) => d.disk)) : this.options.fleecing ?? 'overlay';
      if (fleecing === 'cbw') {
        const reservation = this.options.registry?.reserve(vm);
        try {
          const cbw = await startCbwFleecing({
            vm, qmp, tag, disks,
            ...(prepared ? { checkpointActions: prepared.actions, recordCheckpoint: () => checkpoints.commitCreated(prepared.checkpoint) } : {}),
            scratchDir: this.options.scratchDir, runDir: this.options.runDir, exportWritable: request.exportWritable ?? false, ...(signal ? { signal } : {}),
          });
          session = {
            exports: cbw.exports,
            finish: () => cbw.finish().finally(() => reservation?.release()),
            abort: (reason) => cbw.abort(reason).finally(() => reservation?.release()),
          };
        } catch (error) {
          reservation?.release();
          throw error;
        }
      } else session = await startPullBackup({
        vm,
        qmp,
        tag,
        disks,
        ...(prepared ? { checkpointActions: prepared.actions, recordCheckpoint: () => checkpoints.commitCreated(prepared.checkpoint) } : {}),
        scratchDir: this.options.scratchDir,
        runDir: this.options.runDir,
        exportWritable: request.exportWritable ?? false,
        ...(this.options.registry ? { registry: this.options.registry } : {}),
        ...(signal ? { signal } : {}),
      });
    } catch (error) {
      if (journalId !== undefined) await journal?.clear(journalId);
      throw error;
    } finally {
      if (frozen && agent) {
        const thawed = await agent.thaw().then(() => true, (error: unknown) => {
          warnings.push(`guest-fsfreeze-thaw failed: ${describeError(error)}`);
          return false;
        });
        if (thawed && frozenId !== undefined) await journal?.clear(frozenId);
      } else if (frozenId !== undefined) {
        await journal?.clear(frozenId);
      }
      agent?.close();
    }
    const pull = session;
    return {
      checkpoint: prepared?.checkpoint.name ?? null,
      exports: pull.exports.map((e) => ({
        disk: e.disk,
        exportName: e.exportName,
        ...(e.socket ? { socket: e.socket } : {}),
        uri: e.uri,
        context: e.context,
        ...(e.incrementalFrom ? { incrementalFrom: e.incrementalFrom } : {}),
        size: e.size,
      })),
      warnings,
      finish: async () => {
        try {
          return { warnings: (await pull.finish()).warnings };
        } finally {
          // finish() undid everything of the job whether it succeeded or not (then the checkpoint is gone too).
          if (journalId !== undefined) await journal?.clear(journalId);
        }
      },
      abort: async (reason?: unknown) => {
        await pull.abort(reason);
        if (journalId !== undefined) await journal?.clear(journalId).catch(() => undefined);
      },
      lost: () => qemuGone(qmp),
    };
  }

  /** Through the checkpoint manager: one transaction removing a checkpoint's bitmaps, then its metadata. */
  async deleteCheckpoints(names: readonly string[], options: { signal?: AbortSignal } = {}): Promise<CheckpointDeletion> {
    const result: CheckpointDeletion = { deleted: [], skipped: [] };
    for (const name of names) {
      try {
        await this.options.checkpoints.delete(name, options.signal ? { signal: options.signal } : {});
        result.deleted.push(name);
      } catch (error) {
        result.skipped.push({ name, reason: describeError(error) });
      }
    }
    return result;
  }

  async close(): Promise<void> {
    await this.options.onClose?.().catch(() => undefined);
  }
}

/** The default scratch directory under a state directory. */
export function defaultScratchDir(stateDir: string): string {
  return join(stateDir, 'scratch');
}
