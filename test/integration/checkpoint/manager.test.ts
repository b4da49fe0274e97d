import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from '@jest/globals';
import { CheckpointManager, CheckpointUnusableError } from '../../../src/checkpoint/manager.js';
import { CheckpointStore } from '../../../src/checkpoint/store.js';
import { removeBitmap, queryBitmaps } from '../../../src/qemu/bitmaps.js';
import { createDisk, startQemuSystem, type DiskSpec, type QemuInstance } from '../../harness/qemu.js';
import { makeTempDir, removeTempDir } from '../../harness/temp-dir.js';

const MiB = 1024 * 1024;
const KiB = 1024;

/** Bytes a set of writes dirties at a granularity: the union of the clusters they touch. */
function dirtyBytes(writes: Array<[offset: number, length: number]>, granularity: number): number {
  const clusters = new Set<number>();
  for (const [offset, length] of writes) {
    for (let c = Math.floor(offset / granularity); c * granularity < offset + length; c++) clusters.add(c);
  }
  return clusters.size * granularity;
}

function sizesOf(xml: string): Record<string, number> {
  const out: Record<string, number> = {};
  for (const m of xml.matchAll(/<disk name='([^']+)'[^>]*size='(\d+)'/g)) out[m[1]!] = Number(m[2]);
  return out;
}

