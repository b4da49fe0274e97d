// A VM's checkpoints as libvirt sees them: a tree by parent, a current checkpoint, and libvirt's delete semantics.
import { ConflictError, InvalidInputError, NotFoundError } from '../util/errors.js';
import { checkpointBitmaps, validateCheckpointName, type Checkpoint } from './model.js';

/** One node of `tree()`: a checkpoint name and its children, in virsh's order. */
export interface CheckpointTreeNode {
  name: string;
  children: CheckpointTreeNode[];
}

/** What `remove()` changed, so that the caller can persist it and tell QEMU. */
export interface CheckpointRemoval {
  removed: Checkpoint;
  /** The removed checkpoint's children with their new parent (the removed one's parent, or none). */
  reparented: Checkpoint[];
  /** The bitmaps QEMU must remove: only the removed checkpoint's own, per disk (libvirt 9 does not merge). */
  bitmapsToRemove: { disk: string; bitmap: string }[];
  /** The current checkpoint after the removal (moves to the parent when the current one is removed). */
  current: string | undefined;
  currentChanged: boolean;
}

/** virsh sorts checkpoints by name, case-insensitively (vshStrcasecmp). */
export function compareCheckpointNames(a: string, b: string): number {
  const la = a.toLowerCase();
  const lb = b.toLowerCase();
  if (la !== lb) return la < lb ? -1 : 1;
  return a < b ? -1 : a > b ? 1 : 0;
}

/**
 * The checkpoints of one VM. Holds frozen Checkpoint objects; every change returns or replaces whole objects,
 * never mutates one a caller holds.
 */
export class CheckpointChain {
  private readonly byName = new Map<string, Checkpoint>();
  private currentName: string | undefined;

  /**
   * Builds a chain from checkpoints in any order (for example loaded from files).
   * @throws InvalidInputError for a duplicate name, a parent that does not exist, a parent cycle, or a current
   * checkpoint that does not exist.
   */
  static from(checkpoints: readonly Checkpoint[], current?: string): CheckpointChain {
    const chain = new CheckpointChain();
    const pending = new Map<string, Checkpoint>();
    for (const cp of checkpoints) {
      if (pending.has(cp.name)) throw new InvalidInputError(`checkpoint '${cp.name}' is defined twice`, { hint: 'remove one of the two definitions' });
      pending.set(cp.name, cp);
    }
    for (const cp of pending.values()) {
      if (cp.parent !== undefined && !pending.has(cp.parent)) {
        throw new InvalidInputError(`checkpoint '${cp.name}' names parent '${cp.parent}', which does not exist`, {
          hint: `redefine '${cp.name}' without that parent or restore '${cp.parent}'`,
        });
      }
    }
    // Parents first; what is left when no progress is made is a cycle.
    while (pending.size > 0) {
      const ready = [...pending.values()].filter((cp) => cp.parent === undefined || chain.byName.has(cp.parent));
      if (ready.length === 0) {
        throw new InvalidInputError(`checkpoints ${[...pending.keys()].sort(compareCheckpointNames).join(', ')} form a parent cycle`, {
          hint: 'fix their <parent> elements',
        });
      }
      for (const cp of ready) {
        chain.add(cp, { makeCurrent: false });
        pending.delete(cp.name);
      }
    }
    if (current !== undefined) chain.setCurrent(current);
    return chain;
  }

  /** The checkpoint that a new checkpoint gets as its parent (libvirt's current checkpoint), if any. */
  get current(): string | undefined {
    return this.currentName;
  }

  /**
   * Makes `name` current, or clears the current checkpoint with undefined.
   * @throws NotFoundError when there is no such checkpoint.
   */
  setCurrent(name: string | undefined): void {
    if (name !== undefined) this.get(name);
    this.currentName = name;
  }

  get size(): number {
    return this.byName.size;
  }

  has(name: string): boolean {
    return this.byName.has(name);
  }

  /**
   * The checkpoint called `name`.
   * @throws NotFoundError naming the checkpoint and the ones that exist.
   */
  get(name: string): Checkpoint {
    const cp = this.byName.get(name);
    if (cp === undefined) {
      const known = this.list().map((c) => c.name);
      throw new NotFoundError(`checkpoint '${name}' does not exist (checkpoints: ${known.join(', ') || 'none'})`, {
        hint: 'list them with checkpoint-list',
      });
    }
    return cp;
  }

  /** Every checkpoint, oldest first (by creation time, then name). */
  list(): Checkpoint[] {
    return [...this.byName.values()].sort((a, b) => a.creationTime - b.creationTime || compareCheckpointNames(a.name, b.name));
  }

  /**
   * The parent of `name`, or undefined for a root.
   * @throws NotFoundError when there is no such checkpoint.
   */
  parentOf(name: string): Checkpoint | undefined {
    const parent = this.get(name).parent;
    return parent === undefined ? undefined : this.get(parent);
  }

  /**
   * The direct children of `name`, in virsh's order (by name).
   * @throws NotFoundError when there is no such checkpoint.
   */
  childrenOf(name: string): Checkpoint[] {
    this.get(name);
    return this.sorted([...this.byName.values()].filter((cp) => cp.parent === name));
  }

