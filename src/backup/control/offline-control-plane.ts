// The offline control plane: a shut-off VM's disk images, opened read-only by one qemu-storage-daemon of fleece's own
// and exported over NBD (one export per disk, named after its target; an incremental disk's export carries the
// checkpoint's own persistent bitmap, which has recorded every write since that checkpoint). Nothing writes the
// images while they are exported, so all disks are one point in time by construction; no checkpoint can be made
// (libvirt needs a running QEMU for that), so the next backup starts from the same checkpoint: a differential.
//
// Nothing else may have an image open for writing, and nothing may open one for writing while it is exported:
//   qcow2  read-only without force-share: the qcow2 driver never shares WRITE on its file, so QEMU's image locking
//          refuses the open while a QEMU holds the image, and refuses a QEMU that starts during the export.
//   raw    a read-only raw node shares WRITE (verified on QEMU 7.2: it opens beside a running VM), so first a write
//          lock probe: `qemu-io -f raw -c quit` opens the image for writing and fails while a running VM holds it.
//          It does not stop a VM from starting during the export.
//
// begin: [probe raw images] → qemu-storage-daemon (QMP only on its command line: <runDir>/<vm>-<tag>.qmp) →
// blockdev-add file + format node per image (read-only) → check the incremental bitmaps → nbd-server-start on
// <runDir>/<vm>-<tag>.sock (0600) → block-export-add per disk. finish | abort: block-export-del, nbd-server-stop,
// quit, wait for the exit, remove both sockets.
import { execa } from 'execa';
import { chmod, mkdir, unlink } from 'node:fs/promises';
import { isAbsolute, join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { CheckpointUnusableError } from '../../checkpoint/manager.js';
import { checkpointBitmaps, type Checkpoint } from '../../checkpoint/model.js';
import { openImage } from '../../qemu/blockdev.js';
import { queryDisks, type VmDisk } from '../../qemu/block-graph.js';
import { blockExportAdd, blockExportDel, nbdServerStart, nbdServerStop } from '../../qemu/nbd-export.js';
import { QmpClosedError, QmpError } from '../../qmp/errors.js';
import { AbortedError, ConflictError, InvalidInputError, describeError, throwIfAborted } from '../../util/errors.js';
import { getLogger } from '../../util/logger.js';
import { newJobTag } from '../begin-backup.js';
import { processStartTime } from '../journal.js';
import type { BeginRequest, CheckpointDeletion, ControlPlane, DiskExport, GuestConfig, Inspection, PointInTime } from './control-plane.js';
import { checkImageCheckpoints, queryImageInfo } from './offline-images.js';
import { StorageDaemonError, startStorageDaemon, type StorageDaemon } from './storage-daemon.js';

const log = getLogger('backup.offline');

/** A disk of the shut-off VM, from its domain XML. */
export interface OfflineDisk {
  target: string;
  /** The image file (absolute). */
  path: string;
  format: 'qcow2' | 'raw';
}

export interface OfflineControlPlaneOptions {
  vm: string;
  /** From the domain XML (the caller parses it). */
  disks: OfflineDisk[];
  /** Disks that cannot be backed up (cdrom, network …), with why. */
  skipped?: { target: string; reason: string }[];
  /** The VM's checkpoints as libvirt keeps them (names, creation times, disks); the caller gets them from libvirt. */
  checkpoints: Checkpoint[];
  guestConfig?: GuestConfig;
  /** The NBD and QMP sockets go here (the directory is created 0700, the NBD socket made 0600). */
  runDir: string;
  /** How long qemu-storage-daemon may take to answer on its monitor (default 10 s). */
  startTimeoutMs?: number;
}

/** Longest unix socket path Linux accepts (sun_path is 108 bytes with the NUL). */
const MAX_SOCKET_PATH = 107;
const EXPORT_DEL_TIMEOUT_MS = 5_000;
/** How long a daemon whose monitor closed under fleece may take to be seen exiting. */
const DIED_EXIT_WAIT_MS = 2_000;

/** QEMU's refusal when image locking finds another user (`Failed to get shared "write" lock`, `… "write" lock`). */
const LOCK_ERROR = /Failed to get (shared )?"\w+" lock/;

function inUseError(vm: string, disk: OfflineDisk, cause: unknown): ConflictError {
  return new ConflictError(`disk image ${disk.path} (${disk.target}) of VM '${vm}' is in use by another process (is the VM running?)`, {
    cause,
    hint: `shut the VM down (virsh shutdown ${vm}) or back it up while it runs; QEMU said: ${describeError(cause)}`,
  });
}

/** A name safe in a file name: the VM's name with anything but `A-Za-z0-9_.-` replaced by `_`. */
function fileSafe(name: string): string {
  return name.replace(/[^A-Za-z0-9_.-]/g, '_');
}

/**
 * The write lock probe for a raw image: opens it read-write with qemu-io (no I/O) and closes it again. QEMU's image
 * locking makes the open fail while another QEMU has the image open for writing.
 * @throws ConflictError when the image is in use; InvalidInputError when qemu-io cannot open it for another reason.
 */
async function probeRawWriters(vm: string, disk: OfflineDisk, signal: AbortSignal | undefined): Promise<void> {
  const result = await execa('qemu-io', ['-f', 'raw', '-c', 'quit', disk.path], {
    reject: false,
    stdin: 'ignore',
    all: true,
    ...(signal ? { cancelSignal: signal } : {}),
  });
  throwIfAborted(signal, `the write lock probe of ${disk.path}`);
  const output = String(result.all ?? '').trim();
  if (result.exitCode === 0 && !/can't open/.test(output)) return;
  if (LOCK_ERROR.test(output)) throw inUseError(vm, disk, new Error(output));
  throw new InvalidInputError(`disk image ${disk.path} (${disk.target}) of VM '${vm}' cannot be opened: ${output || result.shortMessage}`);
}

interface OpenedDisk {
  disk: OfflineDisk;
  formatNode: string;
  fileNode: string;
  exportId: string;
  /** The bitmap exported with the disk (incremental). */
  bitmap?: string;
  incrementalFrom?: string;
}

/** See the module comment. */
export class OfflineControlPlane implements ControlPlane {
  readonly kind = 'offline' as const;
  readonly vm: string;
  readonly #options: OfflineControlPlaneOptions;
  /** Points in time not yet ended (close() aborts them). */
  readonly #active = new Set<PointInTime>();

  /** @throws InvalidInputError on an empty VM name, a relative image path, or a target listed twice. */
  constructor(options: OfflineControlPlaneOptions) {
    if (!options.vm) throw new InvalidInputError('the offline control plane needs the VM name');
    const seen = new Set<string>();
    for (const disk of options.disks) {
      if (seen.has(disk.target)) throw new InvalidInputError(`VM '${options.vm}' lists disk '${disk.target}' twice`);
      seen.add(disk.target);
      if (!isAbsolute(disk.path)) {
        throw new InvalidInputError(`the image of disk '${disk.target}' of VM '${options.vm}' is not an absolute path: ${disk.path}`);
      }
      if (disk.format !== 'qcow2' && disk.format !== 'raw') {
        throw new InvalidInputError(`disk '${disk.target}' of VM '${options.vm}' has format ${String(disk.format)}; the offline backup reads qcow2 and raw`);
      }
    }
    this.#options = options;
    this.vm = options.vm;
  }

  /**
   * The images as `qemu-img info -U` sees them, and the checkpoints' bitmaps in them. canCheckpoint is false.
   * @throws NotFoundError (an image is missing), InvalidInputError (qemu-img cannot read one), AbortedError.
   */
  async inspect(options: { signal?: AbortSignal } = {}): Promise<Inspection> {
    const { disks, checkpoints } = this.#options;
    const signal = options.signal ? { signal: options.signal } : {};
    const inspected = await Promise.all(
      disks.map(async (d) => ({ target: d.target, path: d.path, info: await queryImageInfo(d.path, d.format, signal) })),
    );
    return {
      disks: inspected.map((d) => ({ target: d.target, virtualSize: d.info.virtualSize, format: d.info.format, path: d.path })),
      skipped: [...(this.#options.skipped ?? [])],
      checkpoints: [...checkpoints],
      checks: checkImageCheckpoints(checkpoints, inspected),
      canCheckpoint: false,
      ...(this.#options.guestConfig ? { guestConfig: this.#options.guestConfig } : {}),
    };
  }

  /**
   * Exports the images (see the module comment). `request.checkpoint` is ignored (PointInTime.checkpoint is null),
   * as are `quiesce` (nothing runs) and `exportWritable` (the images are read-only).
   * @throws InvalidInputError (unknown disk, incremental on raw), ConflictError (an image is in use by another
   *   process), CheckpointUnusableError (the checkpoint's bitmap is missing, inconsistent or disabled),
   *   StorageDaemonError (qemu-storage-daemon did not start), QmpError, AbortedError. Nothing stays on a throw.
   */
  async begin(request: BeginRequest): Promise<PointInTime> {
    const { vm } = this;
    const { signal } = request;
    const call = signal ? { signal } : {};
    const opened = this.#resolve(request);
    const warnings: string[] = [];
    if (request.checkpoint) {
      warnings.push(`no checkpoint ${request.checkpoint.name} was made: VM '${vm}' is shut off, and libvirt makes checkpoints only of a running VM`);
    }
    if (request.quiesce === 'yes' || request.quiesce === 'try') {
      warnings.push(`VM '${vm}' is shut off: nothing to quiesce, its disks are as the guest left them`);
    }
    throwIfAborted(signal, `the offline backup of VM '${vm}'`);

    const { runDir } = this.#options;
    await mkdir(runDir, { recursive: true, mode: 0o700 });
    const base = join(runDir, `${fileSafe(vm)}-${newJobTag()}`);
    const qmpSocket = `${base}.qmp`;
    const nbdSocket = `${base}.sock`;
    if (Buffer.byteLength(qmpSocket) > MAX_SOCKET_PATH) {
      throw new InvalidInputError(`the socket path ${qmpSocket} is longer than ${MAX_SOCKET_PATH} bytes`, { hint: 'use a shorter run directory' });
    }
    await Promise.all(opened.filter((o) => o.disk.format === 'raw').map((o) => probeRawWriters(vm, o.disk, signal)));

    const daemon = await startStorageDaemon({
      qmpSocket,
      name: `offline-${fileSafe(vm)}`,
      ...(this.#options.startTimeoutMs !== undefined ? { startTimeoutMs: this.#options.startTimeoutMs } : {}),
      ...call,
    });
    const { qmp } = daemon;
    // Journaled as soon as its pid exists (spawned a moment ago): a killed fleece leaves no storage daemon behind.
    const journalId = await request.journal?.record({
      kind: 'storage-daemon', pid: daemon.pid, startTime: processStartTime(daemon.pid) ?? '', files: [qmpSocket, nbdSocket],
    });
    const forget = async () => {
      if (journalId !== undefined) await request.journal?.clear(journalId).catch(() => undefined);
    };
    try {
      for (const o of opened) {
        throwIfAborted(signal, `the offline backup of VM '${vm}'`);
        try {
          await openImage(qmp, { filename: o.disk.path, formatNode: o.formatNode, fileNode: o.fileNode, format: o.disk.format, readOnly: true, ...call });
        } catch (error) {
          if (error instanceof QmpError && LOCK_ERROR.test(error.desc)) throw inUseError(vm, o.disk, error);
          throw error;
        }
      }
      const nodes = await queryDisks(qmp, call);
      const sizes = new Map<string, number>();
      for (const o of opened) {
        const node = nodes.find((n) => n.formatNode === o.formatNode);
        if (!node) throw new StorageDaemonError('QMP_CLOSED', `qemu-storage-daemon lost block node ${o.formatNode} of ${o.disk.path}`, daemon.stderr());
        sizes.set(o.disk.target, node.virtualSize);
        if (o.bitmap) this.#checkBitmap(o, node);
      }
      await nbdServerStart(qmp, { addr: { type: 'unix', path: nbdSocket } }, call);
      await chmod(nbdSocket, 0o600);
      for (const o of opened) {
        await blockExportAdd(qmp, { id: o.exportId, node: o.formatNode, name: o.disk.target, writable: false, ...(o.bitmap ? { bitmaps: [o.bitmap] } : {}) }, call);
      }
      throwIfAborted(signal, `the offline backup of VM '${vm}'`);
      const exports: DiskExport[] = opened.map((o) => ({
        disk: o.disk.target,
        exportName: o.disk.target,
        socket: nbdSocket,
        uri: `nbd+unix:///${encodeURIComponent(o.disk.target)}?socket=${nbdSocket}`,
        context: o.bitmap ? `qemu:dirty-bitmap:${o.bitmap}` : 'base:allocation',
        ...(o.incrementalFrom ? { incrementalFrom: o.incrementalFrom } : {}),
        size: sizes.get(o.disk.target)!,
      }));
      log.debug({ vm, pid: daemon.pid, exports: exports.map((e) => e.uri) }, 'offline exports up');
      return this.#pointInTime(daemon, opened, nbdSocket, exports, warnings, signal, forget);
    } catch (error) {
      await daemon.stop();
      await unlink(nbdSocket).catch(() => undefined);
      await forget();
      if (signal?.aborted && !(error instanceof AbortedError)) {
        throw new AbortedError(`the offline backup of VM '${vm}' was aborted`, { cause: error });
      }
      throw error;
    }
  }

  /**
   * Deletes nothing: the checkpoints' metadata is libvirt's, and removing their bitmaps from the images with qemu-img
   * behind its back would leave that metadata lying. The next backup of the running VM deletes them through libvirt.
   */
  async deleteCheckpoints(names: readonly string[]): Promise<CheckpointDeletion> {
    const reason = `VM '${this.vm}' is shut off: fleece deletes checkpoints through the running domain only; the next backup of the running VM does`;
    return { deleted: [], skipped: names.map((name) => ({ name, reason })) };
  }

  /** Aborts every point in time still exported. Never throws. */
  async close(): Promise<void> {
    await Promise.all([...this.#active].map((p) => p.abort('the control plane was closed')));
  }

  /** The disks of a request with their node names and bitmaps (pure). */
  #resolve(request: BeginRequest): OpenedDisk[] {
    const { vm } = this;
    const { disks, checkpoints } = this.#options;
    if (request.disks.length === 0) throw new InvalidInputError(`the offline backup of VM '${vm}' names no disk`);
    const seen = new Set<string>();
    return request.disks.map((d, index) => {
      const disk = disks.find((x) => x.target === d.target);
      if (!disk) {
        throw new InvalidInputError(`VM '${vm}' has no disk '${d.target}'`, { hint: `disks: ${disks.map((x) => x.target).join(', ') || 'none'}` });
      }
      if (seen.has(d.target)) throw new InvalidInputError(`disk '${d.target}' of VM '${vm}' is asked for twice`);
      seen.add(d.target);
      const opened: OpenedDisk = { disk, formatNode: `fleece-d${index}`, fileNode: `fleece-d${index}-file`, exportId: `fleece-exp-${index}` };
      if (d.incrementalFrom !== undefined) {
        if (disk.format !== 'qcow2') {
          throw new InvalidInputError(`disk '${d.target}' of VM '${vm}' is ${disk.format}: it holds no checkpoint bitmap, so it can only be backed up in full`);
        }
        const cp = checkpoints.find((c) => c.name === d.incrementalFrom);
        const own = cp ? checkpointBitmaps(cp).find((b) => b.disk === d.target) : undefined;
        if (cp && !own) {
          throw new InvalidInputError(`checkpoint ${cp.name} of VM '${vm}' has no bitmap on disk '${d.target}'`, { hint: 'back the disk up in full' });
        }
        opened.bitmap = own?.bitmap ?? d.incrementalFrom;
        opened.incrementalFrom = d.incrementalFrom;
      }
      return opened;
    });
  }

  /** @throws CheckpointUnusableError when the bitmap to export is missing, inconsistent or disabled. */
  #checkBitmap(o: OpenedDisk, node: VmDisk): void {
    const check = { checkpoint: o.incrementalFrom!, disk: o.disk.target, bitmap: o.bitmap!, node: node.formatNode };
    const info = node.bitmaps.find((b) => b.name === o.bitmap);
    if (!info || !info.persistent) throw new CheckpointUnusableError({ ...check, state: 'missing' }, this.vm);
    if (info.inconsistent) throw new CheckpointUnusableError({ ...check, state: 'inconsistent' }, this.vm);
    if (!info.recording) throw new CheckpointUnusableError({ ...check, state: 'not-recording' }, this.vm);
  }

  #pointInTime(
    daemon: StorageDaemon,
    opened: readonly OpenedDisk[],
    nbdSocket: string,
    exports: DiskExport[],
    warnings: string[],
    signal: AbortSignal | undefined,
    forget: () => Promise<void>,
  ): PointInTime {
    const { vm } = this;
    const { qmp } = daemon;
    // Set just before fleece sends quit: an exit before that is the daemon dying on its own.
    let quitting = false;
    let lost: StorageDaemonError | undefined;
    void daemon.exited.then(() => {
      if (quitting) return;
      lost = new StorageDaemonError(
        'QMP_CLOSED',
        `qemu-storage-daemon (pid ${daemon.pid}) exporting the disks of VM '${vm}' ${daemon.exitDescription ?? 'exited'} before the backup ended; the exports are gone`,
        daemon.stderr(),
      );
      log.warn({ vm, pid: daemon.pid, exit: daemon.exitDescription }, 'the storage daemon exited on its own');
    });

    let ended: Promise<string[]> | undefined;
    const end = (): Promise<string[]> => {
      ended ??= (async () => {
        signal?.removeEventListener('abort', onAbort);
        const cleanup: string[] = [];
        // A monitor that closes under these calls means the daemon died on its own (SIGKILL, crash).
        let closed = qmp.closed;
        const note = (what: string) => (error: unknown) => {
          if (error instanceof QmpClosedError) closed = true;
          else cleanup.push(`${what}: ${describeError(error)}`);
        };
        for (const o of opened) {
          if (closed) break;
          await blockExportDel(qmp, o.exportId, { timeoutMs: EXPORT_DEL_TIMEOUT_MS }).catch(note(`block-export-del ${o.exportId}`));
        }
        if (!closed) await nbdServerStop(qmp).catch(note('nbd-server-stop'));
        if (closed) await Promise.race([daemon.exited, delay(DIED_EXIT_WAIT_MS, undefined, { ref: false })]);
        quitting = true;
        const { forced } = await daemon.stop();
        if (forced) cleanup.push(`qemu-storage-daemon (pid ${daemon.pid}) did not quit and was killed`);
        await unlink(nbdSocket).catch(() => undefined);
        await forget();
        this.#active.delete(point);
        return cleanup.map((w) => `cleanup: ${w}`);
      })();
      return ended;
    };
    const onAbort = (): void => void end();

    const point: PointInTime = {
      checkpoint: null,
      exports,
      warnings,
      finish: async () => {
        const cleanup = await end();
        if (lost) throw lost;
        return { warnings: cleanup };
      },
      abort: async (reason?: unknown) => {
        log.debug({ vm, reason: reason === undefined ? undefined : describeError(reason) }, 'offline backup aborted');
        await end().catch(() => undefined);
      },
    };
    this.#active.add(point);
    signal?.addEventListener('abort', onAbort, { once: true });
    return point;
  }
}
