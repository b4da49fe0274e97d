// CheckpointStore: files in a temp dir, reload by a new store (a restart), corrupt files reported by name.
import { readFile, readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { makeTempDir, removeTempDir } from '../../harness/temp-dir.js';
import { CheckpointChain } from '../../../src/checkpoint/chain.js';
import { parseCheckpointXml } from '../../../src/checkpoint/checkpoint-xml.js';
import type { Checkpoint } from '../../../src/checkpoint/model.js';
import { CheckpointStore } from '../../../src/checkpoint/store.js';
import { IntegrityError, InvalidInputError, NotFoundError } from '../../../src/util/errors.js';

let dir: string;
beforeEach(async () => {
  dir = await makeTempDir('checkpoint-store');
});
afterEach(async () => {
  await removeTempDir(dir);
});

const make = (name: string, parent: string | undefined, time: number): Checkpoint => ({
  name,
  creationTime: time,
  description: `made at ${time} <&>`,
  disks: [{ name: 'vda', checkpoint: 'bitmap', bitmap: name }, { name: 'vdb', checkpoint: 'no' }],
  ...(parent ? { parent } : {}),
});

async function populate(store: CheckpointStore): Promise<CheckpointChain> {
  const chain = new CheckpointChain();
  for (const [i, name] of ['cp0', 'cp1', 'cp2'].entries()) {
    const cp = make(name, chain.current, 1700000000 + i);
    chain.add(cp);
    await store.saveNew('vm1', cp, chain);
  }
  return chain;
}

describe('CheckpointStore', () => {
  it('saves libvirt XML files and loads them back after a restart', async () => {
    const chain = await populate(new CheckpointStore(dir));
    expect((await readdir(join(dir, 'vms', 'vm1', 'checkpoints'))).sort()).toEqual(['cp0.xml', 'cp1.xml', 'cp2.xml']);
    const text = await readFile(join(dir, 'vms', 'vm1', 'checkpoints', 'cp1.xml'), 'utf8');
    expect(text).toContain('<parent>\n    <name>cp0</name>\n  </parent>');
    expect(parseCheckpointXml(text)).toEqual(chain.get('cp1'));

    const restarted = new CheckpointStore(dir);
    const loaded = await restarted.load('vm1');
    expect(loaded.list()).toEqual(chain.list());
    expect(loaded.current).toBe('cp2');
    expect(await restarted.list('vm1')).toEqual(chain.list());
    expect((await restarted.load('other-vm')).size).toBe(0);
  });

  it('persists a removal: re-parented children, current pointer, deleted file', async () => {
    const store = new CheckpointStore(dir);
    const chain = await populate(store);
    await store.saveRemoval('vm1', chain.remove('cp1'));
    await store.saveRemoval('vm1', chain.remove('cp2'));
    const loaded = await new CheckpointStore(dir).load('vm1');
    expect(loaded.list().map((c) => [c.name, c.parent])).toEqual([['cp0', undefined]]);
    expect(loaded.current).toBe('cp0');
    await store.saveRemoval('vm1', chain.remove('cp0'));
    const empty = await new CheckpointStore(dir).load('vm1');
    expect(empty.size).toBe(0);
    expect(empty.current).toBeUndefined();
    await expect(store.delete('vm1', 'cp0')).rejects.toThrow(NotFoundError);
  });

  it('reports a corrupt file by name', async () => {
    const store = new CheckpointStore(dir);
    await populate(store);
    const file = join(dir, 'vms', 'vm1', 'checkpoints', 'cp1.xml');
    await writeFile(file, '<domaincheckpoint><name>cp1</name>');
    const error = await store.load('vm1').catch((e: unknown) => e);
    expect(error).toBeInstanceOf(IntegrityError);
    expect((error as Error).message).toContain(`checkpoint file ${file} is corrupt`);
    expect((error as Error).message).toContain('not well-formed XML');
  });

  it('reports a file whose checkpoint name differs, a dangling parent and a bad current pointer', async () => {
    const store = new CheckpointStore(dir);
    await populate(store);
    const cpDir = join(dir, 'vms', 'vm1', 'checkpoints');
    await writeFile(join(cpDir, 'cpX.xml'), await readFile(join(cpDir, 'cp0.xml')));
    await expect(store.load('vm1')).rejects.toThrow(`checkpoint file ${join(cpDir, 'cpX.xml')} is corrupt: it defines checkpoint 'cp0' but is named cpX.xml`);
    await writeFile(join(cpDir, 'cpX.xml'), '<domaincheckpoint><name>cpX</name><parent><name>gone</name></parent><creationTime>5</creationTime></domaincheckpoint>');
    await expect(store.load('vm1')).rejects.toThrow("checkpoint 'cpX' names parent 'gone', which does not exist");
    await writeFile(join(cpDir, 'cpX.xml'), '<domaincheckpoint><name>cpX</name></domaincheckpoint>');
    await expect(store.load('vm1')).rejects.toThrow('<creationTime> is missing');
    await store.delete('vm1', 'cpX');
    await writeFile(join(dir, 'vms', 'vm1', 'current-checkpoint'), 'no/such\n');
    await expect(store.load('vm1')).rejects.toThrow(`the current-checkpoint file ${join(dir, 'vms', 'vm1', 'current-checkpoint')} is corrupt`);
    await writeFile(join(dir, 'vms', 'vm1', 'current-checkpoint'), 'cp9\n');
    await expect(store.load('vm1')).rejects.toThrow(IntegrityError);
  });

  it('refuses VM and checkpoint names that would escape the state directory', async () => {
    const store = new CheckpointStore(dir);
    expect(() => store.vmDir('../etc')).toThrow(InvalidInputError);
    expect(() => store.checkpointFile('vm1', '../x')).toThrow(InvalidInputError);
    await expect(store.save('vm1', make('..', undefined, 1))).rejects.toThrow(InvalidInputError);
  });
});
