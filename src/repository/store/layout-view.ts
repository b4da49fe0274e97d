// LayoutView: a store seen through a repository layout: only containers and objects named as a repository names them.
//
// What gc walks: whatever else sits in the directory or under the prefix (a file someone put there, another tool's
// objects) is not listed, so it is never taken for garbage.
import type { ListOptions, ObjectInfo, ObjectStore, PutOptions, StoreCallOptions } from './object-store.js';
import { isRepositoryPath } from '../marker.js';
import type { RepositoryLayout } from '../format/naming.js';

const POSIX_CONTAINER = /^([A-Za-z0-9][A-Za-z0-9-])\/([A-Za-z0-9-]{2})\/([A-Za-z0-9][A-Za-z0-9-]{3,})$/;
const S3_CONTAINER = /^volume_[A-Za-z0-9][A-Za-z0-9._-]*\/\d{14}$/;

export function isLayoutContainer(container: string, layout: RepositoryLayout): boolean {
  if (layout === 's3') return S3_CONTAINER.test(container);
  const m = POSIX_CONTAINER.exec(container);
  return m !== null && m[3]!.startsWith(`${m[1]}${m[2]}`);
}

export class LayoutView implements ObjectStore {
  readonly location: string;

  constructor(readonly inner: ObjectStore, private readonly layout: RepositoryLayout) {
    this.location = inner.location;
  }

  private keep(container: string, name: string): boolean {
    return isRepositoryPath(`${container}/${name.slice(name.lastIndexOf('/') + 1)}`, this.layout);
  }

  async list(container: string, prefix?: string, options?: ListOptions): Promise<ObjectInfo[]> {
    if (!isLayoutContainer(container, this.layout)) return [];
    return (await this.inner.list(container, prefix, options)).filter((o) => this.keep(container, o.name));
  }

  async *listContainers(options?: StoreCallOptions): AsyncIterable<string> {
    for await (const c of this.inner.listContainers(options)) if (isLayoutContainer(c, this.layout)) yield c;
  }

  async listTemporary(container: string, options?: StoreCallOptions): Promise<ObjectInfo[]> {
    return isLayoutContainer(container, this.layout) ? this.inner.listTemporary(container, options) : [];
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
