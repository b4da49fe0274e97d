// An optional store capability: objects at the repository's root, outside every container (the repository marker).
//
// The catalog, gc, Cinder's readers and a KeyNamedStore see containers only: a posix store lists no file at its
// root as a container, an S3 store skips keys without a container part. What is kept here is invisible to all of them.
import type { ObjectStore, StoreCallOptions } from './object-store.js';

export interface HoldsRootObjects {
  /** The object `name` at the root, or undefined when there is none. Throws StoreError. */
  getRoot(name: string, options?: StoreCallOptions): Promise<Buffer | undefined>;
  /** Stores `name` at the root, atomically; with `exclusive`, only when it does not exist yet (returns false then). Throws StoreError. */
  putRoot(name: string, data: Uint8Array, options?: StoreCallOptions & { exclusive?: boolean }): Promise<boolean>;
  /** Every file (posix) or key (S3) under the root, as a '/'-separated path relative to it, at most `limit` of them. Throws StoreError. */
  listEverything(limit: number, options?: StoreCallOptions): Promise<string[]>;
}

export function holdsRootObjects(store: ObjectStore): store is ObjectStore & HoldsRootObjects {
  const s = store as Partial<HoldsRootObjects>;
  return typeof s.getRoot === 'function' && typeof s.putRoot === 'function' && typeof s.listEverything === 'function';
}

/** The store under decorators that pass root objects on (KeyNamedStore, RetryStore expose `inner`). */
export function rootObjectsOf(store: ObjectStore): (ObjectStore & HoldsRootObjects) | undefined {
  let s: ObjectStore | undefined = store;
  for (let depth = 0; s !== undefined && depth < 8; depth++) {
    if (holdsRootObjects(s)) return s;
    s = (s as { inner?: ObjectStore }).inner;
  }
  return undefined;
}