describe('CheckpointManager on qemu-system-x86_64 (vda qcow2 + vdb raw)', () => {
  let dir: string;
  let qemu: QemuInstance | undefined;
  let disks: DiskSpec[];

  async function start(): Promise<QemuInstance> {
    qemu = await startQemuSystem({ disks, dir });
    return qemu;
  }

  async function setUp(): Promise<{ qemu: QemuInstance; store: CheckpointStore; manager: CheckpointManager }> {
    dir = await makeTempDir('cpm');
    disks = [
      { path: join(dir, 'vda.qcow2'), format: 'qcow2', target: 'vda' },
      { path: join(dir, 'vdb.raw'), format: 'raw', target: 'vdb' },
    ];
    await createDisk(disks[0]!.path, { size: 32 * MiB, format: 'qcow2' });
    await createDisk(disks[1]!.path, { size: 8 * MiB, format: 'raw' });
    const q = await start();
    const store = new CheckpointStore(join(dir, 'state'));
    return { qemu: q, store, manager: new CheckpointManager({ qmp: q.client, store, vm: 'vm1' }) };
  }

  afterEach(async () => {
    try {
      await qemu?.stop();
    } finally {
      qemu = undefined;
      await removeTempDir(dir);
    }
  });

  it('create → guest writes → dumpXml --size equals the written bytes rounded to the granularity; no temporary bitmap left', async () => {
    const { qemu: q, manager } = await setUp();
    const cp0 = await manager.create('cp0');
    expect(cp0.disks).toEqual([
      { name: 'vda', checkpoint: 'bitmap', bitmap: 'cp0' },
      { name: 'vdb', checkpoint: 'no' },
    ]);
    expect((await queryBitmaps(q.client)).get('disk-vda')!.map((b) => [b.name, b.persistent, b.recording])).toEqual([
      ['cp0', true, true],
    ]);
    const writes: Array<[number, number]> = [
      [1 * MiB, 64 * KiB],
      [3 * MiB + 4 * KiB, 100 * KiB],
      [3 * MiB + 80 * KiB, 10 * KiB],
    ];
    for (const [offset, length] of writes) await q.guestWrite('vda', `write -P 0x33 ${offset} ${length}`);
    const granularity = (await queryBitmaps(q.client)).get('disk-vda')![0]!.granularity;
    const xml = await manager.dumpXml('cp0', { size: true });
    expect(sizesOf(xml)).toEqual({ vda: dirtyBytes(writes, granularity) });
    expect(xml).toContain("<disk name='vdb' checkpoint='no'/>");
    expect((await queryBitmaps(q.client)).get('disk-vda')!.map((b) => b.name)).toEqual(['cp0']);

    const cp1 = await manager.create('cp1');
    expect(cp1.parent).toBe('cp0');
    await q.guestWrite('vda', 'write -P 0x44 10M 64k');
    const both = [...writes, [10 * MiB, 64 * KiB] as [number, number]];
    expect(await manager.dirtySizes('cp1')).toEqual({ vda: 64 * KiB });
    expect(await manager.dirtySizes('cp0')).toEqual({ vda: dirtyBytes(both, granularity) });
  });

  it('delete middle, leaf and root: only those bitmaps go, the others stay valid, the chain re-parents', async () => {
    const { qemu: q, manager } = await setUp();
    for (const [i, name] of ['cp0', 'cp1', 'cp2', 'cp3'].entries()) {
      await manager.create(name);
      await q.guestWrite('vda', `write -P 0x5${i} ${i * MiB} 64k`);
    }
    const bitmapNames = async (): Promise<string[]> =>
      (await queryBitmaps(q.client)).get('disk-vda')!.map((b) => b.name).sort();
    const sizesBefore = { cp0: await manager.dirtySizes('cp0'), cp2: await manager.dirtySizes('cp2') };

    await manager.delete('cp1');
    expect(await bitmapNames()).toEqual(['cp0', 'cp2', 'cp3']);
    expect((await manager.get('cp2')).parent).toBe('cp0');
    await manager.delete('cp3');
    expect(await bitmapNames()).toEqual(['cp0', 'cp2']);
    expect(await manager.current()).toBe('cp2');
    await manager.delete('cp0');
    expect(await bitmapNames()).toEqual(['cp2']);
    expect((await manager.get('cp2')).parent).toBeUndefined();

    expect(await manager.validate()).toEqual([
      { name: 'cp2', valid: true, disks: [{ checkpoint: 'cp2', disk: 'vda', bitmap: 'cp2', node: 'disk-vda', state: 'ok' }] },
    ]);
    // the remaining bitmap still holds what it recorded
    expect(await manager.dirtySizes('cp2')).toEqual(sizesBefore.cp2);
    expect(sizesBefore.cp0.vda).toBe(4 * 64 * KiB);
  });

  it('redefine after the state dir was wiped restores the listing', async () => {
    const { qemu: q, store, manager } = await setUp();
    await manager.create({ name: 'cp0', description: 'first', disks: [] });
    await manager.create('cp1');
    const xmls = [await manager.dumpXml('cp0'), await manager.dumpXml('cp1')];
    const before = await manager.list();
    await rm(store.stateDir, { recursive: true, force: true });
    expect(await manager.list()).toEqual([]);
    const fresh = new CheckpointManager({ qmp: q.client, store: new CheckpointStore(store.stateDir), vm: 'vm1' });
    for (const xml of xmls) await fresh.redefine(xml);
    expect(await fresh.list()).toEqual(before);
    expect(await fresh.current()).toBe('cp1');
    expect((await fresh.validate()).every((c) => c.valid)).toBe(true);
    // a checkpoint whose bitmap is not in QEMU cannot be redefined
    await expect(fresh.redefine(xmls[1]!.replace(/cp1/g, 'cp9'))).rejects.toThrow(/cp9.*no bitmap cp9 on node disk-vda/);
  });

  it('checkpoints survive a QEMU restart on the same images (persistent bitmaps)', async () => {
    const { qemu: q, store, manager } = await setUp();
    await manager.create('cp0');
    await q.guestWrite('vda', 'write -P 0x66 5M 192k');
    await manager.create('cp1');
    await q.guestWrite('vda', 'write -P 0x67 7M 64k');
    const sizes = { cp0: await manager.dirtySizes('cp0'), cp1: await manager.dirtySizes('cp1') };
    await q.stop();
    qemu = undefined;
    const q2 = await start();
    const again = new CheckpointManager({ qmp: q2.client, store, vm: 'vm1' });
    expect((await again.list()).map((c) => c.name)).toEqual(['cp0', 'cp1']);
    const checks = await again.validate();
    expect(checks.map((c) => [c.name, c.valid])).toEqual([
      ['cp0', true],
      ['cp1', true],
    ]);
    expect({ cp0: await again.dirtySizes('cp0'), cp1: await again.dirtySizes('cp1') }).toEqual(sizes);
    expect(sizes).toEqual({ cp0: { vda: 256 * KiB }, cp1: { vda: 64 * KiB } });
  });

  it('a bitmap removed behind fleece\'s back: validate reports missing, ensureUsable throws naming it', async () => {
    const { qemu: q, manager } = await setUp();
    await manager.create('cp0');
    await manager.create('cp1');
    await removeBitmap(q.client, { node: 'disk-vda', name: 'cp1' });
    const checks = await manager.validate();
    expect(checks).toEqual([
      { name: 'cp0', valid: true, disks: [{ checkpoint: 'cp0', disk: 'vda', bitmap: 'cp0', node: 'disk-vda', state: 'ok' }] },
      { name: 'cp1', valid: false, disks: [{ checkpoint: 'cp1', disk: 'vda', bitmap: 'cp1', node: 'disk-vda', state: 'missing' }] },
    ]);
    await expect(manager.ensureUsable('cp0')).resolves.toMatchObject({ valid: true });
    const error = await manager.ensureUsable('cp1').catch((e: unknown) => e);
    expect(error).toBeInstanceOf(CheckpointUnusableError);
    expect((error as CheckpointUnusableError).message).toMatch(/checkpoint cp1 .*disk vda.*bitmap cp1 on node disk-vda does not exist.*missing/);
    expect((error as CheckpointUnusableError).state).toBe('missing');
    // deleting it still works (its bitmap is already gone) and leaves cp0 alone
    await manager.delete('cp1');
    expect((await queryBitmaps(q.client)).get('disk-vda')!.map((b) => b.name)).toEqual(['cp0']);
  });

  it('refuses a duplicate name and a bitmap on the raw disk, touching nothing', async () => {
    const { qemu: q, manager } = await setUp();
    await manager.create('cp0');
    await expect(manager.create('cp0')).rejects.toThrow(/already exists/);
    await expect(manager.create('cpx', { disks: ['vdb'] })).rejects.toThrow(/vdb.*raw.*cannot hold persistent bitmaps/);
    expect((await queryBitmaps(q.client)).get('disk-vda')!.map((b) => b.name)).toEqual(['cp0']);
    expect((await manager.list()).map((c) => c.name)).toEqual(['cp0']);
  });
});
