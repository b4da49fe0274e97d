// Pure builders of QMP `transaction` actions, producing exactly the JSON libvirt 9.0 sends (see qmp-captures/).
import { InvalidInputError } from '../util/errors.js';

/** One action of a QMP `transaction`. */
export interface TransactionAction {
  type: string;
  data: Record<string, unknown>;
}

/** A bitmap reference: a name on the same node, or `{node, name}` anywhere. */
export type BitmapRef = string | { node: string; name: string };

function requireName(value: string, what: string): void {
  if (typeof value !== 'string' || value.length === 0) {
    throw new InvalidInputError(`${what} must be a non-empty string`);
  }
}

export interface BitmapAddOptions {
  node: string;
  name: string;
  /** Stored in the qcow2 image (checkpoints) or kept in memory only (temporary bitmaps). */
  persistent: boolean;
  /** Created not recording (temporary merge targets); default false. */
  disabled?: boolean;
  /** Bytes per bit; QEMU picks the cluster size when omitted. */
  granularity?: number;
}

/**
 * `block-dirty-bitmap-add`, keys in libvirt's order (node, name, persistent, disabled, granularity).
 * @throws InvalidInputError on an empty node or name, or a granularity that is not a power of two ≥ 512.
 */
export function bitmapAdd(options: BitmapAddOptions): TransactionAction {
  requireName(options.node, 'bitmap node');
  requireName(options.name, 'bitmap name');
  const data: Record<string, unknown> = {
    node: options.node,
    name: options.name,
    persistent: options.persistent,
    disabled: options.disabled ?? false,
  };
  if (options.granularity !== undefined) {
    const g = options.granularity;
    if (!Number.isInteger(g) || g < 512 || (g & (g - 1)) !== 0) {
      throw new InvalidInputError(`bitmap granularity ${g} must be a power of two of at least 512 bytes`);
    }
    data.granularity = g;
  }
  return { type: 'block-dirty-bitmap-add', data };
}

function nodeAndName(type: string, options: { node: string; name: string }): TransactionAction {
  requireName(options.node, 'bitmap node');
  requireName(options.name, 'bitmap name');
  return { type, data: { node: options.node, name: options.name } };
}

/** `block-dirty-bitmap-remove {node, name}`. @throws InvalidInputError on an empty node or name. */
export function bitmapRemove(options: { node: string; name: string }): TransactionAction {
  return nodeAndName('block-dirty-bitmap-remove', options);
}

/** `block-dirty-bitmap-clear {node, name}`. @throws InvalidInputError on an empty node or name. */
export function bitmapClear(options: { node: string; name: string }): TransactionAction {
  return nodeAndName('block-dirty-bitmap-clear', options);
}

/** `block-dirty-bitmap-disable {node, name}` (stop recording). @throws InvalidInputError on an empty name. */
export function bitmapDisable(options: { node: string; name: string }): TransactionAction {
  return nodeAndName('block-dirty-bitmap-disable', options);
}

/** `block-dirty-bitmap-enable {node, name}` (start recording). @throws InvalidInputError on an empty name. */
export function bitmapEnable(options: { node: string; name: string }): TransactionAction {
  return nodeAndName('block-dirty-bitmap-enable', options);
}

export interface BitmapMergeOptions {
  /** The node of the target bitmap. */
  node: string;
  /** The bitmap merged into. */
  target: string;
  /** Bitmaps merged from: names on `node`, or `{node, name}` (libvirt always uses the object form). */
  sources: BitmapRef[];
}

/**
 * `block-dirty-bitmap-merge {node, target, bitmaps}`; sources are passed through as given.
 * @throws InvalidInputError on empty names or no sources.
 */
export function bitmapMerge(options: BitmapMergeOptions): TransactionAction {
  requireName(options.node, 'bitmap node');
  requireName(options.target, 'merge target bitmap');
  if (options.sources.length === 0) {
    throw new InvalidInputError(`merge into bitmap ${options.target} on ${options.node} needs at least one source bitmap`);
  }
  const bitmaps = options.sources.map((s) => {
    if (typeof s === 'string') {
      requireName(s, 'merge source bitmap');
      return s;
    }
    requireName(s.node, 'merge source node');
    requireName(s.name, 'merge source bitmap');
    return { node: s.node, name: s.name };
  });
  return { type: 'block-dirty-bitmap-merge', data: { node: options.node, target: options.target, bitmaps } };
}

