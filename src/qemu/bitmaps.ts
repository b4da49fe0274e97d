// Dirty bitmap operations on a live QEMU, each one a single-action transaction (as libvirt does), plus dirty-size.
import type { QmpExecutor } from '../qmp/client.js';
import { NotFoundError } from '../util/errors.js';
import { getLogger } from '../util/logger.js';
import {
  bitmapAdd,
  bitmapMerge,
  bitmapRemove,
  type BitmapAddOptions,
  type BitmapRef,
  type TransactionAction,
} from './actions.js';
import { parseNamedNodes, type BitmapInfo } from './block-graph.js';
import { transaction, type TransactionOptions } from './transaction.js';

const log = getLogger('qemu-bitmaps');

/** The prefix of temporary bitmaps fleece makes to measure dirty sizes (libvirt uses `libvirt-tmp-size-xml`). */
export const TEMP_SIZE_BITMAP = 'fleece-tmp-size';

/** Adds a bitmap. @throws QmpError (e.g. the name exists on the node, the node is read-only). */
export async function addBitmap(
  qmp: QmpExecutor,
  options: BitmapAddOptions,
  tx: TransactionOptions = {},
): Promise<void> {
  await transaction(qmp, [bitmapAdd(options)], tx);
}

/** Removes a bitmap. @throws QmpError (e.g. no such bitmap, or it is busy in a job or export). */
export async function removeBitmap(
  qmp: QmpExecutor,
  options: { node: string; name: string },
  tx: TransactionOptions = {},
): Promise<void> {
  await transaction(qmp, [bitmapRemove(options)], tx);
}

/** Merges `sources` into `target` on `node`. @throws QmpError (missing bitmaps, granularity mismatch, busy). */
export async function mergeBitmaps(
  qmp: QmpExecutor,
  options: { node: string; target: string; sources: BitmapRef[] },
  tx: TransactionOptions = {},
): Promise<void> {
  await transaction(qmp, [bitmapMerge(options)], tx);
}

/**
 * The named bitmaps of every node, from one `query-named-block-nodes`.
 * @throws the QMP call's errors; QemuReplyError on an odd reply.
 */
export async function queryBitmaps(
  qmp: QmpExecutor,
  tx: { signal?: AbortSignal } = {},
): Promise<Map<string, BitmapInfo[]>> {
  const reply = await qmp.execute<unknown>('query-named-block-nodes', { flat: true }, tx.signal ? { signal: tx.signal } : {});
  const out = new Map<string, BitmapInfo[]>();
  for (const [name, node] of parseNamedNodes(reply)) out.set(name, node.bitmaps);
  return out;
}

/** One bitmap to measure. */
export interface DirtyBitmapRef {
  node: string;
  bitmap: string;
}

/**
 * Bytes dirty in each bitmap, read the libvirt way: for every bitmap a disabled temporary bitmap of the same
 * granularity, `merge` of the bitmap into it (all in one transaction), `count` read from one
 * query-named-block-nodes, temporary bitmaps removed (one transaction; always, also on errors). Counts are
 * multiples of the granularity (except at the disk's end). Returns the counts in the order of `refs`.
 * @throws NotFoundError when a node or bitmap does not exist; QmpError from QEMU.
 */
export async function measureDirtyBytes(
  qmp: QmpExecutor,
  refs: readonly DirtyBitmapRef[],
  options: { signal?: AbortSignal; tempName?: string } = {},
): Promise<number[]> {
  if (refs.length === 0) return [];
  const call = options.signal ? { signal: options.signal } : {};
  const before = await queryBitmaps(qmp, call);
  const temp = options.tempName ?? `${TEMP_SIZE_BITMAP}-${process.pid}-${Date.now().toString(36)}`;
  const adds: TransactionAction[] = [];
  const merges: TransactionAction[] = [];
  const tempOf = (index: number): string => `${temp}-${index}`;
  refs.forEach(({ node, bitmap }, index) => {
    const nodeBitmaps = before.get(node);
    if (!nodeBitmaps) throw new NotFoundError(`block node ${node} does not exist in QEMU`);
    const source = nodeBitmaps.find((b) => b.name === bitmap);
    if (!source) throw new NotFoundError(`bitmap ${bitmap} does not exist on block node ${node}`);
    adds.push(bitmapAdd({ node, name: tempOf(index), persistent: false, disabled: true, granularity: source.granularity }));
    merges.push(bitmapMerge({ node, target: tempOf(index), sources: [{ node, name: bitmap }] }));
  });
  await transaction(qmp, [...adds, ...merges], call);
  try {
    const after = await queryBitmaps(qmp, call);
    return refs.map(({ node }, index) => {
      const measured = after.get(node)?.find((b) => b.name === tempOf(index));
      if (!measured) throw new NotFoundError(`temporary bitmap ${tempOf(index)} vanished from block node ${node}`);
      return measured.count;
    });
  } finally {
    try {
      await transaction(qmp, refs.map(({ node }, index) => bitmapRemove({ node, name: tempOf(index) })));
    } catch (error) {
      log.warn({ err: error, temp }, 'removing the temporary size bitmaps failed; remove them with block-dirty-bitmap-remove');
    }
  }
}

/**
 * Bytes dirty in one bitmap (see measureDirtyBytes).
 * @throws NotFoundError when the node or bitmap does not exist; QmpError from QEMU.
 */
export async function dirtyBytesSince(
  qmp: QmpExecutor,
  node: string,
  bitmap: string,
  options: { signal?: AbortSignal; tempName?: string } = {},
): Promise<number> {
  const [count] = await measureDirtyBytes(qmp, [{ node, bitmap }], options);
  return count!;
}
