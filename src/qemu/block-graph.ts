// The VM's disks as fleece sees them, folded from query-block, query-named-block-nodes and the block graph (pure).
//
// A disk is what the guest sees: a device (qdev id `vda`) whose BlockBackend sits on a chain of nodes. Bitmaps and
// jobs must name the *top format node* (e.g. qcow2 `disk-vda`): filters QEMU or we insert above it
// (copy-before-write during fleecing, throttle, ...) are skipped, the protocol node below it (`file`) is reported as
// `fileNode`.
//
// Where parents and children come from: `x-debug-query-block-graph` (present in QEMU 7.2, gives exact edges) when
// the caller passes it; otherwise a heuristic on file names (a filter's child is the non-filter, non-protocol node on
// the same file; a format node's file child is the protocol node on the same file). Backing links are only known
// from the graph.
//
// qemu-storage-daemon has no devices and `query-block` returns []: then every block-driver node that no other block
// driver node uses (as file, backing or filter child) and that is not the target of a block job is a disk, with the
// node name as its `target` and an empty `qdev` (a filter auto-named `#block…` on top stands for the format node
// under it, whose name is then the target).
import type { QmpExecutor } from '../qmp/client.js';
import { QmpError } from '../qmp/errors.js';
import type { CallOptions } from '../qmp/events.js';
import { getLogger } from '../util/logger.js';
import { QemuReplyError } from './errors.js';

const log = getLogger('qemu-block-graph');

/** One dirty bitmap on a node, as query-named-block-nodes reports it. */
export interface BitmapInfo {
  name: string;
  recording: boolean;
  busy: boolean;
  persistent: boolean;
  inconsistent: boolean;
  granularity: number;
  /** Dirty bytes (a multiple of the granularity, except at the end of the disk). */
  count: number;
}

/** One disk of a VM (or one top node of a storage daemon). */
export interface VmDisk {
  /** The qdev id (`vda`), else the legacy device name, else (storage daemon) the top node's name. */
  target: string;
  /** The device's QOM path (`/machine/peripheral/vda/virtio-backend`); '' for a storage daemon. */
  qdev: string;
  /** The top format node (filters skipped): bitmaps and backup jobs use this node. */
  formatNode: string;
  /** The protocol node under the format node, when there is one. */
  fileNode?: string;
  /** The image file of the format node. */
  filename: string;
  /** The format node's driver (`qcow2`, `raw`, ...). */
  format: string;
  /** Guest-visible size in bytes. */
  virtualSize: number;
  /** Named bitmaps on the format node (anonymous bitmaps of running jobs are left out). */
  bitmaps: BitmapInfo[];
}

/** The reply of `x-debug-query-block-graph`. */
export interface BlockGraph {
  nodes: Array<{ id: number; name: string; type: string }>;
  edges: Array<{ parent: number; child: number; name: string }>;
}

/** Drivers that sit above a format node without being the image (skipped when looking for the format node). */
export const FILTER_DRIVERS: ReadonlySet<string> = new Set([
  'copy-before-write',
  'copy-on-read',
  'throttle',
  'compress',
  'preallocate',
  'blkdebug',
  'blklogwrites',
  'blkverify',
  'snapshot-access',
]);

/** Drivers that reach storage (file, device, network) rather than interpret an image format. */
export const PROTOCOL_DRIVERS: ReadonlySet<string> = new Set([
  'file',
  'host_device',
  'host_cdrom',
  'nbd',
  'iscsi',
  'rbd',
  'ssh',
  'http',
  'https',
  'ftp',
  'ftps',
  'gluster',
  'nfs',
  'nvme',
  'null-co',
  'null-aio',
  'io_uring',
]);

interface NamedNode {
  nodeName: string;
  drv: string;
  file: string;
  virtualSize: number;
  bitmaps: BitmapInfo[];
}

