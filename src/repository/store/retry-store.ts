// RetryStore: retries transient store failures with exponential backoff and full jitter, around any ObjectStore.
import { AbortedError, throwIfAborted } from '../../util/errors.js';
import { getLogger } from '../../util/logger.js';
import type { ListOptions, ObjectInfo, ObjectStore, PutOptions, StoreCallOptions } from './object-store.js';
import { canListAll, type ListedObject, type ListsEverything } from './listing-snapshot.js';

const log = getLogger('repository.retry');

/**
 * How often and how patiently to retry. Attempt n (from 1) that fails transiently waits a random time in
 * [0, min(maxDelayMs, baseDelayMs × 2^(n-1))) before attempt n + 1 ("full jitter": many hosts hitting one bucket
 * do not retry in lockstep).
 */
export interface RetryPolicy {
  /** Tries in all, the first included (1: no retries). */
  attempts: number;
  baseDelayMs: number;
  maxDelayMs: number;
  /** Replaces Math.random (tests). */
  random?: () => number;
}

/** 6 tries over about 6 s at most: a restarting proxy or a throttling burst, not a server that is gone. */
export const DEFAULT_RETRY_POLICY: RetryPolicy = { attempts: 6, baseDelayMs: 200, maxDelayMs: 3000 };

/**
 * Whether a failure is worth another try: errors that say so (`transient: true`: throttling, 5xx, connection
 * resets and refusals, timeouts — the S3 store sets it) and nothing else; a 4xx answer, a missing object, an abort
 * or an integrity error is final.
 */
export function isTransient(error: unknown): boolean {
  return typeof error === 'object' && error !== null && (error as { transient?: unknown }).transient === true;
}

function sleep(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) { reject(new AbortedError('waiting to retry was aborted', { cause: signal.reason })); return; }
    const onAbort = () => { clearTimeout(timer); reject(new AbortedError('waiting to retry was aborted', { cause: signal?.reason })); };
    const timer = setTimeout(() => { signal?.removeEventListener('abort', onAbort); resolve(); }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

/**
 * Runs `fn` until it succeeds, fails with a non-transient error, or the policy's attempts are spent (then the last
 * error is thrown, unchanged). Throws AbortedError when `signal` fires while waiting.
 */
export async function withRetry<T>(what: string, fn: () => Promise<T>, policy: RetryPolicy, signal?: AbortSignal): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    throwIfAborted(signal, what);
    try {
      return await fn();
    } catch (error) {
      if (attempt >= policy.attempts || !isTransient(error) || signal?.aborted) throw error;
      const ceiling = Math.min(policy.maxDelayMs, policy.baseDelayMs * 2 ** (attempt - 1));
      const delay = Math.floor((policy.random ?? Math.random)() * ceiling);
      log.debug({ what, attempt, delay, err: error }, 'transient store failure: retrying');
      await sleep(delay, signal);
    }
  }
}

/**
 * An async iterable that is retried as a whole while it has yielded nothing (opening a stream, the first page of a
 * listing); a failure after the first item is thrown (its items cannot be taken back).
 */
async function* retryIterable<T>(what: string, open: () => AsyncIterable<T>, policy: RetryPolicy, signal?: AbortSignal): AsyncGenerator<T> {
  let iterator!: AsyncIterator<T>;
  const first = await withRetry(what, async () => {
    iterator = open()[Symbol.asyncIterator]();
    return iterator.next();
  }, policy, signal);
  if (first.done) return;
  yield first.value;
  for (;;) {
    const next = await iterator.next();
    if (next.done) return;
    yield next.value;
  }
}

/**
 * The retry decorator (restic's backend/retry): every call whose input can be replayed is retried on transient
 * failures — puts of a buffer, gets, lists, deletes, exists, and streams until their first piece. A put of an async
 * iterable cannot be replayed from here: it goes through once (the S3 store retries each of its parts itself).
 */
export class RetryStore implements ObjectStore, Partial<ListsEverything> {
  readonly location: string;
  readonly listAll?: (options?: StoreCallOptions) => AsyncIterable<ListedObject>;
  readonly listAllTemporary?: (options?: StoreCallOptions) => AsyncIterable<ListedObject>;
  readonly syncContainer?: (container: string, options?: StoreCallOptions) => Promise<void>;

  constructor(readonly inner: ObjectStore, readonly policy: RetryPolicy = DEFAULT_RETRY_POLICY) {
    this.location = inner.location;
    if (canListAll(inner)) {
      this.listAll = (options = {}) => retryIterable('listing the repository', () => inner.listAll(options), policy, options.signal);
      this.listAllTemporary = (options = {}) => retryIterable('listing the repository', () => inner.listAllTemporary(options), policy, options.signal);
    }
    if (inner.syncContainer) {
      const sync = inner.syncContainer.bind(inner);
      this.syncContainer = (container, options = {}) => withRetry(`syncing ${container}`, () => sync(container, options), policy, options.signal);
    }
  }

  put(container: string, name: string, data: Uint8Array | AsyncIterable<Uint8Array>, options: PutOptions = {}): Promise<void> {
    if (!(data instanceof Uint8Array)) return this.inner.put(container, name, data, options);
    return withRetry(`writing ${container}/${name}`, () => this.inner.put(container, name, data, options), this.policy, options.signal);
  }

  get(container: string, name: string, options: StoreCallOptions = {}): Promise<Buffer> {
    return withRetry(`reading ${container}/${name}`, () => this.inner.get(container, name, options), this.policy, options.signal);
  }

  getStream(container: string, name: string, options: StoreCallOptions = {}): AsyncIterable<Buffer> {
    return retryIterable(`reading ${container}/${name}`, () => this.inner.getStream(container, name, options), this.policy, options.signal);
  }

  list(container: string, prefix?: string, options: ListOptions = {}): Promise<ObjectInfo[]> {
    return withRetry(`listing ${container}`, () => this.inner.list(container, prefix, options), this.policy, options.signal);
  }

  delete(container: string, name: string, options: StoreCallOptions = {}): Promise<boolean> {
    return withRetry(`deleting ${container}/${name}`, () => this.inner.delete(container, name, options), this.policy, options.signal);
  }

  exists(container: string, name: string, options: StoreCallOptions = {}): Promise<boolean> {
    return withRetry(`looking up ${container}/${name}`, () => this.inner.exists(container, name, options), this.policy, options.signal);
  }

  listContainers(options: StoreCallOptions = {}): AsyncIterable<string> {
    return retryIterable('listing the repository', () => this.inner.listContainers(options), this.policy, options.signal);
  }

  listTemporary(container: string, options: StoreCallOptions = {}): Promise<ObjectInfo[]> {
    return withRetry(`listing ${container}`, () => this.inner.listTemporary(container, options), this.policy, options.signal);
  }

  deleteTemporary(container: string, name: string, options: StoreCallOptions = {}): Promise<void> {
    return withRetry(`deleting ${container}/${name}`, () => this.inner.deleteTemporary(container, name, options), this.policy, options.signal);
  }
}
