// One listing of a whole store, served as per-container lists: a catalog scan or gc on S3 in keys/1000 requests.
import type { ObjectInfo, ObjectStore, PutOptions, StoreCallOptions } from './object-store.js';

/** One committed object, with its container. */
export interface ListedObject extends ObjectInfo { container: string }

/**
 * An optional store capability: every committed object in one pass, in no given order (S3: one paginated listing of
 * the prefix, 1000 keys a request, instead of one or more requests per container).
 */
export interface ListsEverything {
  listAll(options?: StoreCallOptions): AsyncIterable<ListedObject>;
  /** Every leftover of an interrupted put (what listTemporary lists), in one pass. */
  listAllTemporary(options?: StoreCallOptions): AsyncIterable<ListedObject>;
}

export function canListAll(store: ObjectStore): store is ObjectStore & ListsEverything {
  const s = store as Partial<ListsEverything>;
  return typeof s.listAll === 'function' && typeof s.listAllTemporary === 'function';
}

/**
 * A read view of `inner` whose listContainers and list answer from one listAll pass taken when it is created
 * (objects put later are not listed; everything else goes to `inner`). For one scan of the catalog or one gc:
 * what it misses is younger than the scan, which neither may act on anyway.
 */
export class ListingSnapshot implements ObjectStore {
  readonly location: string;

  private constructor(
    private readonly inner: ObjectStore,
    private readonly byContainer: Map<string, ObjectInfo[]>,
    private readonly temporary: Map<string, ObjectInfo[]>,
  ) {
    this.location = inner.location;
  }

  /** Lists `inner` once (when it can; otherwise returns `inner` itself). Throws StoreError, AbortedError. */
  static async of(inner: ObjectStore, options: StoreCallOptions = {}): Promise<ObjectStore> {
    if (!canListAll(inner)) return inner;
    const group = async (objects: AsyncIterable<ListedObject>) => {
      const byContainer = new Map<string, ObjectInfo[]>();
      for await (const { container, ...info } of objects) {
        let list = byContainer.get(container);
        if (!list) byContainer.set(container, (list = []));
        list.push(info);
      }
      for (const list of byContainer.values()) list.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
      return byContainer;
    };
    return new ListingSnapshot(inner, await group(inner.listAll(options)), await group(inner.listAllTemporary(options)));
  }

  async list(container: string, prefix = ''): Promise<ObjectInfo[]> {
    return (this.byContainer.get(container) ?? []).filter((o) => o.name.startsWith(prefix));
  }

  async *listContainers(): AsyncIterable<string> {
    yield* new Set([...this.byContainer.keys(), ...this.temporary.keys()]);
  }

  async listTemporary(container: string): Promise<ObjectInfo[]> {
    return this.temporary.get(container) ?? [];
  }

  put(container: string, name: string, data: Uint8Array | AsyncIterable<Uint8Array>, options?: PutOptions): Promise<void> {
    return this.inner.put(container, name, data, options);
  }

  get(container: string, name: string, options?: StoreCallOptions): Promise<Buffer> {
    return this.inner.get(container, name, options);
  }

  getStream(container: string, name: string, options?: StoreCallOptions): AsyncIterable<Buffer> {
    return this.inner.getStream(container, name, options);
  }

  delete(container: string, name: string, options?: StoreCallOptions): Promise<boolean> {
    return this.inner.delete(container, name, options);
  }

  exists(container: string, name: string, options?: StoreCallOptions): Promise<boolean> {
    return this.inner.exists(container, name, options);
  }

  deleteTemporary(container: string, name: string, options?: StoreCallOptions): Promise<void> {
    return this.inner.deleteTemporary(container, name, options);
  }
}
