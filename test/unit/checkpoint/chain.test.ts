// CheckpointChain: libvirt's parent/current/delete semantics and virsh's tree output (goldens from virsh 9.0).
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { CheckpointChain, formatCheckpointTree } from '../../../src/checkpoint/chain.js';
import type { Checkpoint } from '../../../src/checkpoint/model.js';
import { ConflictError, InvalidInputError, NotFoundError } from '../../../src/util/errors.js';

const golden = (name: string): string => readFileSync(join(process.cwd(), 'fixtures', 'libvirt-xml', 'virsh', name), 'utf8');

let clock = 1700000000;
function cp(name: string, parent?: string, disks = ['vda']): Checkpoint {
  clock += 10;
  return { name, creationTime: clock, disks: disks.map((disk) => ({ name: disk, checkpoint: 'bitmap', bitmap: name })), ...(parent ? { parent } : {}) };
}

/** Creates checkpoints one after the other, each child of the current one (as checkpoint-create does). */
function linear(names: string[], disks?: string[]): CheckpointChain {
  const chain = new CheckpointChain();
  for (const name of names) chain.add(cp(name, chain.current, disks));
  return chain;
}

/** The chain of fixtures/libvirt-xml/virsh/tree-branching.txt (made with checkpoint-create --redefine). */
function branching(): CheckpointChain {
  return CheckpointChain.from([cp('r1', 'r0'), cp('cp5', 'cp2'), cp('cp0'), cp('cp1', 'cp0'), cp('cp2', 'cp1'), cp('cp3', 'cp1'), cp('cp4', 'cp0'), cp('r0')], 'cp2');
}

