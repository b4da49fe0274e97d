// The ObjectStore contract (object-store.ts), as one suite any adapter runs (restic's backend test suite pattern).
import type { ObjectStore } from '../../src/repository/store/object-store.js';
import { ObjectNotFoundError, StoreError } from '../../src/repository/store/object-store.js';

export function objectStoreContract(name: string, make: () => Promise<{ store: ObjectStore; cleanup: () => Promise<void> }>): void {
  describe(`ObjectStore contract: ${name}`, () => {
    let store: ObjectStore;
    let cleanup: () => Promise<void>;
    beforeEach(async () => { ({ store, cleanup } = await make()); });
    afterEach(async () => { await cleanup(); });

    it('put then get returns the same bytes; put replaces', async () => {
      const data = Buffer.from('hello object');
      await store.put('ab/cd/abcd-1', 'obj-00001', data);
      expect(await store.get('ab/cd/abcd-1', 'obj-00001')).toEqual(data);
      await store.put('ab/cd/abcd-1', 'obj-00001', Buffer.from('v2'));
      expect((await store.get('ab/cd/abcd-1', 'obj-00001')).toString()).toBe('v2');
    });

    it('put accepts an async iterable', async () => {
      async function* pieces() { yield Buffer.from('a'); yield Buffer.from('bc'); }
      await store.put('c1', 'streamed', pieces());
      expect((await store.get('c1', 'streamed')).toString()).toBe('abc');
    });

    it('get of a missing object throws ObjectNotFoundError naming it', async () => {
      await expect(store.get('c1', 'nope')).rejects.toBeInstanceOf(ObjectNotFoundError);
      await expect(store.get('c1', 'nope')).rejects.toThrow(/c1\/nope/);
    });

    it('getStream yields the same bytes as get, in pieces; a missing object throws ObjectNotFoundError when iterated', async () => {
      const data = Buffer.alloc(3 * 1024 * 1024 + 123);
      for (let i = 0; i < data.length; i += 4096) data.writeUInt32LE(i, i);
      await store.put('c5', 'big', data);
      const pieces: Buffer[] = [];
      for await (const piece of store.getStream('c5', 'big')) pieces.push(Buffer.from(piece));
      expect(pieces.length).toBeGreaterThan(0);
      expect(Buffer.concat(pieces).equals(data)).toBe(true);
      await store.put('c5', 'empty', Buffer.alloc(0));
      const empty: Buffer[] = [];
      for await (const piece of store.getStream('c5', 'empty')) empty.push(piece);
      expect(Buffer.concat(empty).length).toBe(0);
      const drain = async (name: string, signal?: AbortSignal) => { for await (const _ of store.getStream('c5', name, { signal })) { /* read */ } };
      await expect(drain('nope')).rejects.toBeInstanceOf(ObjectNotFoundError);
      await expect(drain('nope')).rejects.toThrow(/c5\/nope/);
      const ac = new AbortController();
      ac.abort();
      await expect(drain('big', ac.signal)).rejects.toThrow(/abort/);
    });

    it('list filters by prefix, sorted, and a missing container lists as empty', async () => {
      for (const n of ['p_b', 'p_a', 'q_c']) await store.put('c2', n, Buffer.from(n));
      expect((await store.list('c2', 'p_')).map((o) => o.name)).toEqual(['p_a', 'p_b']);
      const all = await store.list('c2');
      expect(all.map((o) => [o.name, o.size])).toEqual([['p_a', 3], ['p_b', 3], ['q_c', 3]]);
      expect(Math.abs(all[0]!.modified.getTime() - Date.now())).toBeLessThan(60_000);
      expect(await store.list('missing/container')).toEqual([]);
    });

    it('delete is idempotent and reports whether the object existed; exists follows', async () => {
      await store.put('c3', 'x', Buffer.from('1'));
      expect(await store.exists('c3', 'x')).toBe(true);
      expect(await store.delete('c3', 'x')).toBe(true);
      expect(await store.delete('c3', 'x')).toBe(false);
      expect(await store.exists('c3', 'x')).toBe(false);
    });

    it('listContainers yields containers holding objects', async () => {
      await store.put('aa/bb/aabb-x', 'o', Buffer.from('1'));
      await store.put('cc/dd/ccdd-y', 'o', Buffer.from('1'));
      const seen: string[] = [];
      for await (const c of store.listContainers()) seen.push(c);
      expect(seen.sort()).toEqual(['aa/bb/aabb-x', 'cc/dd/ccdd-y']);
      await store.delete('aa/bb/aabb-x', 'o');
      const after: string[] = [];
      for await (const c of store.listContainers()) after.push(c);
      expect(after).toEqual(['cc/dd/ccdd-y']);
    });

    it('puts with deferContainerSync are readable at once and syncContainer (when there) succeeds', async () => {
      const big = Buffer.alloc(3 << 20, 7); // more than one write(2) may take
      await store.put('d/e/f', 'o1', big, { deferContainerSync: true });
      await store.put('d/e/f', 'o2', Buffer.from('x'), { deferContainerSync: true });
      await store.syncContainer?.('d/e/f');
      expect((await store.get('d/e/f', 'o1')).equals(big)).toBe(true);
      expect((await store.list('d/e/f')).map((o) => o.name)).toEqual(['o1', 'o2']);
    });

    it('refuses paths that could escape the store', async () => {
      await expect(store.put('../evil', 'o', Buffer.from('1'))).rejects.toBeInstanceOf(StoreError);
      await expect(store.put('c', 'a/b', Buffer.from('1'))).rejects.toBeInstanceOf(StoreError);
      await expect(store.put('c', '.hidden', Buffer.from('1'))).rejects.toBeInstanceOf(StoreError);
    });

    it('an aborted signal stops a put', async () => {
      const ac = new AbortController();
      ac.abort();
      await expect(store.put('c4', 'o', Buffer.from('1'), { signal: ac.signal })).rejects.toThrow(/abort/);
      expect(await store.exists('c4', 'o')).toBe(false);
    });
  });
}
