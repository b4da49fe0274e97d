// Writer lifecycle: abort leaves no _metadata and removes objects; extents out of order are refused; the JSON writer matches Python's.
import { MemoryObjectStore } from '../../../src/repository/store/memory-store.js';
import { StoreError } from '../../../src/repository/store/object-store.js';
import { openRepository } from '../../../src/repository/repository.js';
import { pythonJsonDumps } from '../../../src/repository/format/python-json.js';
import { pythonDatetimeString, objectPrefix, containerFor } from '../../../src/repository/format/naming.js';
import { mixedDisk, wholeDisk } from './disk-images.js';

it('abort leaves no _metadata, removes written objects, and later calls fail', async () => {
  const store = new MemoryObjectStore();
  const repo = await openRepository(store);
  const size = 4 << 20;
  const w = await repo.startBackup({ volumeId: 'v', size, chunkSize: 256 * 1024, workers: 1, compression: 'none' });
  const extents = wholeDisk(mixedDisk(size, 4), 512 * 1024);
  for (const e of extents.slice(0, 4)) await w.write(e);
  await w.abort(new Error('user cancelled'));
  expect(await store.list(w.container)).toEqual([]);
  expect(w.leftBehind.objects).toEqual([]);
  expect(await repo.list()).toEqual([]);
  await expect(w.write(extents[4]!)).rejects.toThrow(/aborted/);
  await expect(w.finish()).rejects.toThrow(/aborted/);
});

it('abort says how many objects it could not remove when the store fails its deletes (and stops trying after the first)', async () => {
  const store = new MemoryObjectStore();
  const repo = await openRepository(store);
  const size = 4 << 20;
  const w = await repo.startBackup({ volumeId: 'v', size, chunkSize: 256 * 1024, workers: 1, compression: 'none' });
  for (const e of wholeDisk(mixedDisk(size, 5), 512 * 1024).slice(0, 4)) await w.write(e);
  let deletes = 0;
  store.delete = async () => { deletes += 1; throw new Error('the store went away'); };
  await w.abort(new Error('the store went away'));
  const stored = (await store.list(w.container)).length; // the data objects and the lease, all still there
  expect(stored).toBeGreaterThan(2);
  expect(w.leftBehind.objects.length).toBeGreaterThanOrEqual(stored);
  expect(deletes).toBe(1);
  expect(await repo.list()).toEqual([]);
});

it('an AbortSignal aborts a running backup', async () => {
  const store = new MemoryObjectStore();
  const repo = await openRepository(store);
  const ac = new AbortController();
  const w = await repo.startBackup({ volumeId: 'v', size: 1 << 20, workers: 1, signal: ac.signal });
  await w.write({ offset: 0, length: 4096, data: Buffer.alloc(4096, 1) });
  ac.abort();
  await expect(w.finish()).rejects.toThrow(/aborted/);
  expect(await repo.list()).toEqual([]);
});

it('refuses extents out of order or outside the disk', async () => {
  const repo = await openRepository(new MemoryObjectStore());
  const w = await repo.startBackup({ volumeId: 'v', size: 1 << 20, workers: 1 });
  await w.write({ offset: 8192, length: 10, data: Buffer.alloc(10, 1) });
  await expect(w.write({ offset: 0, length: 10, data: Buffer.alloc(10, 1) })).rejects.toThrow(/ascending/);
  await expect(w.write({ offset: (1 << 20) - 5, length: 10, data: Buffer.alloc(10, 1) })).rejects.toThrow(/outside the disk/);
  await w.abort();
});

it('writes JSON and names as Python and Cinder do', () => {
  expect(pythonJsonDumps({ b: [1, { z: null, a: 'é"\n' }], a: [], c: {} }))
    .toBe('{\n  "a": [],\n  "b": [\n    1,\n    {\n      "a": "\\u00e9\\"\\n",\n      "z": null\n    }\n  ],\n  "c": {}\n}');
  expect(pythonDatetimeString(new Date(Date.UTC(2026, 10, 23, 4, 10, 0, 123)))).toBe('2026-11-23 04:10:00.123000');
  expect(pythonDatetimeString(new Date(Date.UTC(2026, 10, 23, 4, 10, 0, 0)))).toBe('2026-11-23 04:10:00');
  expect(objectPrefix('vol-1', new Date(Date.UTC(2026, 0, 2, 3, 4, 5)), 'abcd-ef')).toBe('volume_vol-1_20260102030405_backup_abcd-ef');
  expect(containerFor('abcdef12-0000')).toBe('ab/cd/abcdef12-0000');
});

/** A store whose puts fail after `goodPuts` (ENOSPC), and whose deletes or container syncs fail (EIO) when asked. */
class FailingStore extends MemoryObjectStore {
  puts = 0;
  constructor(private readonly goodPuts: number, private readonly fail: { deletes?: boolean; sync?: boolean }) {
    super();
  }
  override async put(...args: Parameters<MemoryObjectStore['put']>): Promise<void> {
    if (++this.puts > this.goodPuts) throw new StoreError('no space left', { errno: 'ENOSPC' });
    return super.put(...args);
  }
  override async delete(...args: Parameters<MemoryObjectStore['delete']>): Promise<boolean> {
    // as a file system: removing what is not there is no error (a put that failed left nothing)
    if (this.fail.deletes && await super.exists(args[0], args[1])) throw new StoreError('delete: I/O error', { errno: 'EIO' });
    return super.delete(...args);
  }
  async syncContainer(): Promise<void> {
    if (this.fail.sync) throw new StoreError('sync: I/O error', { errno: 'EIO' });
  }
}

describe('a failed backup says what it could not remove for sure (leftBehind)', () => {
  const run = async (store: FailingStore) => {
    const repo = await openRepository(store);
    const w = await repo.startBackup({ volumeId: 'v', size: 4 << 20, chunkSize: 256 * 1024, workers: 1, compression: 'none' });
    await expect((async () => {
      for (const e of wholeDisk(mixedDisk(4 << 20, 4), 256 * 1024)) await w.write(e);
      await w.finish();
    })()).rejects.toThrow(/no space left/);
    await w.abort();
    return w;
  };

  it('nothing when its deletes and the container sync worked', async () => {
    const store = new FailingStore(4, {});
    const w = await run(store);
    expect(w.leftBehind.objects).toEqual([]);
    expect(await store.list(w.container)).toEqual([]);
  });

  it('the objects whose delete failed, with the error', async () => {
    const store = new FailingStore(4, { deletes: true });
    const w = await run(store);
    const left = (await store.list(w.container)).map((o) => o.name);
    expect(left.length).toBeGreaterThan(0);
    // Every object still there, the lease too (after the first failed delete the rest are not tried: a superset)
    expect(left.filter((name) => !w.leftBehind.objects.includes(name))).toEqual([]);
    expect(String(w.leftBehind.error)).toMatch(/I\/O error/);
  });

  it('everything it wrote (and its lease) when the container sync after the deletes failed', async () => {
    const store = new FailingStore(4, { sync: true });
    const w = await run(store);
    expect(await store.list(w.container)).toEqual([]);
    // the 4 puts that worked (the lease, 3 objects), not those that failed
    expect(w.leftBehind.objects).toHaveLength(4);
    expect(w.leftBehind.objects.some((name) => name.startsWith('fleece_lease_'))).toBe(true);
  });
});
