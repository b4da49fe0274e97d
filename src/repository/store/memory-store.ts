// The in-memory ObjectStore adapter: a first-class store for unit tests and dry runs, same contract as posix.
import { throwIfAborted } from '../../util/errors.js';
import {
  ObjectNotFoundError, checkObjectPath,
  type ObjectInfo, type ObjectStore, type StoreCallOptions,
} from './object-store.js';

interface Entry { data: Buffer; modified: Date }

/** Keeps objects in a Map; `put` copies its input so callers may reuse their buffers. */
export class MemoryObjectStore implements ObjectStore {
  readonly location: string;
  private readonly containers = new Map<string, Map<string, Entry>>();
  /** Temporary objects, as an interrupted put would leave them (tests add them with addTemporary). */
  private readonly temporary = new Map<string, Map<string, Entry>>();

  /** `streamPiece`: the piece size getStream yields (tests make it tiny to split documents everywhere). */
  constructor(name = 'memory', private readonly streamPiece = 1 << 20) {
    this.location = `memory:${name}`;
  }

  async put(container: string, name: string, data: Uint8Array | AsyncIterable<Uint8Array>, options: StoreCallOptions = {}): Promise<void> {
    checkObjectPath(this.location, container, name);
    throwIfAborted(options.signal, `writing ${container}/${name}`);
    let copy: Buffer;
    if (data instanceof Uint8Array) {
      copy = Buffer.from(data);
    } else {
      const pieces: Buffer[] = [];
      for await (const piece of data) {
        throwIfAborted(options.signal, `writing ${container}/${name}`);
        pieces.push(Buffer.from(piece));
      }
      copy = Buffer.concat(pieces);
    }
    let objects = this.containers.get(container);
    if (!objects) this.containers.set(container, (objects = new Map()));
    objects.set(name, { data: copy, modified: new Date() });
  }

  async get(container: string, name: string): Promise<Buffer> {
    checkObjectPath(this.location, container, name);
    const entry = this.containers.get(container)?.get(name);
    if (!entry) throw new ObjectNotFoundError(this.location, container, name);
    return Buffer.from(entry.data);
  }

  async *getStream(container: string, name: string, options: StoreCallOptions = {}): AsyncIterable<Buffer> {
    const data = await this.get(container, name);
    for (let at = 0; at < data.length; at += this.streamPiece) {
      throwIfAborted(options.signal, `reading ${container}/${name}`);
      yield data.subarray(at, Math.min(data.length, at + this.streamPiece));
    }
  }

  async list(container: string, prefix = ''): Promise<ObjectInfo[]> {
    checkObjectPath(this.location, container);
    const objects = this.containers.get(container);
    if (!objects) return [];
    return [...objects.entries()]
      .filter(([name]) => name.startsWith(prefix))
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
      .map(([name, e]) => ({ name, size: e.data.length, modified: e.modified }));
  }

  async delete(container: string, name: string): Promise<boolean> {
    checkObjectPath(this.location, container, name);
    const objects = this.containers.get(container);
    const existed = objects?.delete(name) ?? false;
    if (objects && objects.size === 0) this.containers.delete(container);
    return existed;
  }

  async exists(container: string, name: string): Promise<boolean> {
    checkObjectPath(this.location, container, name);
    return this.containers.get(container)?.has(name) ?? false;
  }

  async *listContainers(): AsyncIterable<string> {
    const all = new Set([...this.containers.keys(), ...this.temporary.keys()]);
    yield* [...all].sort();
  }

  async listTemporary(container: string): Promise<ObjectInfo[]> {
    const objects = this.temporary.get(container);
    if (!objects) return [];
    return [...objects.entries()].map(([name, e]) => ({ name, size: e.data.length, modified: e.modified }));
  }

  async deleteTemporary(container: string, name: string): Promise<void> {
    const objects = this.temporary.get(container);
    objects?.delete(name);
    if (objects && objects.size === 0) this.temporary.delete(container);
  }

  /** Test helper: leaves a temporary object as an interrupted put would. */
  addTemporary(container: string, name: string, data: Uint8Array, modified = new Date()): void {
    let objects = this.temporary.get(container);
    if (!objects) this.temporary.set(container, (objects = new Map()));
    objects.set(name, { data: Buffer.from(data), modified });
  }

  /** Test helper: overwrites stored bytes in place (to simulate corruption). */
  corrupt(container: string, name: string, mutate: (data: Buffer) => Buffer): void {
    const entry = this.containers.get(container)?.get(name);
    if (!entry) throw new ObjectNotFoundError(this.location, container, name);
    entry.data = mutate(entry.data);
  }
}