describe('CheckpointChain', () => {
  it('makes each new checkpoint current and the parent of the next', () => {
    const chain = linear(['cp0', 'cp1', 'cp2']);
    expect(chain.current).toBe('cp2');
    expect(chain.parentOf('cp2')?.name).toBe('cp1');
    expect(chain.parentOf('cp0')).toBeUndefined();
    expect(chain.list().map((c) => c.name)).toEqual(['cp0', 'cp1', 'cp2']);
    expect(chain.roots().map((c) => c.name)).toEqual(['cp0']);
    expect(chain.leaves().map((c) => c.name)).toEqual(['cp2']);
    expect(chain.descendants('cp0').map((c) => c.name)).toEqual(['cp1', 'cp2']);
    expect(chain.ancestors('cp2').map((c) => c.name)).toEqual(['cp1', 'cp0']);
  });

  it('refuses duplicates, missing parents and bad names', () => {
    const chain = linear(['cp0']);
    expect(() => chain.add(cp('cp0'))).toThrow(ConflictError);
    expect(() => chain.add(cp('cp0'))).toThrow("checkpoint 'cp0' already exists");
    expect(() => chain.add(cp('cp1', 'nope'))).toThrow(NotFoundError);
    expect(() => chain.add(cp('a/b'))).toThrow(InvalidInputError);
    expect(() => chain.get('zz')).toThrow("checkpoint 'zz' does not exist (checkpoints: cp0)");
    expect(chain.size).toBe(1);
  });

  it('builds from any order and refuses dangling parents and cycles', () => {
    expect(branching().size).toBe(8);
    expect(() => CheckpointChain.from([cp('a', 'b')])).toThrow("checkpoint 'a' names parent 'b', which does not exist");
    expect(() => CheckpointChain.from([cp('a', 'b'), cp('b', 'a')])).toThrow('checkpoints a, b form a parent cycle');
    expect(() => CheckpointChain.from([cp('a'), cp('a')])).toThrow("checkpoint 'a' is defined twice");
    expect(() => CheckpointChain.from([cp('a')], 'b')).toThrow(NotFoundError);
  });

  it('prints the tree exactly as virsh checkpoint-list --tree', () => {
    expect(formatCheckpointTree(linear(['cp0', 'cp1', 'cp2']).tree())).toBe(golden('tree-linear.txt'));
    expect(formatCheckpointTree(new CheckpointChain().tree())).toBe(golden('tree-empty.txt'));
    const chain = branching();
    expect(chain.tree()).toEqual([
      { name: 'cp0', children: [{ name: 'cp1', children: [{ name: 'cp2', children: [{ name: 'cp5', children: [] }] }, { name: 'cp3', children: [] }] }, { name: 'cp4', children: [] }] },
      { name: 'r0', children: [{ name: 'r1', children: [] }] },
    ]);
    expect(formatCheckpointTree(chain.tree())).toBe(golden('tree-branching.txt'));
    chain.remove('cp1');
    expect(formatCheckpointTree(chain.tree())).toBe(golden('tree-after-delete-cp1.txt'));
    chain.remove('cp0');
    expect(formatCheckpointTree(chain.tree())).toBe(golden('tree-after-delete-cp0.txt'));
  });

  it('sorts siblings by name without case, as virsh does', () => {
    const chain = linear(['root']);
    for (const name of ['b2', 'B1', 'a3']) chain.add(cp(name, 'root'), { makeCurrent: false });
    expect(chain.childrenOf('root').map((c) => c.name)).toEqual(['a3', 'B1', 'b2']);
    expect(chain.current).toBe('root');
  });

  // Captures 07-09: cp0 <- cp1 <- cp2 <- cp3; delete cp1 (middle), cp3 (leaf), cp0 (root); each removes one bitmap.
  it('deletes a middle, a leaf and a root checkpoint as libvirt does', () => {
    const chain = linear(['cp0', 'cp1', 'cp2', 'cp3'], ['vda']);
    const held = chain.get('cp2');

    const middle = chain.remove('cp1');
    expect(middle.bitmapsToRemove).toEqual([{ disk: 'vda', bitmap: 'cp1' }]);
    expect(middle.reparented.map((c) => [c.name, c.parent])).toEqual([['cp2', 'cp0']]);
    expect(middle.currentChanged).toBe(false);
    expect(chain.parentOf('cp2')?.name).toBe('cp0');
    expect(held.parent).toBe('cp1'); // objects handed out are never changed

    const leaf = chain.remove('cp3');
    expect(leaf.bitmapsToRemove).toEqual([{ disk: 'vda', bitmap: 'cp3' }]);
    expect(leaf.reparented).toEqual([]);
    expect(leaf).toMatchObject({ current: 'cp2', currentChanged: true });

    const root = chain.remove('cp0');
    expect(root.bitmapsToRemove).toEqual([{ disk: 'vda', bitmap: 'cp0' }]);
    expect(root.reparented).toEqual([{ name: 'cp2', creationTime: held.creationTime, disks: held.disks }]);
    expect(chain.roots().map((c) => c.name)).toEqual(['cp2']);
    expect(chain.list().map((c) => c.name)).toEqual(['cp2']);
    expect(chain.current).toBe('cp2');
  });

  it('moves current to the parent when the current checkpoint is deleted, and to none at a root', () => {
    const chain = linear(['cp0', 'cp1', 'cp2']);
    chain.remove('cp2');
    expect(chain.current).toBe('cp1');
    chain.add(cp('cp4', chain.current));
    expect(chain.parentOf('cp4')?.name).toBe('cp1');
    const single = linear(['only']);
    expect(single.remove('only')).toMatchObject({ current: undefined, currentChanged: true });
    expect(single.current).toBeUndefined();
  });

  it('lists only the deleted checkpoint bitmaps, per disk, skipping checkpoint=no disks', () => {
    const chain = new CheckpointChain();
    chain.add({ name: 'cp0', creationTime: 1, disks: [{ name: 'vda', checkpoint: 'bitmap', bitmap: 'cp0' }, { name: 'vdb', checkpoint: 'no' }, { name: 'vdc', checkpoint: 'bitmap', bitmap: 'custom' }] });
    chain.add({ name: 'cp1', parent: 'cp0', creationTime: 2, disks: [{ name: 'vda', checkpoint: 'bitmap', bitmap: 'cp1' }] });
    expect(chain.bitmapsToRemove('cp0')).toEqual([{ disk: 'vda', bitmap: 'cp0' }, { disk: 'vdc', bitmap: 'custom' }]);
    expect(chain.remove('cp0').bitmapsToRemove).toEqual([{ disk: 'vda', bitmap: 'cp0' }, { disk: 'vdc', bitmap: 'custom' }]);
  });
});
