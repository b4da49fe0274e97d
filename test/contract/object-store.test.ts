// Runs the ObjectStore contract against every adapter: posix directory, memory, and S3 on a real Swift (s3api).
import { randomUUID } from 'node:crypto';
import { chmod, mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { makeTempDir, removeTempDir } from '../harness/temp-dir.js';
import { FsObjectStore } from '../../src/repository/store/fs-store.js';
import { MemoryObjectStore } from '../../src/repository/store/memory-store.js';
import { StoreError } from '../../src/repository/store/object-store.js';
import { S3ObjectStore } from '../../src/repository/store/s3-store.js';
import { RetryStore } from '../../src/repository/store/retry-store.js';
import { createBucket, sharedSwift, swiftAvailability } from '../harness/swift.js';
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

const swift = swiftAvailability();
if (swift.ok) {
  /** A fresh prefix of one bucket per test; cleanup removes every key under it. */
  const s3 = (decorate: (store: S3ObjectStore) => import('../../src/repository/store/object-store.js').ObjectStore) => async () => {
    const h = await sharedSwift();
    await createBucket(h, 'fleece-contract');
    const raw = new S3ObjectStore({
      bucket: 'fleece-contract', prefix: `t-${randomUUID()}`, endpoint: h.endpoint, region: h.region,
      credentials: { accessKeyId: h.accessKeyId, secretAccessKey: h.secretAccessKey }, pageSize: 2,
    });
    return {
      store: decorate(raw),
      cleanup: async () => {
        for await (const o of raw.listAll()) await raw.delete(o.container, o.name);
        raw.destroy();
      },
    };
  };
  objectStoreContract('s3 (Swift s3api, 2 keys a list page)', s3((store) => store));
  objectStoreContract('s3 behind the retry decorator', s3((store) => new RetryStore(store)));
} else {
  describe.skip(`ObjectStore contract: s3 (skipped: ${swift.why})`, () => { it('needs Swift', () => undefined); });
}

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
