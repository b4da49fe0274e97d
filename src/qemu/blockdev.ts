// Block nodes: blockdev-add/-del, and creating and opening qcow2 images through QEMU the way libvirt 9.0 does.
//
// createQcow2Image: `blockdev-create {driver: file}` (makes the file) → `blockdev-add` file node
// {auto-read-only, discard: unmap} → `blockdev-create {driver: qcow2, file: <file node>, size, cluster-size,
// backing-file?, backing-fmt?}` → `blockdev-add` qcow2 node {read-only: false, backing: <node> | null}
// (qmp-captures/02, 04, 05). Every step that succeeded is undone when a later one fails.
import type { QmpExecutor } from '../qmp/client.js';
import type { CallOptions } from '../qmp/events.js';
import { InvalidInputError, throwIfAborted } from '../util/errors.js';
import { getLogger } from '../util/logger.js';
import { runCreateJob } from './jobs.js';

const log = getLogger('qemu-blockdev');

/** The two nodes of an opened image. */
export interface ImageNodes {
  formatNode: string;
  fileNode: string;
}

function callOptions(options: { signal?: AbortSignal; timeoutMs?: number }): CallOptions {
  const call: CallOptions = {};
  if (options.signal) call.signal = options.signal;
  if (options.timeoutMs !== undefined) call.timeoutMs = options.timeoutMs;
  return call;
}

/** `blockdev-add` with the given options. @throws QmpError (e.g. a duplicate node name, a missing file). */
export async function blockdevAdd(
  qmp: QmpExecutor,
  options: Record<string, unknown>,
  call: CallOptions = {},
): Promise<void> {
  await qmp.execute('blockdev-add', options, callOptions(call));
}

/** `blockdev-del {node-name}`. @throws QmpError (e.g. the node is still in use or does not exist). */
export async function blockdevDel(qmp: QmpExecutor, nodeName: string, call: CallOptions = {}): Promise<void> {
  await qmp.execute('blockdev-del', { 'node-name': nodeName }, callOptions(call));
}

/** The `blockdev-add` options of a file protocol node, as libvirt sends them (pure). */
export function fileNodeOptions(options: { nodeName: string; filename: string; readOnly?: boolean }): Record<string, unknown> {
  const args: Record<string, unknown> = {
    driver: 'file',
    filename: options.filename,
    'node-name': options.nodeName,
    'auto-read-only': true,
    discard: 'unmap',
  };
  if (options.readOnly) args['read-only'] = true;
  return args;
}

/**
 * The `blockdev-add` options of a format node over `fileNode`, as libvirt sends them (pure). `backing`: a node
 * name, null (no backing: do not open the one in the header) or undefined (QEMU opens the header's backing file).
 */
export function formatNodeOptions(options: {
  nodeName: string;
  fileNode: string;
  format?: 'qcow2' | 'raw';
  readOnly?: boolean;
  backing?: string | null;
}): Record<string, unknown> {
  const format = options.format ?? 'qcow2';
  const args: Record<string, unknown> = {
    'node-name': options.nodeName,
    'read-only': options.readOnly ?? false,
    driver: format,
    file: options.fileNode,
  };
  if (format === 'qcow2' && options.backing !== undefined) args.backing = options.backing;
  return args;
}

export interface Qcow2CreateOptions {
  fileNode: string;
  size: number;
  clusterSize?: number;
  backingFile?: string;
  backingFmt?: string;
}

/**
 * The `options` of `blockdev-create` for a qcow2 image, as libvirt sends them (pure).
 * @throws InvalidInputError on a size that is not a positive multiple of 512, or backingFmt without backingFile.
 */
export function qcow2CreateOptions(options: Qcow2CreateOptions): Record<string, unknown> {
  if (!Number.isSafeInteger(options.size) || options.size <= 0 || options.size % 512 !== 0) {
    throw new InvalidInputError(`qcow2 image size ${options.size} must be a positive multiple of 512 bytes`);
  }
  if (options.backingFmt !== undefined && options.backingFile === undefined) {
    throw new InvalidInputError('a qcow2 backing format was given without a backing file');
  }
  const args: Record<string, unknown> = {
    driver: 'qcow2',
    file: options.fileNode,
    size: options.size,
    'cluster-size': options.clusterSize ?? 65536,
  };
  if (options.backingFile !== undefined) {
    args['backing-file'] = options.backingFile;
    args['backing-fmt'] = options.backingFmt ?? 'qcow2';
  }
  return args;
}

export interface CreateQcow2ImageOptions {
  filename: string;
  size: number;
  /** Node names of the image; default `<jobIdPrefix>-format` / `<jobIdPrefix>-storage`. */
  formatNode?: string;
  fileNode?: string;
  backingFile?: string;
  backingFmt?: string;
  clusterSize?: number;
  /** Prefix of the create job ids and default node names (unique per VM), e.g. `fleece-3`. */
  jobIdPrefix: string;
  /** How to open the new image: a backing node name, null (no backing, as push full) or undefined. */
  backing?: string | null;
  signal?: AbortSignal;
}

