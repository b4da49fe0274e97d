// The retry decorator: transient failures are retried with capped, jittered backoff; 4xx, missing objects and aborts never.
import { jest } from '@jest/globals';
import { MemoryObjectStore } from '../../../src/repository/store/memory-store.js';
import { RetryStore, withRetry } from '../../../src/repository/store/retry-store.js';
import { ObjectNotFoundError, type ObjectStore } from '../../../src/repository/store/object-store.js';
import { S3StoreError } from '../../../src/repository/store/s3-store.js';
import { AbortedError } from '../../../src/util/errors.js';

const transient = () => new S3StoreError('the server answered 503 SlowDown', { status: 503, s3Code: 'SlowDown', transient: true });
const final = () => new S3StoreError('access denied', { status: 403, s3Code: 'AccessDenied' });
const policy = { attempts: 4, baseDelayMs: 1, maxDelayMs: 4 };

/** A memory store whose next `failures` calls of `method` throw `make()`. */
function flaky(method: keyof ObjectStore, failures: number, make: () => Error): { store: ObjectStore; calls: () => number } {
  const inner = new MemoryObjectStore();
  let calls = 0;
  const store = new Proxy(inner, {
    get(target, key, receiver) {
      const value = Reflect.get(target, key, receiver) as unknown;
      if (key !== method || typeof value !== 'function') return value;
      return (...args: unknown[]) => {
        calls += 1;
        if (calls <= failures) {
          if (method === 'getStream') return (async function* () { throw make(); })();
          return Promise.reject(make());
        }
        return (value as (...a: unknown[]) => unknown).apply(target, args);
      };
    },
  });
  return { store, calls: () => calls };
}

describe('RetryStore', () => {
  it('retries transient failures of replayable calls until they succeed', async () => {
    const { store, calls } = flaky('put', 2, transient);
    await new RetryStore(store, policy).put('c', 'o', Buffer.from('x'));
    expect(calls()).toBe(3);
    expect((await store.get('c', 'o')).toString()).toBe('x');
  });

  it('gives up after the policy\'s attempts with the last error', async () => {
    const { store, calls } = flaky('list', 10, transient);
    await expect(new RetryStore(store, policy).list('c')).rejects.toMatchObject({ s3Code: 'SlowDown' });
    expect(calls()).toBe(4);
  });

  it('never retries a 4xx or a missing object', async () => {
    const denied = flaky('get', 10, final);
    await expect(new RetryStore(denied.store, policy).get('c', 'o')).rejects.toMatchObject({ s3Code: 'AccessDenied' });
    expect(denied.calls()).toBe(1);
    const missing = new RetryStore(new MemoryObjectStore(), policy);
    await expect(missing.get('c', 'nope')).rejects.toBeInstanceOf(ObjectNotFoundError);
  });

  it('retries a stream until its first piece', async () => {
    const { store, calls } = flaky('getStream', 1, transient);
    await store.put('c', 'o', Buffer.from('abc'));
    const pieces: Buffer[] = [];
    for await (const p of new RetryStore(store, policy).getStream('c', 'o')) pieces.push(p);
    expect(Buffer.concat(pieces).toString()).toBe('abc');
    expect(calls()).toBe(2);
  });

  it('passes a streamed put through once (it cannot be replayed)', async () => {
    const { store, calls } = flaky('put', 1, transient);
    async function* body() { yield Buffer.from('x'); }
    await expect(new RetryStore(store, policy).put('c', 'o', body())).rejects.toMatchObject({ transient: true });
    expect(calls()).toBe(1);
  });
});

describe('withRetry', () => {
  it('waits a jittered, capped, growing delay between tries', async () => {
    const delays: number[] = [];
    const realSetTimeout = global.setTimeout;
    const spy = jest.spyOn(global, 'setTimeout').mockImplementation(((fn: () => void, ms?: number) => { delays.push(ms ?? 0); return realSetTimeout(fn, 0); }) as typeof setTimeout);
    try {
      let n = 0;
      await withRetry('x', async () => { if (++n < 6) throw transient(); return n; }, { attempts: 6, baseDelayMs: 100, maxDelayMs: 300, random: () => 0.999 });
      expect(delays).toEqual([99, 199, 299, 299, 299]);
    } finally {
      spy.mockRestore();
    }
  });

  it('stops waiting when the signal fires', async () => {
    const ac = new AbortController();
    const run = withRetry('x', async () => { throw transient(); }, { attempts: 5, baseDelayMs: 10_000, maxDelayMs: 10_000, random: () => 1 }, ac.signal);
    setTimeout(() => ac.abort(), 10);
    await expect(run).rejects.toBeInstanceOf(AbortedError);
  });
});
