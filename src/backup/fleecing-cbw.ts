// Fleecing with QEMU's copy-before-write filter and snapshot-access node (QEMU ≥ 7.1), as an option of the QMP
// control plane (`fleecing: 'cbw'`) beside the default scratch overlay + blockdev-backup sync:none. Per disk:
//
//   guest device ──► copy-before-write (fl-<tag>-<d>-cbw) ──file──► disk's format node (live image)
//                          └──target──► scratch qcow2 (fl-<tag>-<d>-format, discard=unmap, no backing)
//   NBD export ◄── snapshot-access (fl-<tag>-<d>-access) ──file──► the cbw filter
//
// What it gives over the overlay: a reader that discards (NBD trim) what it has read shrinks the scratch and the
// filter stops copying those clusters on later guest writes; with an incremental bitmap the filter copies only the
// dirty clusters and the export refuses reads outside them (EACCES, by design). The point in time of every disk and
// the new checkpoint's bitmaps is one instant: a running guest is paused (`stop`, which drains its I/O) for the
// bitmap transaction and the filter insertion (`qom-set drive` of each device), then resumed.
//
// Every effect is undone in reverse on finish or abort (exports, snapshot-access, the device's drive set back, the
// filter, the temporary bitmaps, the new checkpoint on abort, the NBD server, the scratch nodes and files).
// Node, export and bitmap names follow fleeceNaming(tag), so the VM's journal entry (qmp-pull) names them; after a
// SIGKILL, cleanupQmpLeftovers must first set each device's drive back (restoreDeviceDrives) before it can delete
// the filter nodes.
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { chmod, mkdir, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { bitmapAdd, bitmapMerge, type TransactionAction } from '../qemu/actions.js';
import type { VmDisk } from '../qemu/block-graph.js';
import { blockdevAdd, blockdevDel, fileNodeOptions } from '../qemu/blockdev.js';
import { blockExportAddArguments, blockExportDel, nbdServerStart, nbdServerStop } from '../qemu/nbd-export.js';
import { removeBitmap } from '../qemu/bitmaps.js';
import type { QmpExecutor } from '../qmp/index.js';
import { ConflictError, FleeceError, InvalidInputError, describeError, throwIfAborted } from '../util/errors.js';
import { getLogger } from '../util/logger.js';

const log = getLogger('backup.fleecing-cbw');
const execFileAsync = promisify(execFile);

/** The node names of one disk's fleecing graph (fleeceNaming's scheme: `fl-<tag>-<disk>-…`). */
export function cbwNodeNames(tag: string, target: string): { storage: string; scratch: string; cbw: string; access: string; exportId: string; tempBitmap: string } {
  const base = `fl-${tag}-${target}`;
  return {
    storage: `${base}-storage`,
    scratch: `${base}-format`,
    cbw: `${base}-cbw`,
    access: `${base}-access`,
    exportId: `fleece-nbd-${target}-${tag}`,
    tempBitmap: `backup-${target}`,
  };
}

/** `blockdev-add` of the scratch qcow2 node: no backing, discards pass down to the file (pure). */
export function scratchNodeOptions(nodeName: string, fileNode: string): Record<string, unknown> {
  return { 'node-name': nodeName, driver: 'qcow2', file: fileNode, backing: null, 'read-only': false, discard: 'unmap' };
}

/**
 * `blockdev-add` of the copy-before-write filter over the disk's format node (pure). With `bitmap`, only the
 * bitmap's dirty clusters are copied and readable through snapshot-access. `break-snapshot`: when a copy fails
 * (scratch full), the guest write goes on and the snapshot breaks (its reads fail), never the guest.
 */
export function cbwFilterOptions(options: { nodeName: string; source: string; target: string; bitmap?: { node: string; name: string } }): Record<string, unknown> {
  return {
    driver: 'copy-before-write',
    'node-name': options.nodeName,
    file: options.source,
    target: options.target,
    discard: 'unmap',
    'on-cbw-error': 'break-snapshot',
    ...(options.bitmap ? { bitmap: { node: options.bitmap.node, name: options.bitmap.name } } : {}),
  };
}

/** `blockdev-add` of the snapshot-access node over the filter; discards reach the filter (pure). */
export function snapshotAccessOptions(nodeName: string, cbwNode: string): Record<string, unknown> {
  return { driver: 'snapshot-access', 'node-name': nodeName, file: cbwNode, discard: 'unmap' };
}

/** The temporary bitmap of an incremental disk: an empty disabled bitmap and the merge of the checkpoint's (pure). */
export function tempBitmapActions(disk: Pick<VmDisk, 'formatNode' | 'target' | 'bitmaps'>, checkpoint: string, name: string): TransactionAction[] {
  const source = disk.bitmaps.find((b) => b.name === checkpoint);
  if (!source) throw new InvalidInputError(`disk '${disk.target}' has no bitmap for checkpoint '${checkpoint}'`, { hint: 'take a full backup' });
  return [
    bitmapAdd({ node: disk.formatNode, name, persistent: false, disabled: true, granularity: source.granularity }),
    bitmapMerge({ node: disk.formatNode, target: name, sources: [{ node: disk.formatNode, name: checkpoint }] }),
  ];
}

export interface CbwDiskRequest {
  disk: VmDisk;
  incrementalFrom?: string;
}

export interface CbwFleecingRequest {
  vm: string;
  qmp: QmpExecutor;
  tag: string;
  disks: readonly CbwDiskRequest[];
  /** The new checkpoint's bitmap-add actions, committed at the point in time. */
  checkpointActions?: readonly TransactionAction[];
  /** Records the new checkpoint in the store; called by finish() only (the bitmaps are removed when it throws). */
  recordCheckpoint?: () => Promise<void>;
  scratchDir: string;
  /** The NBD socket is `<runDir>/<vm>-<tag>.sock` (0600). */
  runDir: string;
  /** Let readers discard (NBD trim): what they discard leaves the scratch. */
  exportWritable: boolean;
  signal?: AbortSignal;
}

export interface CbwExport {
  disk: string;
  exportName: string;
  socket: string;
  uri: string;
  context: string;
  incrementalFrom?: string;
  size: number;
  /** The scratch image of this disk. */
  scratch: string;
}

export interface CbwSession {
  readonly exports: readonly CbwExport[];
  /** Bytes each disk's scratch image takes on the host. */
  scratchUsage(): Promise<Record<string, number>>;
  /** The reader is done: everything goes but the new checkpoint, which is recorded. Throws the store's error. */
  finish(): Promise<{ warnings: string[] }>;
  /** Everything goes, the new checkpoint too. Never throws. */
  abort(reason?: unknown): Promise<void>;
}

interface Undo {
  what: string;
  /** 'failure': only when the backup did not succeed (the new checkpoint's bitmaps). */
  when: 'always' | 'failure';
  run(): Promise<void>;
}

/** The device's QOM path whose `drive` property holds the disk's root node. */
function drivePath(disk: VmDisk): string {
  if (!disk.qdev) throw new InvalidInputError(`disk '${disk.target}' has no guest device: copy-before-write fleecing needs one (use the default fleecing)`);
  return disk.qdev;
}

/**
 * Builds the fleecing graph and exports every disk (see the module comment). Throws ConflictError (a disk is
 * fleeced already), InvalidInputError, QmpError, FleeceError (qemu-img), AbortedError; nothing stays on a throw.
 */
export async function startCbwFleecing(request: CbwFleecingRequest): Promise<CbwSession> {
  const { vm, qmp, tag, signal } = request;
  const call = signal ? { signal } : {};
  const undo: Undo[] = [];
  const socket = join(request.runDir, `${vm}-${tag}.sock`);
  const teardown = async (succeeded: boolean): Promise<string[]> => {
    const failures: string[] = [];
    for (const step of undo.splice(0).reverse()) {
      if (step.when === 'failure' && succeeded) continue;
      try {
        await step.run();
      } catch (error) {
        failures.push(`${step.what}: ${describeError(error)}`);
        log.warn({ vm, what: step.what, err: error }, 'cbw fleecing cleanup step failed');
      }
    }
    return failures;
  };

  const disks = request.disks.map((d) => ({ ...d, names: cbwNodeNames(tag, d.disk.target), scratch: join(request.scratchDir, `${vm}-${d.disk.target}-${tag}.qcow2`) }));
  try {
    for (const d of disks) {
      if (d.disk.bitmaps.some((b) => b.name === d.names.tempBitmap)) {
        throw new ConflictError(`disk '${d.disk.target}' of VM '${vm}' has a bitmap ${d.names.tempBitmap} already: another backup runs, or one was interrupted`, { hint: `run \`fleece recover ${vm}\`` });
      }
    }
    await mkdir(request.scratchDir, { recursive: true, mode: 0o700 });
    await mkdir(request.runDir, { recursive: true, mode: 0o700 });
    for (const d of disks) {
      throwIfAborted(signal, `the backup of VM '${vm}'`);
      undo.push({ what: `scratch image ${d.scratch}`, when: 'always', run: () => rm(d.scratch, { force: true }) });
      try {
        // node's execFile, not execa: execa's ~140 modules would be most of a backup's module loading (start-up).
        await execFileAsync('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=65536', d.scratch, String(d.disk.virtualSize)], { ...(signal ? { signal } : {}) });
      } catch (error) {
        throw new FleeceError('INVALID_INPUT', `cannot create the scratch image ${d.scratch}: ${describeError(error)}`, { cause: error, hint: 'check the scratch directory' });
      }
      await blockdevAdd(qmp, fileNodeOptions({ nodeName: d.names.storage, filename: d.scratch }), call);
      undo.push({ what: `node ${d.names.storage}`, when: 'always', run: () => blockdevDel(qmp, d.names.storage) });
      await blockdevAdd(qmp, scratchNodeOptions(d.names.scratch, d.names.storage), call);
      undo.push({ what: `node ${d.names.scratch}`, when: 'always', run: () => blockdevDel(qmp, d.names.scratch) });
    }
    await nbdServerStart(qmp, { addr: { type: 'unix', path: socket } }, call);
    undo.push({ what: 'NBD server', when: 'always', run: async () => { await nbdServerStop(qmp); await rm(socket, { force: true }); } });

    // The one instant: bitmaps and filters with the guest paused (its I/O drained).
    const status = await qmp.execute<{ running: boolean; status: string }>('query-status');
    if (status.running) await qmp.execute('stop');
    try {
      const actions: TransactionAction[] = [...(request.checkpointActions ?? [])];
      for (const d of disks) if (d.incrementalFrom) actions.push(...tempBitmapActions(d.disk, d.incrementalFrom, d.names.tempBitmap));
      if (actions.length > 0) await qmp.execute('transaction', { actions });
      for (const a of request.checkpointActions ?? []) {
        if (a.type !== 'block-dirty-bitmap-add') continue;
        const node = String(a.data.node);
        const name = String(a.data.name);
        undo.push({ what: `checkpoint bitmap ${name} on ${node}`, when: 'failure', run: () => removeBitmap(qmp, { node, name }) });
      }
      for (const d of disks) {
        if (!d.incrementalFrom) continue;
        undo.push({ what: `bitmap ${d.names.tempBitmap}`, when: 'always', run: () => removeBitmap(qmp, { node: d.disk.formatNode, name: d.names.tempBitmap }) });
      }
      for (const d of disks) {
        await blockdevAdd(qmp, cbwFilterOptions({
          nodeName: d.names.cbw, source: d.disk.formatNode, target: d.names.scratch,
          ...(d.incrementalFrom ? { bitmap: { node: d.disk.formatNode, name: d.names.tempBitmap } } : {}),
        }));
        undo.push({ what: `node ${d.names.cbw}`, when: 'always', run: () => blockdevDel(qmp, d.names.cbw) });
      }
      for (const d of disks) {
        const path = drivePath(d.disk);
        await qmp.execute('qom-set', { path, property: 'drive', value: d.names.cbw });
        undo.push({ what: `the drive of ${d.disk.target}`, when: 'always', run: () => qmp.execute('qom-set', { path, property: 'drive', value: d.disk.formatNode }).then(() => undefined) });
      }
    } finally {
      if (status.running) await qmp.execute('cont').catch((error: unknown) => log.warn({ vm, err: error }, 'cont after the fleecing insertion failed'));
    }

    for (const d of disks) {
      await blockdevAdd(qmp, snapshotAccessOptions(d.names.access, d.names.cbw), call);
      undo.push({ what: `node ${d.names.access}`, when: 'always', run: () => blockdevDel(qmp, d.names.access) });
      // The bitmap lives on the disk's node, below snapshot-access: named with its node (QEMU ≥ 7.1).
      const args = blockExportAddArguments({ id: d.names.exportId, node: d.names.access, name: d.disk.target, writable: request.exportWritable });
      if (d.incrementalFrom) args.bitmaps = [{ node: d.disk.formatNode, name: d.names.tempBitmap }];
      await qmp.execute('block-export-add', args, call);
      undo.push({ what: `export ${d.names.exportId}`, when: 'always', run: () => blockExportDel(qmp, d.names.exportId, { timeoutMs: 10_000 }) });
    }
    await chmod(socket, 0o600);
  } catch (error) {
    await teardown(false);
    throw error;
  }
  log.debug({ vm, tag, disks: disks.map((d) => d.disk.target) }, 'cbw fleecing up');

  let ended: Promise<string[]> | undefined;
  const end = (succeeded: boolean) => {
    ended ??= teardown(succeeded);
    return ended;
  };
  const onAbort = () => void end(false);
  signal?.addEventListener('abort', onAbort, { once: true });
  return {
    exports: disks.map((d) => ({
      disk: d.disk.target,
      exportName: d.disk.target,
      socket,
      uri: `nbd+unix:///${encodeURIComponent(d.disk.target)}?socket=${socket}`,
      context: d.incrementalFrom ? `qemu:dirty-bitmap:${d.names.tempBitmap}` : 'base:allocation',
      ...(d.incrementalFrom ? { incrementalFrom: d.incrementalFrom } : {}),
      size: d.disk.virtualSize,
      scratch: d.scratch,
    })),
    scratchUsage: async () => {
      const usage: Record<string, number> = {};
      for (const d of disks) usage[d.disk.target] = await stat(d.scratch).then((s) => s.blocks * 512, () => 0);
      return usage;
    },
    finish: async () => {
      signal?.removeEventListener('abort', onAbort);
      const failures = await end(true);
      try {
        await request.recordCheckpoint?.();
      } catch (error) {
        for (const a of request.checkpointActions ?? []) {
          if (a.type === 'block-dirty-bitmap-add') await removeBitmap(qmp, { node: String(a.data.node), name: String(a.data.name) }).catch(() => undefined);
        }
        throw error;
      }
      return { warnings: failures.map((f) => `cleanup: ${f}`) };
    },
    abort: async (reason?: unknown) => {
      signal?.removeEventListener('abort', onAbort);
      log.debug({ vm, reason: reason === undefined ? undefined : describeError(reason) }, 'cbw fleecing aborted');
      await end(false);
    },
  };
}

