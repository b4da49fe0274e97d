// Checkpoints of one running VM: persistent bitmaps in QEMU (one transaction each way) plus the metadata in the store.
//
// Create: `transaction [block-dirty-bitmap-add {node: top format node, name, persistent: true, disabled: false}]`
// per included disk, then the XML is saved and the checkpoint becomes current. Delete: one transaction removing only
// that checkpoint's bitmaps; the chain re-parents its children. Size (`dumpXml --size`): temporary disabled bitmaps,
// merge, count, remove (src/qemu/bitmaps.ts). A backup job that takes a checkpoint puts `prepareCreate().actions`
// into its own transaction and calls `commitCreated` once that transaction succeeded.
import type { QmpExecutor } from '../qmp/client.js';
import { bitmapAdd, bitmapRemove, type TransactionAction } from '../qemu/actions.js';
import { measureDirtyBytes } from '../qemu/bitmaps.js';
import { queryDisks, type VmDisk } from '../qemu/block-graph.js';
import { transaction } from '../qemu/transaction.js';
import { ConflictError, FleeceError, NotFoundError, throwIfAborted } from '../util/errors.js';
import { getLogger } from '../util/logger.js';
import type { CheckpointChain } from './chain.js';
import { formatCheckpointXml, parseCheckpointXml } from './checkpoint-xml.js';
import {
  alignCheckpointDisks,
  checkpointBitmaps,
  validateCheckpointName,
  type Checkpoint,
  type CheckpointDefinition,
} from './model.js';
import type { CheckpointStore } from './store.js';

const log = getLogger('checkpoint-manager');

/** The state of one checkpoint's bitmap on one disk, worst first: missing, inconsistent, not-recording, busy, ok. */
export type CheckpointDiskState = 'ok' | 'missing' | 'not-recording' | 'inconsistent' | 'busy';

export interface CheckpointDiskCheck {
  checkpoint: string;
  disk: string;
  bitmap: string;
  /** The node the bitmap should be on (absent when the disk is gone from the VM). */
  node?: string;
  state: CheckpointDiskState;
  /** What the hypervisor said, when it said more than the state (libvirt's error message). */
  detail?: string;
}

export interface CheckpointCheck {
  name: string;
  /** True when every disk is `ok`. */
  valid: boolean;
  disks: CheckpointDiskCheck[];
}

/** A checkpoint cannot be used as the base of an incremental backup, and why. */
export class CheckpointUnusableError extends FleeceError {
  readonly checkpoint: string;
  readonly disk: string;
  readonly state: Exclude<CheckpointDiskState, 'ok'>;

  constructor(check: CheckpointDiskCheck & { state: Exclude<CheckpointDiskState, 'ok'> }, vm: string) {
    const where = check.node ? ` on node ${check.node}` : '';
    const what: Record<Exclude<CheckpointDiskState, 'ok'>, [string, string]> = {
      missing: [
        `its bitmap ${check.bitmap}${where} does not exist in QEMU`,
        `delete the checkpoint (fleece checkpoint-delete ${vm} ${check.checkpoint}) and take a full backup`,
      ],
      inconsistent: [
        `its bitmap ${check.bitmap}${where} is inconsistent (QEMU stopped without saving it)`,
        `delete the checkpoint and take a full backup`,
      ],
      'not-recording': [
        `its bitmap ${check.bitmap}${where} is disabled and misses writes`,
        `delete the checkpoint and take a full backup`,
      ],
      busy: [
        `its bitmap ${check.bitmap}${where} is in use by a running job or export`,
        `wait for the other backup job to end, then retry`,
      ],
    };
    const [reason, hint] = what[check.state];
    super(
      check.state === 'busy' ? 'CONFLICT' : 'INTEGRITY',
      `checkpoint ${check.checkpoint} of VM ${vm} cannot be used for disk ${check.disk}: ${reason} (state: ${check.state})`,
      { hint },
    );
    this.checkpoint = check.checkpoint;
    this.disk = check.disk;
    this.state = check.state;
  }
}