export type BackupSync = 'full' | 'incremental' | 'none' | 'top' | 'bitmap';
export type OnError = 'report' | 'ignore' | 'enospc' | 'stop' | 'auto';

export interface BlockdevBackupOptions {
  jobId: string;
  /** The source node (the disk's top format node). */
  device: string;
  /** The target node. */
  target: string;
  sync: BackupSync;
  /** The bitmap for sync 'incremental' / 'bitmap'. */
  bitmap?: string;
  /** For sync 'bitmap': when the bitmap is updated. */
  bitmapMode?: 'on-success' | 'never' | 'always';
  /** Bytes per second, 0 = unlimited. */
  speed?: number;
  compress?: boolean;
  /** Default true (as libvirt). */
  autoFinalize?: boolean;
  /** Default false: the owner dismisses after `concluded` (as libvirt). */
  autoDismiss?: boolean;
  onSourceError?: OnError;
  onTargetError?: OnError;
  /** Performance knobs of QEMU ≥ 6.0 (`x-perf`): `{use-copy-range, max-workers, max-chunk}`. */
  perf?: { useCopyRange?: boolean; maxWorkers?: number; maxChunk?: number };
  /** `discard-source` (QEMU ≥ 9.0 only; 7.2 rejects it): lets QEMU discard source data already copied. */
  discardSource?: boolean;
}

/**
 * `blockdev-backup`, keys in libvirt's order (device, job-id, target, sync, bitmap, auto-finalize, auto-dismiss),
 * optional knobs after them.
 * @throws InvalidInputError on empty ids, or sync incremental/bitmap without a bitmap (or a bitmap with another sync).
 */
export function blockdevBackup(options: BlockdevBackupOptions): TransactionAction {
  requireName(options.jobId, 'backup job id');
  requireName(options.device, 'backup source node');
  requireName(options.target, 'backup target node');
  const needsBitmap = options.sync === 'incremental' || options.sync === 'bitmap';
  if (needsBitmap && !options.bitmap) {
    throw new InvalidInputError(`backup job ${options.jobId}: sync '${options.sync}' needs a bitmap`);
  }
  if (!needsBitmap && options.bitmap !== undefined) {
    throw new InvalidInputError(
      `backup job ${options.jobId}: a bitmap only goes with sync 'incremental' or 'bitmap', not '${options.sync}'`,
    );
  }
  const data: Record<string, unknown> = {
    device: options.device,
    'job-id': options.jobId,
    target: options.target,
    sync: options.sync,
  };
  if (options.bitmap !== undefined) data.bitmap = options.bitmap;
  if (options.bitmapMode !== undefined) data['bitmap-mode'] = options.bitmapMode;
  data['auto-finalize'] = options.autoFinalize ?? true;
  data['auto-dismiss'] = options.autoDismiss ?? false;
  if (options.speed !== undefined) data.speed = options.speed;
  if (options.compress !== undefined) data.compress = options.compress;
  if (options.onSourceError !== undefined) data['on-source-error'] = options.onSourceError;
  if (options.onTargetError !== undefined) data['on-target-error'] = options.onTargetError;
  if (options.discardSource !== undefined) data['discard-source'] = options.discardSource;
  if (options.perf) {
    const perf: Record<string, unknown> = {};
    if (options.perf.useCopyRange !== undefined) perf['use-copy-range'] = options.perf.useCopyRange;
    if (options.perf.maxWorkers !== undefined) perf['max-workers'] = options.perf.maxWorkers;
    if (options.perf.maxChunk !== undefined) perf['max-chunk'] = options.perf.maxChunk;
    data['x-perf'] = perf;
  }
  return { type: 'blockdev-backup', data };
}