  /** Checkpoints without a parent, by name. */
  roots(): Checkpoint[] {
    return this.sorted([...this.byName.values()].filter((cp) => cp.parent === undefined));
  }

  /** Checkpoints without children, by name. */
  leaves(): Checkpoint[] {
    const parents = new Set([...this.byName.values()].map((cp) => cp.parent));
    return this.sorted([...this.byName.values()].filter((cp) => !parents.has(cp.name)));
  }

  /**
   * All checkpoints below `name`, depth first in virsh's tree order (parents before their children).
   * @throws NotFoundError when there is no such checkpoint.
   */
  descendants(name: string): Checkpoint[] {
    const out: Checkpoint[] = [];
    const walk = (parent: string): void => {
      for (const child of this.childrenOf(parent)) {
        out.push(child);
        walk(child.name);
      }
    };
    walk(name);
    return out;
  }

  /**
   * The checkpoints above `name`, nearest first.
   * @throws NotFoundError when there is no such checkpoint.
   */
  ancestors(name: string): Checkpoint[] {
    const out: Checkpoint[] = [];
    for (let cp = this.parentOf(name); cp !== undefined; cp = this.parentOf(cp.name)) out.push(cp);
    return out;
  }

  /**
   * Adds a checkpoint (its `parent` is taken as given: pass `chain.current` for a new one) and, by default, makes
   * it current, as creating a checkpoint does in libvirt.
   * @throws InvalidInputError for an invalid name, ConflictError when the name exists, NotFoundError when the
   * parent does not exist.
   */
  add(cp: Checkpoint, options: { makeCurrent?: boolean } = {}): void {
    validateCheckpointName(cp.name);
    if (this.byName.has(cp.name)) {
      throw new ConflictError(`checkpoint '${cp.name}' already exists`, { hint: 'choose another name or delete the existing checkpoint first' });
    }
    if (cp.parent !== undefined && !this.byName.has(cp.parent)) {
      throw new NotFoundError(`checkpoint '${cp.name}': its parent '${cp.parent}' does not exist`, { hint: 'create the parent first or leave <parent> out' });
    }
    this.byName.set(cp.name, freeze(cp));
    if (options.makeCurrent ?? true) this.currentName = cp.name;
  }

  /**
   * The bitmaps QEMU must remove when `name` is deleted: that checkpoint's own bitmaps, per disk.
   * @throws NotFoundError when there is no such checkpoint.
   */
  bitmapsToRemove(name: string): { disk: string; bitmap: string }[] {
    return checkpointBitmaps(this.get(name));
  }

  /**
   * Deletes one checkpoint with libvirt's semantics: its children are re-parented onto its parent (or become
   * roots), and when it was current its parent becomes current. Other checkpoints' bitmaps are untouched.
   * @throws NotFoundError when there is no such checkpoint.
   */
  remove(name: string): CheckpointRemoval {
    const removed = this.get(name);
    const reparented: Checkpoint[] = [];
    for (const child of this.childrenOf(name)) {
      const { parent: _old, ...rest } = child;
      const moved = freeze(removed.parent === undefined ? rest : { ...rest, parent: removed.parent });
      this.byName.set(child.name, moved);
      reparented.push(moved);
    }
    this.byName.delete(name);
    const currentChanged = this.currentName === name;
    if (currentChanged) this.currentName = removed.parent;
    return { removed, reparented, bitmapsToRemove: checkpointBitmaps(removed), current: this.currentName, currentChanged };
  }

  /** The forest of checkpoints for `checkpoint-list --tree`: roots and children in virsh's order (by name). */
  tree(): CheckpointTreeNode[] {
    const build = (cp: Checkpoint): CheckpointTreeNode => ({ name: cp.name, children: this.childrenOf(cp.name).map(build) });
    return this.roots().map(build);
  }

  private sorted(list: Checkpoint[]): Checkpoint[] {
    return list.sort((a, b) => compareCheckpointNames(a.name, b.name));
  }
}

function freeze(cp: Checkpoint): Checkpoint {
  return Object.freeze({ ...cp, disks: Object.freeze(cp.disks.map((disk) => Object.freeze({ ...disk }))) as Checkpoint['disks'] });
}

/**
 * Prints a checkpoint forest exactly as `virsh checkpoint-list --tree` does (libvirt 9.0's vshTreePrint, with
 * its trailing blank lines), for example `cp0\n  |\n  +- cp1\n    \n\n`.
 */
export function formatCheckpointTree(roots: readonly CheckpointTreeNode[]): string {
  const lines: string[] = [];
  // Mirrors vshTreePrintInternal: `indent` grows by "| " or "  " per level, "  " around the children.
  const print = (node: CheckpointTreeNode, indent: string, root: boolean, last: boolean): void => {
    lines.push(`${indent}${root ? '' : '+- '}${node.name}`);
    let own = indent;
    if (!root) own += last ? '  ' : '| ';
    if (node.children.length > 0) lines.push(`${own}  |`);
    node.children.forEach((child, i) => print(child, `${own}  `, false, i === node.children.length - 1));
    if (node.children.length === 0 && last) lines.push(own);
  };
  for (const root of roots) print(root, '', true, true);
  return `${lines.map((line) => `${line}\n`).join('')}\n`;
}