function diskByTarget(disks: readonly VmDisk[], target: string): VmDisk | undefined {
  return disks.find((d) => d.target === target);
}

/**
 * The transaction actions that create checkpoint `cp`'s bitmaps: a persistent, recording bitmap per disk with
 * `checkpoint='bitmap'`, on the disk's top format node (pure).
 * @throws NotFoundError when a disk of the checkpoint is not among `disks`.
 */
export function checkpointActions(cp: Pick<Checkpoint, 'name' | 'disks'>, disks: readonly VmDisk[]): TransactionAction[] {
  return checkpointBitmaps(cp).map(({ disk, bitmap }) => {
    const vmDisk = diskByTarget(disks, disk);
    if (!vmDisk) {
      throw new NotFoundError(`checkpoint ${cp.name}: the VM has no disk ${disk} (disks: ${disks.map((d) => d.target).join(', ') || 'none'})`);
    }
    return bitmapAdd({ node: vmDisk.formatNode, name: bitmap, persistent: true, disabled: false });
  });
}

/**
 * The actions that remove checkpoint `cp`'s bitmaps that exist in QEMU, and the ones already gone (pure).
 */
export function checkpointRemovalActions(
  cp: Pick<Checkpoint, 'name' | 'disks'>,
  disks: readonly VmDisk[],
): { actions: TransactionAction[]; missing: Array<{ disk: string; bitmap: string }> } {
  const actions: TransactionAction[] = [];
  const missing: Array<{ disk: string; bitmap: string }> = [];
  for (const { disk, bitmap } of checkpointBitmaps(cp)) {
    const vmDisk = diskByTarget(disks, disk);
    if (vmDisk && vmDisk.bitmaps.some((b) => b.name === bitmap)) {
      actions.push(bitmapRemove({ node: vmDisk.formatNode, name: bitmap }));
    } else {
      missing.push({ disk, bitmap });
    }
  }
  return { actions, missing };
}

/** The state of every checkpoint's bitmaps against the VM's disks (pure). */
export function checkCheckpoints(checkpoints: readonly Checkpoint[], disks: readonly VmDisk[]): CheckpointCheck[] {
  return checkpoints.map((cp) => {
    const checks = checkpointBitmaps(cp).map(({ disk, bitmap }): CheckpointDiskCheck => {
      const vmDisk = diskByTarget(disks, disk);
      const base = { checkpoint: cp.name, disk, bitmap };
      if (!vmDisk) return { ...base, state: 'missing' };
      const info = vmDisk.bitmaps.find((b) => b.name === bitmap);
      const node = vmDisk.formatNode;
      if (!info) return { ...base, node, state: 'missing' };
      if (info.inconsistent) return { ...base, node, state: 'inconsistent' };
      if (!info.recording) return { ...base, node, state: 'not-recording' };
      if (info.busy) return { ...base, node, state: 'busy' };
      return { ...base, node, state: 'ok' };
    });
    return { name: cp.name, valid: checks.every((c) => c.state === 'ok'), disks: checks };
  });
}

export interface CheckpointManagerOptions {
  qmp: QmpExecutor;
  store: CheckpointStore;
  vm: string;
  /** Unix seconds; default the clock. */
  now?: () => number;
}

export interface CreateCheckpointOptions {
  /** Only these disks get a bitmap (the others `checkpoint='no'`); default: as the definition says. */
  disks?: string[];
  signal?: AbortSignal;
}

/** A checkpoint ready to be created: its metadata and the actions to put in a transaction. */
export interface PreparedCheckpoint {
  checkpoint: Checkpoint;
  actions: TransactionAction[];
  disks: VmDisk[];
}

/**
 * The checkpoints of one VM. Calls on one manager run one at a time; the metadata is re-read from the store on
 * every call, so several managers (CLI and daemon) on one state directory see each other's changes.
 */
export class CheckpointManager {
  readonly vm: string;
  readonly #qmp: QmpExecutor;
  readonly #store: CheckpointStore;
  readonly #now: () => number;
  #queue: Promise<unknown> = Promise.resolve();

