// Pull backup (fleecing): per disk a qcow2 scratch overlay backed by the live disk, a sync:none job that copies old
// data there before the guest overwrites it, and an NBD export of the scratch node (with the incremental bitmap);
// the reader decides when it ends (finish keeps the new checkpoint, abort removes it).
import { chmod, mkdir, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import type { QmpExecutor } from '../qmp/index.js';
import { InvalidInputError, describeError } from '../util/errors.js';
import { getLogger } from '../util/logger.js';
import { allocatedBytes, type BackupJobInfo } from './backup-job.js';
import type { ActiveBackup, BackupRegistry } from './backup-registry.js';
import { beginBackup, newJobTag } from './begin-backup.js';
import type { JobPhase } from './job-state.js';
import { pskDirectory, type NbdTls } from '../nbd/nbd-tls.js';
import type { NbdServerAddress, PlanAction, PlanDiskRequest, PlanNaming, PlanNbdTls, PlanSourceDisk } from './plan.js';

const log = getLogger('backup.pull');

/** One disk of a pull backup. */
export interface PullDiskRequest {
  disk: PlanSourceDisk;
  /** Incremental since this checkpoint: the export carries `qemu:dirty-bitmap:<exportBitmap>`. Absent: full. */
  incrementalFrom?: string;
  /** The scratch image; default `<scratchDir>/<vm>-<disk>-<tag>.qcow2`, created (and always deleted) by fleece. */
  scratch?: { path: string; create: boolean };
  /** Default: the disk's target name. */
  exportName?: string;
  /** Default `backup-<disk>`. */
  exportBitmap?: string;
}

export interface PullBackupRequest {
  vm: string;
  qmp: QmpExecutor;
  disks: readonly PullDiskRequest[];
  checkpointActions?: readonly PlanAction[];
  /** Where default scratch images go. */
  scratchDir?: string;
  /** The NBD server; default a unix socket `<runDir>/<vm>-<tag>.sock` (mode 0600). */
  server?: NbdServerAddress;
  /** Directory of the default socket (created with mode 0700). */
  runDir?: string;
  /**
   * The NBD server speaks TLS only, with these credentials (QEMU's tls-creds object, removed at the end); readers
   * get the same in each export's `tls`.
   */
  tls?: NbdTls;
  /** Let the reader discard what it read, so the scratch shrinks. Default false. */
  exportWritable?: boolean;
  /** Records the new checkpoint in the store; called by finish() only. When it throws, the bitmaps are removed. */
  recordCheckpoint?: () => Promise<void>;
  registry?: BackupRegistry;
  signal?: AbortSignal;
  tag?: string;
  naming?: PlanNaming;
}

/** What a reader needs to read one disk. */
export interface PullExport {
  disk: string;
  exportName: string;
  /** The unix socket, when the server listens on one. */
  socket?: string;
  /** `nbd+unix:///vda?socket=…`, `nbd://host:port/vda`, or with TLS `nbds://host:port/vda`. */
  uri: string;
  /** The TLS credentials a reader needs (the server refuses plaintext then). */
  tls?: NbdTls;
  /** The temporary bitmap exported with the disk (incremental only). */
  bitmap?: string;
  /** The meta context to read extents from: `qemu:dirty-bitmap:backup-vda` or `base:allocation`. */
  context: string;
  incrementalFrom?: string;
  size: number;
}

export interface PullResult {
  vm: string;
  startedAt: Date;
  finishedAt: Date;
  /** The new checkpoint's bitmaps, kept: record the checkpoint in the store. */
  checkpointBitmaps: { node: string; name: string }[];
  warnings: string[];
}

/** A running pull backup. */
export interface PullSession extends ActiveBackup {
  readonly mode: 'pull';
  readonly exports: readonly PullExport[];
  readonly server: NbdServerAddress;
  /** ready while the exports are up; failed when a disk's job failed (then everything is already undone). */
  phase(): JobPhase;
  /** Bytes each disk's scratch image takes on the host. */
  scratchUsage(): Promise<Record<string, number>>;
  /**
   * The reader is done: exports, server, jobs, scratch nodes and files go; the new checkpoint stays. Throws the
   * job's error (BackupJobError, QmpClosedError) when a disk's job had failed; then the checkpoint was removed.
   */
  finish(): Promise<PullResult>;
  /** Ends the backup and removes the new checkpoint. Never throws. */
  abort(reason?: unknown): Promise<void>;
}

function uriOf(server: NbdServerAddress, name: string, tls: boolean): string {
  if (server.type === 'unix') return `nbd${tls ? 's' : ''}+unix:///${encodeURIComponent(name)}?socket=${server.path}`;
  return `nbd${tls ? 's' : ''}://${server.host.includes(':') ? `[${server.host}]` : server.host}:${server.port}/${encodeURIComponent(name)}`;
}

/** QEMU's side of the reader's TLS credentials: the same directory (x509), or the keys.psk file's directory. */
function serverTls(tls: NbdTls): PlanNbdTls {
  return tls.type === 'x509' ? { type: 'x509', dir: tls.dir, verifyPeer: tls.verifyPeer ?? true } : { type: 'psk', dir: pskDirectory(tls.file) };
}

/**
 * Starts a pull backup: resolves once the exports are up. Throws ConflictError (another backup running),
 * InvalidInputError (no scratch location, no server location, TLS credentials QEMU cannot use, a PSK file not called
 * keys.psk), NotFoundError (a checkpoint missing on a disk), the provisioning/transaction/export error (after undoing
 * everything), AbortedError.
 */
export async function startPullBackup(request: PullBackupRequest): Promise<PullSession> {
  const { vm, qmp, signal } = request;
  const tag = request.tag ?? newJobTag();

  // Fill defaults into new objects (never into the caller's request).
  let server = request.server;
  if (!server) {
    if (!request.runDir) {
      throw new InvalidInputError(`pull backup of VM '${vm}' has no NBD server address`, {
        hint: 'give <server transport=… > or a run directory for the default unix socket',
      });
    }
    await mkdir(request.runDir, { recursive: true, mode: 0o700 });
    server = { type: 'unix', path: join(request.runDir, `${vm}-${tag}.sock`) };
  }
  const disks: PlanDiskRequest[] = request.disks.map((d) => {
    let scratch = d.scratch;
    if (!scratch) {
      if (!request.scratchDir) {
        throw new InvalidInputError(`disk '${d.disk.target}' of the pull backup of VM '${vm}' has no scratch image`, {
          hint: `give <scratch file=…> for disk '${d.disk.target}' or a scratch directory`,
        });
      }
      scratch = { path: join(request.scratchDir, `${vm}-${d.disk.target}-${tag}.qcow2`), create: true };
    }
    return {
      disk: d.disk,
      ...(d.incrementalFrom !== undefined ? { incrementalFrom: d.incrementalFrom } : {}),
      pull: {
        scratchPath: scratch.path,
        create: scratch.create,
        exportName: d.exportName ?? d.disk.target,
        ...(d.exportBitmap ? { exportBitmap: d.exportBitmap } : {}),
      },
    };
  });
  if (request.scratchDir) await mkdir(request.scratchDir, { recursive: true, mode: 0o700 });

  const { run, reservation } = await beginBackup({
    vm,
    qmp,
    tag,
    ...(request.registry ? { registry: request.registry } : {}),
    ...(signal ? { signal } : {}),
    plan: {
      mode: 'pull',
      disks,
      checkpointActions: request.checkpointActions ?? [],
      nbdServer: server,
      ...(request.tls ? { nbdTls: serverTls(request.tls) } : {}),
      ...(request.exportWritable !== undefined ? { exportWritable: request.exportWritable } : {}),
      ...(request.naming ? { naming: request.naming } : {}),
    },
  });
  const socket = server.type === 'unix' ? server.path : undefined;

  let teardownDone: Promise<{ error: unknown; warnings: string[] }> | undefined;
  const teardown = (succeeded: boolean): Promise<{ error: unknown; warnings: string[] }> => {
    teardownDone ??= (async () => {
      const phase = await run.waitTerminal();
      const ok = succeeded && phase === 'completed';
      const outcome = await run.teardown(ok);
      if (socket) await unlink(socket).catch(() => undefined);
      reservation?.release();
      signal?.removeEventListener('abort', onAbort);
      const warnings = outcome.failures.map((f) => `cleanup: ${describeError(f.error)}`);
      return { error: ok ? undefined : run.firstError, warnings };
    })();
    return teardownDone;
  };

  const end = async (how: 'finish' | 'abort', reason?: unknown) => {
    if (!teardownDone) {
      await run.removeExports();
      await run.request(how, reason);
    }
    return teardown(how === 'finish');
  };
  const onAbort = () => void end('abort', signal?.reason);

  try {
    await run.addExports();
    if (socket) await chmod(socket, 0o600);
  } catch (error) {
    await run.request('abort', error);
    await teardown(false);
    throw error;
  }
  signal?.addEventListener('abort', onAbort, { once: true });

  // A disk job that fails on its own (scratch full, connection lost) ends the whole backup: undo it at once.
  void run.waitTerminal().then((phase) => {
    if (phase === 'failed' && !teardownDone) {
      log.debug({ vm, err: run.firstError }, 'a pull job failed; tearing down');
      void teardown(false);
    }
  });

  const exports: PullExport[] = run.plan.disks.map((d) => {
    const exp = d.export as NonNullable<typeof d.export>;
    return {
      disk: d.target,
      exportName: exp.name,
      ...(socket ? { socket } : {}),
      uri: uriOf(server, exp.name, request.tls !== undefined),
      ...(request.tls ? { tls: request.tls } : {}),
      ...(exp.bitmap ? { bitmap: exp.bitmap } : {}),
      context: exp.bitmap ? `qemu:dirty-bitmap:${exp.bitmap}` : 'base:allocation',
      ...(d.incrementalFrom ? { incrementalFrom: d.incrementalFrom } : {}),
      size: d.virtualSize,
    };
  });

  let finished: Promise<PullResult> | undefined;
  const session: PullSession = {
    vm,
    mode: 'pull',
    exports,
    server,
    phase: () => run.fold().phase,
    jobInfo: (): Promise<BackupJobInfo> => run.jobInfo(),
    scratchUsage: async () => {
      const usage: Record<string, number> = {};
      for (const d of run.plan.disks) usage[d.target] = await allocatedBytes(d.path);
      return usage;
    },
    finish: () => {
      finished ??= (async () => {
        const { error, warnings } = await end('finish');
        if (error) throw error;
        await run.recordCheckpoint(request.recordCheckpoint);
        return { vm, startedAt: run.startedAt, finishedAt: new Date(), checkpointBitmaps: run.plan.checkpointBitmaps, warnings };
      })();
      return finished;
    },
    abort: async (reason) => {
      await end('abort', reason ?? 'aborted by the user');
    },
  };
  reservation?.attach(session);
  return session;
}