/**
 * Creates `filename` (truncating any existing file: pass a new path) as a qcow2 image through QEMU and opens it
 * (see the module comment). Returns the opened nodes; on failure, nodes added are deleted again (the file stays).
 * @throws InvalidInputError on bad sizes; QemuJobError when a create job fails; QmpError when QEMU refuses a step;
 *   AbortedError when `signal` fires (jobs cancelled and dismissed).
 */
export async function createQcow2Image(qmp: QmpExecutor, options: CreateQcow2ImageOptions): Promise<ImageNodes> {
  const formatNode = options.formatNode ?? `${options.jobIdPrefix}-format`;
  const fileNode = options.fileNode ?? `${options.jobIdPrefix}-storage`;
  const createArgs = qcow2CreateOptions({
    fileNode,
    size: options.size,
    ...(options.clusterSize !== undefined ? { clusterSize: options.clusterSize } : {}),
    ...(options.backingFile !== undefined ? { backingFile: options.backingFile } : {}),
    ...(options.backingFmt !== undefined ? { backingFmt: options.backingFmt } : {}),
  });
  const signal = options.signal;
  const jobOptions = signal ? { signal } : {};
  throwIfAborted(signal, `creating ${options.filename}`);
  await runCreateJob(qmp, `create-${options.jobIdPrefix}-file`, { driver: 'file', filename: options.filename, size: 0 }, jobOptions);
  await blockdevAdd(qmp, fileNodeOptions({ nodeName: fileNode, filename: options.filename }), jobOptions);
  try {
    await runCreateJob(qmp, `create-${options.jobIdPrefix}-format`, createArgs, jobOptions);
    throwIfAborted(signal, `creating ${options.filename}`);
    await blockdevAdd(
      qmp,
      formatNodeOptions({
        nodeName: formatNode,
        fileNode,
        ...(options.backing !== undefined ? { backing: options.backing } : {}),
      }),
      jobOptions,
    );
  } catch (error) {
    await deleteNodesQuietly(qmp, [fileNode]);
    throw error;
  }
  log.debug({ filename: options.filename, formatNode, fileNode }, 'created qcow2 image');
  return { formatNode, fileNode };
}

export interface OpenImageOptions {
  filename: string;
  formatNode: string;
  fileNode: string;
  format?: 'qcow2' | 'raw';
  readOnly?: boolean;
  backing?: string | null;
  signal?: AbortSignal;
}

/**
 * Opens an existing image as a file node and a format node.
 * @throws QmpError when QEMU cannot open it (the file node is deleted again).
 */
export async function openImage(qmp: QmpExecutor, options: OpenImageOptions): Promise<ImageNodes> {
  const call = options.signal ? { signal: options.signal } : {};
  await blockdevAdd(
    qmp,
    fileNodeOptions({
      nodeName: options.fileNode,
      filename: options.filename,
      ...(options.readOnly !== undefined ? { readOnly: options.readOnly } : {}),
    }),
    call,
  );
  try {
    await blockdevAdd(
      qmp,
      formatNodeOptions({
        nodeName: options.formatNode,
        fileNode: options.fileNode,
        ...(options.format !== undefined ? { format: options.format } : {}),
        ...(options.readOnly !== undefined ? { readOnly: options.readOnly } : {}),
        ...(options.backing !== undefined ? { backing: options.backing } : {}),
      }),
      call,
    );
  } catch (error) {
    await deleteNodesQuietly(qmp, [options.fileNode]);
    throw error;
  }
  return { formatNode: options.formatNode, fileNode: options.fileNode };
}

/**
 * Closes an image: `blockdev-del` of the format node, then of the file node (libvirt's order).
 * @throws QmpError (e.g. a node still in use by a job or an export).
 */
export async function closeImage(qmp: QmpExecutor, nodes: ImageNodes, call: CallOptions = {}): Promise<void> {
  await blockdevDel(qmp, nodes.formatNode, call);
  await blockdevDel(qmp, nodes.fileNode, call);
}

/** Deletes nodes in order, logging and ignoring failures (cleanup after an error; never throws). */
export async function deleteNodesQuietly(qmp: QmpExecutor, nodeNames: readonly string[]): Promise<void> {
  for (const node of nodeNames) {
    try {
      await blockdevDel(qmp, node);
    } catch (error) {
      log.debug({ err: error, node }, 'blockdev-del during cleanup failed; ignored');
    }
  }
}

// The brief placed bitmap and NBD helpers here; they live in their own files and are re-exported for convenience.
export { addBitmap, removeBitmap, mergeBitmaps, queryBitmaps, dirtyBytesSince, measureDirtyBytes } from './bitmaps.js';
export {
  nbdServerStart,
  nbdServerStop,
  blockExportAdd,
  blockExportDel,
  queryBlockExports,
  type NbdServerAddress,
  type BlockExportAddOptions,
  type BlockExportInfo,
} from './nbd-export.js';
