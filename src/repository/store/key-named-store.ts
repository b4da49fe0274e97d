// KeyNamedStore: object names as keys relative to the repository root (`<container>/<name>`), as Cinder's S3 driver names them.
//
// Cinder's S3 (and Swift) backup driver has one container, the bucket, and object names with '/' in them:
// `volume_<id>/<YYYYmmddHHMMSS>/az_<az>_backup_<id>-00001`, and its _metadata lists those names. fleece's
// repository code reads a backup as `store.list(container, prefix)`, `store.get(container, <name from the
// manifest>)`: over this view, with container `volume_<id>/<timestamp>`, the names it sees, writes and compares
// are Cinder's own. Underneath, the inner store keeps its contract (names without '/'): the view splits each name
// at its last '/', which must be the container. Nothing else changes.
import { StoreError, type ListOptions, type ObjectInfo, type ObjectStore, type PutOptions, type StoreCallOptions } from './object-store.js';
import { canListAll, type ListedObject, type ListsEverything } from './listing-snapshot.js';

export class KeyNamedStore implements ObjectStore, Partial<ListsEverything> {
  readonly location: string;
  readonly listAll?: (options?: StoreCallOptions) => AsyncIterable<ListedObject>;
  readonly listAllTemporary?: (options?: StoreCallOptions) => AsyncIterable<ListedObject>;

  constructor(readonly inner: ObjectStore) {
    this.location = inner.location;
    if (canListAll(inner)) {
      const full = (o: ListedObject): ListedObject => ({ ...o, name: `${o.container}/${o.name}` });
      this.listAll = async function* (options) { for await (const o of inner.listAll(options)) yield full(o); };
      this.listAllTemporary = async function* (options) { for await (const o of inner.listAllTemporary(options)) yield full(o); };
    }
  }

  /** The inner name of `key` in `container`. Throws StoreError when the key is not in that container. */
  private base(container: string, key: string): string {
    if (!key.startsWith(`${container}/`) || key.slice(container.length + 1).includes('/')) {
      throw new StoreError(`object "${key}" is not in container ${container} of ${this.location}`, { hint: 'S3 object names are <container>/<name>' });
    }
    return key.slice(container.length + 1);
  }

  private full(container: string, infos: ObjectInfo[]): ObjectInfo[] {
    return infos.map((o) => ({ ...o, name: `${container}/${o.name}` }));
  }

  put(container: string, name: string, data: Uint8Array | AsyncIterable<Uint8Array>, options?: PutOptions): Promise<void> {
    return this.inner.put(container, this.base(container, name), data, options);
  }

  get(container: string, name: string, options?: StoreCallOptions): Promise<Buffer> {
    return this.inner.get(container, this.base(container, name), options);
  }

  getStream(container: string, name: string, options?: StoreCallOptions): AsyncIterable<Buffer> {
    return this.inner.getStream(container, this.base(container, name), options);
  }

  /** `prefix` is '' or a key prefix in the container (`<container>/az_…`). */
  async list(container: string, prefix = '', options?: ListOptions): Promise<ObjectInfo[]> {
    const inner = prefix === '' ? '' : this.base(container, prefix);
    return this.full(container, await this.inner.list(container, inner, options));
  }

  delete(container: string, name: string, options?: StoreCallOptions): Promise<boolean> {
    return this.inner.delete(container, this.base(container, name), options);
  }

  exists(container: string, name: string, options?: StoreCallOptions): Promise<boolean> {
    return this.inner.exists(container, this.base(container, name), options);
  }

  listContainers(options?: StoreCallOptions): AsyncIterable<string> {
    return this.inner.listContainers(options);
  }

  async listTemporary(container: string, options?: StoreCallOptions): Promise<ObjectInfo[]> {
    return this.full(container, await this.inner.listTemporary(container, options));
  }

  deleteTemporary(container: string, name: string, options?: StoreCallOptions): Promise<void> {
    return this.inner.deleteTemporary(container, this.base(container, name), options);
  }
}