  constructor(options: CheckpointManagerOptions) {
    this.vm = options.vm;
    this.#qmp = options.qmp;
    this.#store = options.store;
    this.#now = options.now ?? (() => Math.floor(Date.now() / 1000));
  }

  #serial<T>(work: () => Promise<T>): Promise<T> {
    const run = this.#queue.then(work, work);
    this.#queue = run.catch(() => undefined);
    return run;
  }

  /**
   * Fills a definition (name, parent = current, creation time, disks aligned to the VM) and builds its actions,
   * without touching QEMU or the store. For a backup job that creates the checkpoint in its own transaction.
   * @throws InvalidInputError (bad name, unknown disk, bitmap on a non-qcow2 disk); ConflictError when the
   *   checkpoint or a bitmap of that name exists.
   */
  async prepareCreate(def: CheckpointDefinition | string, options: CreateCheckpointOptions = {}): Promise<PreparedCheckpoint> {
    const chain = await this.#store.load(this.vm);
    const disks = await queryDisks(this.#qmp, options.signal ? { signal: options.signal } : {});
    return this.#prepare(def, options, chain, disks);
  }

  #prepare(
    def: CheckpointDefinition | string,
    options: CreateCheckpointOptions,
    chain: CheckpointChain,
    disks: VmDisk[],
  ): PreparedCheckpoint {
    let definition: CheckpointDefinition = typeof def === 'string' ? { name: def, disks: [] } : def;
    validateCheckpointName(definition.name);
    if (options.disks) {
      definition = { ...definition, disks: options.disks.map((name) => ({ name, checkpoint: 'bitmap' as const })) };
    }
    if (chain.has(definition.name)) {
      throw new ConflictError(`checkpoint ${definition.name} of VM ${this.vm} already exists`, {
        hint: 'choose another name or delete the existing checkpoint first',
      });
    }
    const aligned = alignCheckpointDisks(definition, disks.map((d) => ({ name: d.target, format: d.format })));
    const { parent: _ignored, creationTime, ...rest } = aligned;
    const checkpoint: Checkpoint = { ...rest, creationTime: creationTime ?? this.#now() };
    if (chain.current !== undefined) checkpoint.parent = chain.current;
    for (const { disk, bitmap } of checkpointBitmaps(checkpoint)) {
      const vmDisk = diskByTarget(disks, disk)!;
      if (vmDisk.bitmaps.some((b) => b.name === bitmap)) {
        throw new ConflictError(`disk ${disk} of VM ${this.vm} already has a bitmap called ${bitmap} on node ${vmDisk.formatNode}`, {
          hint: `choose another checkpoint name, or redefine the checkpoint's metadata from its XML if it belongs to one`,
        });
      }
    }
    return { checkpoint, actions: checkpointActions(checkpoint, disks), disks };
  }

  /**
   * Records a checkpoint whose bitmaps a transaction just created (made current).
   * @throws ConflictError when it exists already; the store's errors.
   */
  commitCreated(checkpoint: Checkpoint): Promise<void> {
    return this.#serial(async () => {
      const chain = await this.#store.load(this.vm);
      chain.add(checkpoint);
      await this.#store.saveNew(this.vm, chain.get(checkpoint.name), chain);
    });
  }

  /**
   * Creates a checkpoint now: one transaction adding its bitmaps, then its metadata (made current). When saving
   * the metadata fails, the bitmaps are removed again.
   * @throws InvalidInputError, ConflictError (see prepareCreate); QmpError when QEMU refuses; AbortedError.
   */
  create(def: CheckpointDefinition | string, options: CreateCheckpointOptions = {}): Promise<Checkpoint> {
    return this.#serial(async () => {
      throwIfAborted(options.signal, `creating a checkpoint of VM ${this.vm}`);
      const chain = await this.#store.load(this.vm);
      const disks = await queryDisks(this.#qmp, options.signal ? { signal: options.signal } : {});
      const { checkpoint, actions } = this.#prepare(def, options, chain, disks);
      throwIfAborted(options.signal, `creating checkpoint ${checkpoint.name}`);
      if (actions.length > 0) await transaction(this.#qmp, actions);
      try {
        chain.add(checkpoint);
        await this.#store.saveNew(this.vm, chain.get(checkpoint.name), chain);
      } catch (error) {
        // The transaction made exactly these bitmaps: remove them again so that QEMU matches the metadata.
        const undo = actions.map((a) => bitmapRemove({ node: String(a.data.node), name: String(a.data.name) }));
        if (undo.length > 0) await transaction(this.#qmp, undo).catch((e: unknown) =>
          log.warn({ err: e, checkpoint: checkpoint.name }, 'could not remove the bitmaps of a checkpoint whose metadata failed to save'),
        );
        throw error;
      }
      log.debug({ vm: this.vm, checkpoint: checkpoint.name, disks: actions.length }, 'checkpoint created');
      return chain.get(checkpoint.name);
    });
  }

  /** Every checkpoint, oldest first. @throws IntegrityError for corrupt metadata. */
  async list(): Promise<Checkpoint[]> {
    return (await this.#store.load(this.vm)).list();
  }

  /** The current checkpoint's name (the parent of the next one), if any. */
  async current(): Promise<string | undefined> {
    return (await this.#store.load(this.vm)).current;
  }

  /** The chain (tree, leaves, parents) as stored. @throws IntegrityError for corrupt metadata. */
  async chain(): Promise<CheckpointChain> {
    return this.#store.load(this.vm);
  }

  /** One checkpoint. @throws NotFoundError when there is none of that name. */
  async get(name: string): Promise<Checkpoint> {
    return (await this.#store.load(this.vm)).get(name);
  }

  /**
   * Deletes a checkpoint: one transaction removing only its bitmaps (those still in QEMU), then the metadata
   * (children re-parented, current moved to its parent). `metadataOnly` leaves QEMU alone (virsh --metadata).
   * @throws NotFoundError; QmpError when QEMU refuses (e.g. a bitmap busy in a job), metadata then unchanged.
   */
  delete(name: string, options: { metadataOnly?: boolean; signal?: AbortSignal } = {}): Promise<void> {
    return this.#serial(async () => {
      const chain = await this.#store.load(this.vm);
      const cp = chain.get(name);
      if (!options.metadataOnly) {
        const disks = await queryDisks(this.#qmp, options.signal ? { signal: options.signal } : {});
        const { actions, missing } = checkpointRemovalActions(cp, disks);
        if (missing.length > 0) log.debug({ checkpoint: name, missing }, 'bitmaps already gone');
        if (actions.length > 0) await transaction(this.#qmp, actions, options.signal ? { signal: options.signal } : {});
      }
      const removal = chain.remove(name);
      await this.#store.saveRemoval(this.vm, removal);
      log.debug({ vm: this.vm, checkpoint: name }, 'checkpoint deleted');
    });
  }

  /**
   * The checkpoint's XML in libvirt's output form; with `size`, each disk's `size=` is the bytes written since the
   * checkpoint (rounded to the bitmap granularity), measured with temporary bitmaps that are removed again.
   * @throws NotFoundError (checkpoint, or a bitmap missing when `size` is asked); QmpError.
   */
  async dumpXml(name: string, options: { size?: boolean; noDomain?: boolean; signal?: AbortSignal } = {}): Promise<string> {
    const cp = await this.get(name);
    let sizes: Record<string, number> | undefined;
    if (options.size) {
      sizes = await this.#serial(() => this.#measure(cp, options.signal));
    }
    return formatCheckpointXml(cp, {
      ...(sizes ? { sizes } : {}),
      ...(options.noDomain ? { noDomain: true } : {}),
    });
  }

  /**
   * Bytes written since the checkpoint, per disk with a bitmap.
   * @throws NotFoundError when the checkpoint or one of its bitmaps does not exist; QmpError.
   */
  async dirtySizes(name: string, options: { signal?: AbortSignal } = {}): Promise<Record<string, number>> {
    const cp = await this.get(name);
    return this.#serial(() => this.#measure(cp, options.signal));
  }

  async #measure(cp: Checkpoint, signal: AbortSignal | undefined): Promise<Record<string, number>> {
    const disks = await queryDisks(this.#qmp, signal ? { signal } : {});
    const refs = checkpointBitmaps(cp).map(({ disk, bitmap }) => {
      const vmDisk = diskByTarget(disks, disk);
      if (!vmDisk) throw new NotFoundError(`checkpoint ${cp.name}: the VM has no disk ${disk} any more`);
      return { disk, node: vmDisk.formatNode, bitmap };
    });
    const counts = await measureDirtyBytes(this.#qmp, refs, signal ? { signal } : {});
    return Object.fromEntries(refs.map((r, i) => [r.disk, counts[i]!]));
  }

  /**
   * Restores a checkpoint's metadata from its XML (virsh checkpoint-create --redefine) after checking that its
   * bitmaps exist in QEMU; QEMU is not changed. The checkpoint becomes current when it is the newest one.
   * @throws InvalidInputError for bad XML; ConflictError when it exists; NotFoundError when its parent, a disk
   *   or a bitmap does not exist.
   */
  redefine(xml: string, options: { signal?: AbortSignal } = {}): Promise<Checkpoint> {
    return this.#serial(async () => {
      const def = parseCheckpointXml(xml);
      const chain = await this.#store.load(this.vm);
      if (chain.has(def.name)) {
        throw new ConflictError(`checkpoint ${def.name} of VM ${this.vm} already exists`, {
          hint: 'delete its metadata first (checkpoint-delete --metadata) to redefine it',
        });
      }
      const disks = await queryDisks(this.#qmp, options.signal ? { signal: options.signal } : {});
      const checkpoint: Checkpoint = { ...def, creationTime: def.creationTime ?? this.#now() };
      const [check] = checkCheckpoints([checkpoint], disks);
      const missing = check!.disks.find((d) => d.state === 'missing');
      if (missing) {
        throw new NotFoundError(
          `cannot redefine checkpoint ${def.name} of VM ${this.vm}: disk ${missing.disk} has no bitmap ${missing.bitmap}${missing.node ? ` on node ${missing.node}` : ' (no such disk)'}`,
          { hint: 'redefine only checkpoints whose bitmaps are still in the disk images' },
        );
      }
      const newest = chain.list().every((c) => c.creationTime <= checkpoint.creationTime);
      chain.add(checkpoint, { makeCurrent: newest });
      await this.#store.save(this.vm, chain.get(checkpoint.name));
      if (newest) await this.#store.setCurrent(this.vm, checkpoint.name);
      return chain.get(checkpoint.name);
    });
  }

  /**
   * The state of every checkpoint's bitmaps in QEMU.
   * @throws IntegrityError for corrupt metadata; QMP call errors.
   */
  async validate(options: { signal?: AbortSignal } = {}): Promise<CheckpointCheck[]> {
    const chain = await this.#store.load(this.vm);
    const disks = await queryDisks(this.#qmp, options.signal ? { signal: options.signal } : {});
    return checkCheckpoints(chain.list(), disks);
  }

  /**
   * Checks that a checkpoint can be the base of an incremental backup (of `disks`, default all of its disks).
   * @throws NotFoundError when there is no such checkpoint; CheckpointUnusableError naming the checkpoint, the
   *   disk and the state of the first disk that is not ok.
   */
  async ensureUsable(name: string, options: { disks?: string[]; signal?: AbortSignal } = {}): Promise<CheckpointCheck> {
    const cp = await this.get(name);
    const disks = await queryDisks(this.#qmp, options.signal ? { signal: options.signal } : {});
    const [check] = checkCheckpoints([cp], disks);
    for (const disk of check!.disks) {
      if (options.disks && !options.disks.includes(disk.disk)) continue;
      if (disk.state !== 'ok') throw new CheckpointUnusableError({ ...disk, state: disk.state }, this.vm);
    }
    return check!;
  }
}
