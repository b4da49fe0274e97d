// FsObjectStore writes data objects with O_DIRECT through aligned staging buffers, and falls back to the page cache
// where the file system refuses O_DIRECT. Real files, real file systems (the temp dir's, and tmpfs when present).
import { constants } from 'node:fs';
import { open, readdir, stat, writeFile } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { makeTempDir, removeTempDir } from '../../harness/temp-dir.js';
import { FsObjectStore } from '../../../src/repository/store/fs-store.js';
import { AlignedBufferPool, DIRECT_ALIGN, DirectIoUnsupported, readFileDirect, writeFileDirect } from '../../../src/repository/store/direct-io.js';

const MiB = 1024 * 1024;

/** Whether the file system under `dir` accepts an O_DIRECT open (what the store then uses). */
async function acceptsDirectIo(dir: string): Promise<boolean> {
  try {
    const handle = await open(join(dir, '.probe'), constants.O_WRONLY | constants.O_CREAT | constants.O_DIRECT, 0o600);
    await handle.close();
    return true;
  } catch {
    return false;
  }
}

describe('O_DIRECT object writes', () => {
  let dir: string;
  beforeEach(async () => { dir = await makeTempDir('direct'); });
  afterEach(async () => { await removeTempDir(dir); });

  test('staging buffers are page-aligned views of one memory and bounded in number', async () => {
    const pool = new AlignedBufferPool(2, 100_000);
    const a = await pool.acquire();
    const b = await pool.acquire();
    expect(a.buffer).toBe(b.buffer);
    expect([a.byteOffset % DIRECT_ALIGN, b.byteOffset % DIRECT_ALIGN]).toEqual([0, 0]);
    expect(a.length).toBeGreaterThanOrEqual(100_000);
    let third: Buffer | undefined;
    const waiting = pool.acquire().then((s) => { third = s; });
    await new Promise((r) => setImmediate(r));
    expect(third).toBeUndefined();
    pool.release(a);
    await waiting;
    expect(third).toBe(a);
  });

  test('objects of every length round-trip byte for byte, with O_DIRECT where the file system takes it', async () => {
    const direct = await acceptsDirectIo(dir);
    const store = new FsObjectStore(dir);
    // Aligned, unaligned tails, exactly one staging slot, and larger than a slot (several staged writes).
    const sizes = [64 * 1024, 64 * 1024 + 1, 4 * MiB, 4 * MiB + 123, 9 * MiB + 7, 100];
    const objects = sizes.map((n) => randomBytes(n));
    // More puts at once than staging slots: they wait for a slot, nothing mixes.
    await Promise.all(objects.map((data, i) => store.put('c/d', `o${i}`, data)));
    for (const [i, data] of objects.entries()) {
      const back = await store.get('c/d', `o${i}`);
      expect(back.length).toBe(data.length);
      expect(back.equals(data)).toBe(true);
      expect((await stat(join(dir, 'c/d', `o${i}`))).size).toBe(data.length);
    }
    expect(store.directIo).toBe(direct);
    expect((await readdir(join(dir, 'c/d'))).sort()).toEqual(sizes.map((_, i) => `o${i}`).sort());
  });

  test('readFileDirect reads what a buffered write just left in the page cache, at any length', async () => {
    const pool = new AlignedBufferPool(1, MiB);
    for (const n of [0, 1, DIRECT_ALIGN, DIRECT_ALIGN + 1, MiB, 3 * MiB + 17]) {
      const data = randomBytes(n);
      const path = join(dir, `f${n}`);
      await writeFile(path, data); // dirty pages: the direct read must see them
      const back = await readFileDirect(path, pool);
      expect(back.length).toBe(n);
      expect(back.equals(data)).toBe(true);
    }
    await expect(readFileDirect(join(dir, 'missing'), pool)).rejects.toMatchObject({ code: 'ENOENT' });
  });

  test('writeFileDirect refuses to replace an existing file', async () => {
    const path = join(dir, 'x');
    const pool = new AlignedBufferPool(1, MiB);
    await writeFileDirect(path, randomBytes(5000), pool);
    const error = await writeFileDirect(path, randomBytes(5000), pool).catch((e: unknown) => e);
    expect((error as NodeJS.ErrnoException).code).toBe('EEXIST');
    expect((await stat(path)).size).toBe(5000);
  });

  test('where the file system refuses O_DIRECT the store falls back to the page cache for good, leaving no temporary file', async () => {
    // Few file systems refuse O_DIRECT on this kernel (tmpfs takes it since Linux 6.6): the refusal is simulated.
    let calls = 0;
    const store = new FsObjectStore(dir, {
      writeDirect: async () => { calls += 1; throw new DirectIoUnsupported('simulated refusal'); },
    });
    const first = randomBytes(MiB + 5);
    const second = randomBytes(2 * MiB);
    await store.put('c', 'o1', first);
    await store.put('c', 'o2', second);
    expect(calls).toBe(1);
    expect(store.directIo).toBe(false);
    expect((await store.get('c', 'o1')).equals(first)).toBe(true);
    expect((await store.get('c', 'o2')).equals(second)).toBe(true);
    expect((await readdir(join(dir, 'c'))).sort()).toEqual(['o1', 'o2']);
  });

  test('a real write error is not taken for a refusal of O_DIRECT', async () => {
    const store = new FsObjectStore(dir, {
      writeDirect: async () => { throw Object.assign(new Error('no space'), { code: 'ENOSPC' }); },
    });
    const error = await store.put('c', 'o', randomBytes(MiB)).catch((e: unknown) => e);
    expect((error as Error).message).toMatch(/ENOSPC/);
    expect((error as { hint?: string }).hint).toMatch(/free space/);
    expect(store.directIo).toBe(true);
  });
});
