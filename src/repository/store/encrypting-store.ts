// EncryptingStore: seals the data objects of an encrypted repository on their way in and opens them on the way out.
//
// Only data objects (`…_backup_<id>-NNNNN`) are sealed: the _metadata, the _sha256file and leases stay plaintext so
// that `list`, gc and a lease check work without the key. The writer, restore, verify and consolidate see the bytes
// they always saw (the compressed object whose md5 the manifest holds): only this layer knows about encryption.
// Every data object's put and get must say its disk offset (`options.offset`), part of what it is sealed to.
import { InvalidInputError } from '../../util/errors.js';
import type { ListOptions, ObjectInfo, ObjectStore, PutOptions, StoreCallOptions } from './object-store.js';
import { canListAll, type ListedObject, type ListsEverything } from './listing-snapshot.js';
import { openObject, sealObject, type ObjectPlace } from '../crypto/object-seal.js';

const DATA_OBJECT = /_backup_[A-Za-z0-9][A-Za-z0-9-]{3,}-\d{5,}$/;

export function isDataObjectName(name: string): boolean {
  return DATA_OBJECT.test(name);
}

export class EncryptingStore implements ObjectStore, Partial<ListsEverything> {
  readonly location: string;
  readonly listAll?: (options?: StoreCallOptions) => AsyncIterable<ListedObject>;
  readonly listAllTemporary?: (options?: StoreCallOptions) => AsyncIterable<ListedObject>;
  readonly syncContainer?: (container: string, options?: StoreCallOptions) => Promise<void>;
  private key: Promise<Buffer> | undefined;

  /** `dataKey` is asked for once, on the first data object (listing never needs it). */
  constructor(readonly inner: ObjectStore, private readonly repositoryId: string, private readonly dataKey: () => Promise<Buffer>) {
    this.location = inner.location;
    if (canListAll(inner)) {
      this.listAll = (options) => inner.listAll(options);
      this.listAllTemporary = (options) => inner.listAllTemporary(options);
    }
    if (inner.syncContainer) this.syncContainer = (container, options) => inner.syncContainer!(container, options);
  }

  /** The data key (unlocking it now if it was not). Throws InvalidInputError, IntegrityError. */
  unlock(): Promise<Buffer> {
    this.key ??= this.dataKey();
    return this.key;
  }

  private place(container: string, name: string, options: StoreCallOptions | undefined): ObjectPlace {
    if (options?.offset === undefined) throw new InvalidInputError(`data object ${container}/${name} of an encrypted repository was accessed without its offset`);
    return { repositoryId: this.repositoryId, container, name, offset: options.offset };
  }

  async put(container: string, name: string, data: Uint8Array | AsyncIterable<Uint8Array>, options?: PutOptions): Promise<void> {
    if (!isDataObjectName(name)) return this.inner.put(container, name, data, options);
    const place = this.place(container, name, options);
    let plain: Uint8Array;
    if (data instanceof Uint8Array) plain = data;
    else {
      const pieces: Buffer[] = [];
      for await (const piece of data) pieces.push(Buffer.from(piece));
      plain = Buffer.concat(pieces);
    }
    // the caller's md5 is of the plaintext: the sealed bytes have another (the store computes it)
    const { md5: _plainMd5, ...rest } = options ?? {};
    return this.inner.put(container, name, sealObject(await this.unlock(), plain, place), rest);
  }

  async get(container: string, name: string, options?: StoreCallOptions): Promise<Buffer> {
    if (!isDataObjectName(name)) return this.inner.get(container, name, options);
    const place = this.place(container, name, options);
    const key = await this.unlock();
    return openObject(key, await this.inner.get(container, name, options), place, `${container}/${name}`);
  }

  async *getStream(container: string, name: string, options?: StoreCallOptions): AsyncIterable<Buffer> {
    if (!isDataObjectName(name)) { yield* this.inner.getStream(container, name, options); return; }
    yield await this.get(container, name, options);
  }

  list(container: string, prefix?: string, options?: ListOptions): Promise<ObjectInfo[]> {
    return this.inner.list(container, prefix, options);
  }

  delete(container: string, name: string, options?: StoreCallOptions): Promise<boolean> {
    return this.inner.delete(container, name, options);
  }

  exists(container: string, name: string, options?: StoreCallOptions): Promise<boolean> {
    return this.inner.exists(container, name, options);
  }

  listContainers(options?: StoreCallOptions): AsyncIterable<string> {
    return this.inner.listContainers(options);
  }

  listTemporary(container: string, options?: StoreCallOptions): Promise<ObjectInfo[]> {
    return this.inner.listTemporary(container, options);
  }

  deleteTemporary(container: string, name: string, options?: StoreCallOptions): Promise<void> {
    return this.inner.deleteTemporary(container, name, options);
  }
}
