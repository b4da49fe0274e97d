// The ObjectStore port: where a repository keeps its objects (a posix directory, memory, later S3), and its contract.
import { FleeceError, NotFoundError, type FleeceErrorOptions } from '../../util/errors.js';

/**
 * The contract every adapter keeps (checked by test/contract/object-store.contract.ts):
 * - `put` is atomic: a reader sees no object or the whole object, never a torn one; once `put` resolves the
 *   object is durable (posix: temp file, fsync, rename, directory fsync). Putting an existing name replaces it.
 * - `get` of a missing object throws ObjectNotFoundError; every other failure throws StoreError. `getStream`
 *   yields the same bytes in pieces (of any size) and fails the same way, when iterated.
 * - `list(container, prefix)` lists the committed objects of one container whose names start with `prefix`,
 *   sorted by name, never temporary files; a missing container lists as empty.
 * - `delete` of a missing object is not an error (idempotent); it returns whether the object existed.
 * - `listContainers()` yields every container path that holds at least one object (in no given order).
 * - With `put(..., {deferContainerSync: true})` the object's bytes are durable when `put` resolves but its name
 *   may only be once `syncContainer(container)` resolves (posix: one directory fsync for many renames). Adapters
 *   whose puts are always durable ignore the option and need no `syncContainer`; a decorator that passes the
 *   option on must pass `syncContainer` on too (else a writer's commit would skip the sync).
 * - Container paths are relative, '/'-separated, without '.' or '..' segments; object names hold no '/'.
 */
export interface ObjectStore {
  /** A human-readable place (a directory, a URL) for error messages. */
  readonly location: string;
  /** Stores an object atomically and durably (see `deferContainerSync`). Throws StoreError. */
  put(container: string, name: string, data: Uint8Array | AsyncIterable<Uint8Array>, options?: PutOptions): Promise<void>;
  /**
   * Makes the names of every object put into `container` with `deferContainerSync` durable (after their puts
   * resolved), and the deletes done in it so far. Optional: a store without it makes every put and delete durable
   * by itself. Throws StoreError.
   */
  syncContainer?(container: string, options?: StoreCallOptions): Promise<void>;
  /** Reads a whole object. Throws ObjectNotFoundError when missing, StoreError otherwise. */
  get(container: string, name: string, options?: StoreCallOptions): Promise<Buffer>;
  /**
   * Reads an object as a stream of pieces (for objects too big for one Buffer or string, like the sha256file of a
   * big disk). Iterating throws ObjectNotFoundError when missing, StoreError otherwise, AbortedError on abort.
   */
  getStream(container: string, name: string, options?: StoreCallOptions): AsyncIterable<Buffer>;
  /** Lists committed objects by name prefix (see ListOptions.suffix). Throws StoreError. */
  list(container: string, prefix?: string, options?: ListOptions): Promise<ObjectInfo[]>;
  /** Removes an object; true when it existed. Throws StoreError. */
  delete(container: string, name: string, options?: StoreCallOptions): Promise<boolean>;
  /** Whether a committed object exists. Throws StoreError. */
  exists(container: string, name: string, options?: StoreCallOptions): Promise<boolean>;
  /** Every container holding at least one object (committed or temporary). Throws StoreError. */
  listContainers(options?: StoreCallOptions): AsyncIterable<string>;
  /** Lists leftovers of interrupted puts (temporary names) in a container, for gc. Throws StoreError. */
  listTemporary(container: string, options?: StoreCallOptions): Promise<ObjectInfo[]>;
  /** Removes a leftover temporary object listed by listTemporary. Throws StoreError. */
  deleteTemporary(container: string, name: string, options?: StoreCallOptions): Promise<void>;
}

export interface StoreCallOptions {
  signal?: AbortSignal;
  /** A data object's disk offset (from its manifest entry): what an encrypted repository binds it to. */
  offset?: number;
}

export interface ListOptions extends StoreCallOptions {
  /**
   * Only objects whose names end so are wanted. A hint: a store may list others too (callers filter by name
   * anyway); the posix store then stats only these (a full backup's container holds hundreds of objects, and every
   * scan of the catalog lists every container).
   */
  suffix?: string;
}

export interface PutOptions extends StoreCallOptions {
  /** Leave the durability of the object's name to a later `syncContainer` (its bytes are durable at once). */
  deferContainerSync?: boolean;
  /**
   * The md5 (hex) of exactly these bytes, when the caller has it already (computed off the main thread): a store that
   * sends a Content-MD5 uses it instead of hashing again. A decorator that changes the bytes must not pass it on.
   */
  md5?: string;
}

export interface ObjectInfo {
  name: string;
  /** Stored size in bytes. */
  size: number;
  /** Last modification time. */
  modified: Date;
}

/** An object that was asked for is not in the store. */
export class ObjectNotFoundError extends NotFoundError {
  readonly container: string;
  readonly object: string;

  constructor(location: string, container: string, name: string, options: FleeceErrorOptions = {}) {
    super(`object ${container}/${name} is missing from the repository at ${location}`, {
      hint: 'the backup that lists it is damaged: run verify, and restore from another backup',
      ...options,
    });
    this.container = container;
    this.object = name;
  }
}

/** The store failed (ENOSPC, EACCES, EIO, a network error…); `errno` keeps the system code when there is one. */
export class StoreError extends FleeceError {
  readonly errno: string | undefined;

  constructor(message: string, options: FleeceErrorOptions & { errno?: string } = {}) {
    super('STORE', message, options);
    this.errno = options.errno;
  }
}

/** Throws InvalidInputError-like StoreError when a container path or object name could escape the store. */
export function checkObjectPath(location: string, container: string, name?: string): void {
  const segments = container.split('/');
  if (container === '' || segments.some((s) => s === '' || s === '.' || s === '..')) {
    throw new StoreError(`container path "${container}" is not valid in the repository at ${location}`, {
      hint: 'use relative, "/"-separated paths without "." or ".." segments',
    });
  }
  if (name !== undefined && (name === '' || name.includes('/') || name.startsWith('.') || name.includes('\0'))) {
    throw new StoreError(`object name "${name}" is not valid in ${location}/${container}`, {
      hint: 'object names must not be empty, contain "/" or start with "."',
    });
  }
}