/**
 * After an interrupted cbw fleecing (SIGKILL): sets every device whose drive is a `fl-<tag>-…-cbw` filter back to
 * the filter's source, so that the filter nodes can be deleted. Returns what it set back. Throws QmpError.
 */
export async function restoreDeviceDrives(qmp: QmpExecutor, tag: string): Promise<string[]> {
  const nodes = await qmp.execute<{ 'node-name': string; drv: string; file?: string }[]>('query-named-block-nodes', { flat: true });
  const filters = nodes.filter((n) => n.drv === 'copy-before-write' && n['node-name'].startsWith(`fl-${tag}-`));
  if (filters.length === 0) return [];
  const block = await qmp.execute<{ qdev?: string; inserted?: { 'node-name': string } }[]>('query-block');
  const graph = await qmp.execute<{ nodes: { id: number; name: string }[]; edges: { parent: number; child: number; name: string }[] }>('x-debug-query-block-graph');
  const restored: string[] = [];
  for (const dev of block) {
    const filter = filters.find((f) => f['node-name'] === dev.inserted?.['node-name']);
    if (!filter || !dev.qdev) continue;
    const me = graph.nodes.find((n) => n.name === filter['node-name']);
    const edge = graph.edges.find((e) => e.parent === me?.id && e.name === 'file');
    const source = graph.nodes.find((n) => n.id === edge?.child)?.name;
    if (!source) continue;
    const path = dev.qdev.startsWith('/') ? dev.qdev : `/machine/peripheral/${dev.qdev}/virtio-backend`;
    await qmp.execute('qom-set', { path, property: 'drive', value: source });
    restored.push(`${dev.qdev}: drive ${source}`);
  }
  return restored;
}