interface BlockEntry {
  device: string;
  qdev: string;
  nodeName: string;
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function unwrapReturn(value: unknown): unknown {
  // Accept a whole reply message too ({"return": ...}), as captured fixtures hold them.
  if (isRecord(value) && 'return' in value && Object.keys(value).every((k) => k === 'return' || k === 'id')) {
    return value.return;
  }
  return value;
}

function parseBitmap(raw: unknown, where: string): BitmapInfo | undefined {
  const cmd = 'query-named-block-nodes';
  if (!isRecord(raw)) throw new QemuReplyError(cmd, `${where}: a dirty bitmap is not an object`);
  if (raw.name === undefined) return undefined; // anonymous bitmaps belong to running jobs
  const { name, recording, busy, persistent, granularity, count } = raw;
  if (
    typeof name !== 'string' ||
    typeof recording !== 'boolean' ||
    typeof busy !== 'boolean' ||
    typeof persistent !== 'boolean' ||
    typeof granularity !== 'number' ||
    typeof count !== 'number'
  ) {
    throw new QemuReplyError(cmd, `${where}: dirty bitmap ${JSON.stringify(raw)} lacks name/recording/busy/persistent/granularity/count`);
  }
  return { name, recording, busy, persistent, inconsistent: raw.inconsistent === true, granularity, count };
}

/**
 * Parses a `query-named-block-nodes` reply (the array, or the whole `{"return": [...]}` message).
 * @throws QemuReplyError when it is not an array of nodes with node-name, drv, file and image.virtual-size.
 */
export function parseNamedNodes(namedNodes: unknown): Map<string, NamedNode> {
  const cmd = 'query-named-block-nodes';
  const list = unwrapReturn(namedNodes);
  if (!Array.isArray(list)) throw new QemuReplyError(cmd, 'expected an array of nodes');
  const nodes = new Map<string, NamedNode>();
  for (const [index, raw] of list.entries()) {
    if (!isRecord(raw)) throw new QemuReplyError(cmd, `node #${index} is not an object`);
    const nodeName = raw['node-name'];
    const { drv, file, image } = raw;
    if (typeof nodeName !== 'string' || typeof drv !== 'string' || typeof file !== 'string') {
      throw new QemuReplyError(cmd, `node #${index} lacks node-name, drv or file`);
    }
    if (!isRecord(image) || typeof image['virtual-size'] !== 'number') {
      throw new QemuReplyError(cmd, `node ${nodeName} lacks image.virtual-size`);
    }
    const rawBitmaps = raw['dirty-bitmaps'] ?? [];
    if (!Array.isArray(rawBitmaps)) throw new QemuReplyError(cmd, `node ${nodeName}: dirty-bitmaps is not an array`);
    const bitmaps = rawBitmaps
      .map((b) => parseBitmap(b, `node ${nodeName}`))
      .filter((b): b is BitmapInfo => b !== undefined);
    nodes.set(nodeName, { nodeName, drv, file, virtualSize: image['virtual-size'], bitmaps });
  }
  return nodes;
}

function parseBlock(block: unknown): BlockEntry[] {
  const cmd = 'query-block';
  const list = unwrapReturn(block ?? []);
  if (!Array.isArray(list)) throw new QemuReplyError(cmd, 'expected an array of block devices');
  const entries: BlockEntry[] = [];
  for (const [index, raw] of list.entries()) {
    if (!isRecord(raw)) throw new QemuReplyError(cmd, `entry #${index} is not an object`);
    if (raw.inserted === undefined) continue; // an empty drive (no medium)
    if (!isRecord(raw.inserted) || typeof raw.inserted['node-name'] !== 'string') {
      throw new QemuReplyError(cmd, `entry #${index}: inserted.node-name is missing`);
    }
    const device = typeof raw.device === 'string' ? raw.device : '';
    const qdev = typeof raw.qdev === 'string' ? raw.qdev : '';
    entries.push({ device, qdev, nodeName: raw.inserted['node-name'] });
  }
  return entries;
}

function parseGraph(graph: unknown): BlockGraph {
  const cmd = 'x-debug-query-block-graph';
  const value = unwrapReturn(graph);
  if (!isRecord(value) || !Array.isArray(value.nodes) || !Array.isArray(value.edges)) {
    throw new QemuReplyError(cmd, 'expected {nodes: [...], edges: [...]}');
  }
  const nodes = value.nodes.map((n, i) => {
    if (!isRecord(n) || typeof n.id !== 'number' || typeof n.name !== 'string' || typeof n.type !== 'string') {
      throw new QemuReplyError(cmd, `node #${i} lacks id, name or type`);
    }
    return { id: n.id, name: n.name, type: n.type };
  });
  const edges = value.edges.map((e, i) => {
    if (!isRecord(e) || typeof e.parent !== 'number' || typeof e.child !== 'number' || typeof e.name !== 'string') {
      throw new QemuReplyError(cmd, `edge #${i} lacks parent, child or name`);
    }
    return { parent: e.parent, child: e.child, name: e.name };
  });
  return { nodes, edges };
}

/** The target a device is known by: `/machine/peripheral/vda/virtio-backend` → `vda`. */
export function targetFromQdev(qdev: string): string | undefined {
  const match = /^\/machine\/peripheral\/([^/]+)(\/.*)?$/.exec(qdev);
  return match?.[1];
}

/** Parent/child relations between block-driver nodes, from the graph or guessed from file names. */
interface Relations {
  /** The child a filter passes I/O to. */
  filterChild(node: NamedNode): NamedNode | undefined;
  /** The protocol node under a format node. */
  fileChild(node: NamedNode): NamedNode | undefined;
  /** Nodes used by another block-driver node, or targets of block jobs (never disks of a storage daemon). */
  usedNodes(): Set<string>;
}

function graphRelations(nodes: Map<string, NamedNode>, graph: BlockGraph): Relations {
  const byId = new Map(graph.nodes.map((n) => [n.id, n]));
  const childrenOf = (name: string): Array<{ edge: string; node: NamedNode }> => {
    const ids = graph.nodes.filter((n) => n.name === name && n.type === 'block-driver').map((n) => n.id);
    const out: Array<{ edge: string; node: NamedNode }> = [];
    for (const edge of graph.edges) {
      if (!ids.includes(edge.parent)) continue;
      const child = byId.get(edge.child);
      const node = child && child.type === 'block-driver' ? nodes.get(child.name) : undefined;
      if (node) out.push({ edge: edge.name, node });
    }
    return out;
  };
  return {
    filterChild(node) {
      const children = childrenOf(node.nodeName);
      // copy-before-write has `file` (the disk) and `target` (the scratch); other filters have `file`.
      return children.find((c) => c.edge === 'file')?.node ?? children[0]?.node;
    },
    fileChild(node) {
      return childrenOf(node.nodeName).find((c) => c.edge === 'file')?.node;
    },
    usedNodes() {
      const used = new Set<string>();
      for (const edge of graph.edges) {
        const parent = byId.get(edge.parent);
        const child = byId.get(edge.child);
        if (!parent || !child || child.type !== 'block-driver') continue;
        if (parent.type === 'block-driver' || (parent.type === 'block-job' && edge.name === 'target')) {
          used.add(child.name);
        }
      }
      return used;
    },
  };
}

function heuristicRelations(nodes: Map<string, NamedNode>): Relations {
  const all = [...nodes.values()];
  const relations: Relations = {
    filterChild(node) {
      const candidates = all.filter((n) => n !== node && n.file === node.file && !PROTOCOL_DRIVERS.has(n.drv));
      return (
        candidates.find((n) => !FILTER_DRIVERS.has(n.drv) && n.virtualSize === node.virtualSize) ??
        candidates.find((n) => !FILTER_DRIVERS.has(n.drv)) ??
        candidates[0]
      );
    },
    fileChild(node) {
      if (PROTOCOL_DRIVERS.has(node.drv)) return undefined;
      return all.find((n) => n !== node && n.file === node.file && PROTOCOL_DRIVERS.has(n.drv));
    },
    usedNodes() {
      const used = new Set<string>();
      for (const node of all) {
        if (FILTER_DRIVERS.has(node.drv)) {
          const child = relations.filterChild(node);
          if (child) used.add(child.nodeName);
        } else {
          const child = relations.fileChild(node);
          if (child) used.add(child.nodeName);
        }
      }
      return used;
    },
  };
  return relations;
}

function formatNodeBelow(top: NamedNode, relations: Relations, what: string): NamedNode {
  let node = top;
  const seen = new Set<string>();
  while (FILTER_DRIVERS.has(node.drv)) {
    seen.add(node.nodeName);
    const child = relations.filterChild(node);
    if (!child || seen.has(child.nodeName)) {
      throw new QemuReplyError(
        'query-named-block-nodes',
        `${what}: the node under filter ${node.nodeName} (${node.drv}) is not among the named nodes`,
      );
    }
    node = child;
  }
  return node;
}

function toDisk(target: string, qdev: string, top: NamedNode, relations: Relations): VmDisk {
  const format = formatNodeBelow(top, relations, `disk ${target}`);
  const file = relations.fileChild(format);
  const disk: VmDisk = {
    target,
    qdev,
    formatNode: format.nodeName,
    filename: format.file,
    format: format.drv,
    virtualSize: format.virtualSize,
    bitmaps: format.bitmaps.map((b) => ({ ...b })),
  };
  if (file) disk.fileNode = file.nodeName;
  return disk;
}

/**
 * Folds `query-named-block-nodes` (flat: true) and `query-block` replies (arrays or whole `{"return": ...}`
 * messages), and optionally `x-debug-query-block-graph`, into the list of disks. Pure.
 * With devices (a VM): one disk per `query-block` entry with a medium, in `query-block` order. Without (a storage
 * daemon): one disk per unused top node, sorted by node name (see the module comment).
 * @throws QemuReplyError when a reply has an unexpected shape or a device's node is not among the named nodes.
 */
export function disksFromQuery(namedNodes: unknown, block: unknown, graph?: unknown): VmDisk[] {
  const nodes = parseNamedNodes(namedNodes);
  const entries = parseBlock(block);
  const relations = graph === undefined ? heuristicRelations(nodes) : graphRelations(nodes, parseGraph(graph));
  if (entries.length > 0) {
    return entries.map((entry) => {
      const target = targetFromQdev(entry.qdev) ?? (entry.device || entry.nodeName);
      const top = nodes.get(entry.nodeName);
      if (!top) {
        throw new QemuReplyError(
          'query-block',
          `device ${target} uses node ${entry.nodeName}, which query-named-block-nodes does not list`,
        );
      }
      return toDisk(target, entry.qdev, top, relations);
    });
  }
  const used = relations.usedNodes();
  const disks = new Map<string, VmDisk>();
  for (const top of nodes.values()) {
    if (used.has(top.nodeName)) continue;
    // A filter QEMU inserted (copy-before-write, auto-named `#block…`) stands for the disk under it.
    const disk = toDisk(top.nodeName, '', top, relations);
    if (top.nodeName.startsWith('#')) disk.target = disk.formatNode;
    if (!disks.has(disk.formatNode)) disks.set(disk.formatNode, disk);
  }
  return [...disks.values()].sort((a, b) => a.target.localeCompare(b.target));
}

export interface QueryDisksOptions extends CallOptions {
  /** Ask for `x-debug-query-block-graph` for exact parent/child links (default true; skipped if QEMU lacks it). */
  useGraph?: boolean;
}

/**
 * Asks QEMU for its disks (query-named-block-nodes, query-block, x-debug-query-block-graph) and folds them.
 * @throws QmpError / QmpClosedError / QmpTimeoutError / AbortedError from the calls; QemuReplyError on odd replies.
 */
export async function queryDisks(qmp: QmpExecutor, options: QueryDisksOptions = {}): Promise<VmDisk[]> {
  const call: CallOptions = {};
  if (options.signal) call.signal = options.signal;
  if (options.timeoutMs !== undefined) call.timeoutMs = options.timeoutMs;
  const [named, block] = await Promise.all([
    qmp.execute<unknown>('query-named-block-nodes', { flat: true }, call),
    qmp.execute<unknown>('query-block', undefined, call),
  ]);
  let graph: unknown;
  if (options.useGraph !== false) {
    try {
      graph = await qmp.execute<unknown>('x-debug-query-block-graph', undefined, call);
    } catch (error) {
      if (!(error instanceof QmpError && error.errorClass === 'CommandNotFound')) throw error;
      log.debug('x-debug-query-block-graph is not available; guessing node links from file names');
    }
  }
  return disksFromQuery(named, block, graph);
}

/** The disk called `target`, if any. */
export function findDisk(disks: readonly VmDisk[], target: string): VmDisk | undefined {
  return disks.find((d) => d.target === target);
}
