// Runs the ObjectStore contract against every adapter: posix directory and memory.
import { chmod, mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { makeTempDir, removeTempDir } from '../harness/temp-dir.js';
import { FsObjectStore } from '../../src/repository/store/fs-store.js';
import { MemoryObjectStore } from '../../src/repository/store/memory-store.js';
import { StoreError } from '../../src/repository/store/object-store.js';
import { objectStoreContract } from './object-store.contract.js';

objectStoreContract('memory', async () => ({ store: new MemoryObjectStore(), cleanup: async () => {} }));

objectStoreContract('posix', async () => {
  const dir = await makeTempDir('store');
  return { store: new FsObjectStore(dir), cleanup: () => removeTempDir(dir) };
});

objectStoreContract('posix, buffered (no O_DIRECT)', async () => {
  const dir = await makeTempDir('store');
  return { store: new FsObjectStore(dir, { directIo: false }), cleanup: () => removeTempDir(dir) };
});

describe('posix store specifics', () => {
  it('an unwritable directory fails with StoreError naming the object and the repository', async () => {
    if (process.getuid?.() === 0) {
      // root ignores permissions: a file where a directory should be gives ENOTDIR instead
      const dir = await makeTempDir('store');
      try {
        const store = new FsObjectStore(join(dir, 'file'));
        await (await import('node:fs/promises')).writeFile(join(dir, 'file'), 'x');
        const error = await store.put('c', 'o', Buffer.from('1')).catch((e: unknown) => e);
        expect(error).toBeInstanceOf(StoreError);
        expect((error as StoreError).code).toBe('STORE');
        expect((error as StoreError).message).toContain('c/o');
        expect((error as StoreError).message).toContain(join(dir, 'file'));
      } finally {
        await removeTempDir(dir);
      }
      return;
    }
    const dir = await makeTempDir('store');
    await mkdir(join(dir, 'c'));
    await chmod(join(dir, 'c'), 0o500);
    try {
      const error = await new FsObjectStore(dir).put('c', 'o', Buffer.from('1')).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(StoreError);
      expect((error as StoreError).errno).toBe('EACCES');
    } finally {
      await chmod(join(dir, 'c'), 0o700);
      await removeTempDir(dir);
    }
  });
});
