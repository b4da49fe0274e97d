// The posix ObjectStore adapter: one directory per container, objects written to a temp name, fsynced, renamed.
import { link, open, readFile, readdir, rename, stat, unlink, mkdir, rmdir } from 'node:fs/promises';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { fsyncDirectory } from '../../util/atomic-file.js';
import { AlignedBufferPool, DirectIoUnsupported, readFileDirect, writeFileDirect } from './direct-io.js';
import { throwIfAborted } from '../../util/errors.js';
import { getLogger } from '../../util/logger.js';
import {
  ObjectNotFoundError, StoreError, checkObjectPath,
  type ListOptions, type ObjectInfo, type ObjectStore, type PutOptions, type StoreCallOptions,
} from './object-store.js';
import type { HoldsRootObjects } from './root-objects.js';

const log = getLogger('repository.fs-store');
const TEMP_SUFFIX = '.tmp';
/** Piece size of getStream. */
const STREAM_PIECE = 1 << 20;

/** The system errors a repository on a file system meets, in words, with what to do. */
const KNOWN_ERRNO: Record<string, { what: string; hint: string }> = {
  ENOSPC: {
    what: 'its file system is full',
    hint: 'free space there (fleece prune removes old backups, fleece gc what no backup lists) or grow the file system, then take the backup again',
  },
  EDQUOT: { what: 'the disk quota is used up', hint: 'raise the quota or free space (fleece prune, fleece gc), then take the backup again' },
  EIO: {
    what: 'the storage under it reported an I/O error',
    hint: 'check the disk and the file system (dmesg, SMART, fsck) before the next backup, then run fleece verify on the backups you rely on',
  },
  EACCES: { what: 'permission denied', hint: 'check the permissions of the repository directory' },
  EPERM: { what: 'operation not permitted', hint: 'check the permissions of the repository directory' },
  EROFS: { what: 'its file system is read-only', hint: 'remount it read-write (after an fsck if it went read-only by itself)' },
};

function errnoOf(error: unknown): string | undefined {
  return (error as NodeJS.ErrnoException | undefined)?.code;
}

/**
 * Runs `create` (which makes a file in `dir`); when it fails with ENOENT, creates `dir` and runs it once more. The
 * container usually exists (many objects per container): it is created only when the open says it is missing.
 */
async function inContainer<T>(dir: string, create: () => Promise<T>): Promise<T> {
  try {
    return await create();
  } catch (error) {
    if (errnoOf(error) !== 'ENOENT') throw error;
    await mkdir(dir, { recursive: true });
    return create();
  }
}

/** Objects from this size on are written with O_DIRECT (when the file system allows it). */
const DIRECT_MIN_BYTES = 64 * 1024;
/** Staging buffers for O_DIRECT writes (shared by every writer of this store: memory stays bounded). */
const DIRECT_SLOTS = 4;
const DIRECT_SLOT_BYTES = 4 * 1024 * 1024;

export interface FsObjectStoreOptions {
  /**
   * Write and read data objects with O_DIRECT, bypassing the page cache (default true): no kernel copy of every byte
   * and no eviction of the guests' cache on the host. Falls back to buffered writes by itself where the file system
   * refuses O_DIRECT (tmpfs, some network file systems).
   */
  directIo?: boolean;
  /** Replaces writeFileDirect (tests of the fallback: few file systems here refuse O_DIRECT). */
  writeDirect?: typeof writeFileDirect;
}

/** A directory tree as an ObjectStore: `<root>/<container>/<name>`; root objects are files in `<root>` itself. */
export class FsObjectStore implements ObjectStore, HoldsRootObjects {
  readonly location: string;
  private direct: boolean;
  private pool: AlignedBufferPool | undefined;
  private readonly writeDirect: typeof writeFileDirect;

  constructor(readonly root: string, options: FsObjectStoreOptions = {}) {
    this.location = root;
    this.direct = options.directIo ?? process.env.FLEECE_DIRECT_IO !== '0';
    this.writeDirect = options.writeDirect ?? writeFileDirect;
  }

  /** Whether data objects are (still) written with O_DIRECT: false once the file system refused it. */
  get directIo(): boolean {
    return this.direct;
  }

  private stagingPool(): AlignedBufferPool {
    this.pool ??= new AlignedBufferPool(DIRECT_SLOTS, DIRECT_SLOT_BYTES);
    return this.pool;
  }

  /** From now on this store uses the page cache. */
  private stopDirectIo(reason: DirectIoUnsupported): void {
    this.direct = false;
    log.info({ root: this.root, reason: reason.message }, 'O_DIRECT does not work on the repository file system: using the page cache');
  }

  /** Writes `data` to the new file `tmp` and fsyncs it: O_DIRECT when possible, else through the page cache. */
  private async writeTemp(tmp: string, dir: string, data: Uint8Array | AsyncIterable<Uint8Array>, options: PutOptions): Promise<void> {
    if (data instanceof Uint8Array && this.direct && data.byteLength >= DIRECT_MIN_BYTES) {
      const pool = this.stagingPool();
      try {
        await inContainer(dir, () => this.writeDirect(tmp, data, pool));
        return;
      } catch (error) {
        if (!(error instanceof DirectIoUnsupported)) throw error;
        this.stopDirectIo(error);
      }
    }
    const handle = await inContainer(dir, () => open(tmp, 'wx', 0o644));
    try {
      if (data instanceof Uint8Array) {
        // One write(2) per call (writeFile would cut it into 512 KiB calls, each a thread-pool round trip).
        for (let done = 0; done < data.byteLength;) {
          const { bytesWritten } = await handle.write(data, done, data.byteLength - done, done);
          done += bytesWritten;
        }
      } else {
        for await (const piece of data) {
          throwIfAborted(options.signal, `writing ${tmp}`);
          await handle.write(piece);
        }
      }
      await handle.sync();
    } finally {
      await handle.close();
    }
  }

  private fail(action: string, container: string, name: string | undefined, error: unknown): never {
    if (error instanceof StoreError || error instanceof ObjectNotFoundError) throw error;
    const errno = errnoOf(error);
    const what = name === undefined ? container : `${container}/${name}`;
    const known = errno === undefined ? undefined : KNOWN_ERRNO[errno];
    const why = known ? `${known.what} (${errno})` : errno ?? String(error);
    throw new StoreError(`cannot ${action} ${what} in the repository at ${this.root}: ${why}`, {
      cause: error, errno, hint: known?.hint,
    });
  }

  async put(container: string, name: string, data: Uint8Array | AsyncIterable<Uint8Array>, options: PutOptions = {}): Promise<void> {
    checkObjectPath(this.root, container, name);
    throwIfAborted(options.signal, `writing ${container}/${name}`);
    const dir = join(this.root, container);
    const final = join(dir, name);
    const tmp = join(dir, `.${name}.${randomBytes(6).toString('hex')}${TEMP_SUFFIX}`);
    try {
      await this.writeTemp(tmp, dir, data, options);
      await rename(tmp, final);
      if (!options.deferContainerSync) await fsyncDirectory(dir);
      log.debug({ container, name }, 'put');
    } catch (error) {
      await unlink(tmp).catch(() => undefined);
      this.fail('write', container, name, error);
    }
  }

  /**
   * One fsync of the container's directory makes every rename and removal in it so far durable. When deletes
   * removed the container itself (pruneEmpty), the nearest directory still there is synced: it holds the removal.
   * Throws StoreError.
   */
  async syncContainer(container: string, options: StoreCallOptions = {}): Promise<void> {
    checkObjectPath(this.root, container);
    throwIfAborted(options.signal, `syncing ${container}`);
    const segments = container.split('/');
    for (let i = segments.length; i >= 0; i--) {
      try {
        await fsyncDirectory(join(this.root, ...segments.slice(0, i)));
        return;
      } catch (error) {
        if (errnoOf(error) !== 'ENOENT' || i === 0) this.fail('sync', container, undefined, error);
      }
    }
  }

  async get(container: string, name: string, options: StoreCallOptions = {}): Promise<Buffer> {
    checkObjectPath(this.root, container, name);
    if (this.direct) {
      throwIfAborted(options.signal, `reading ${container}/${name}`);
      try {
        return await readFileDirect(join(this.root, container, name), this.stagingPool());
      } catch (error) {
        if (errnoOf(error) === 'ENOENT') throw new ObjectNotFoundError(this.root, container, name, { cause: error });
        if (!(error instanceof DirectIoUnsupported)) this.fail('read', container, name, error);
        this.stopDirectIo(error);
      }
    }
    try {
      return await readFile(join(this.root, container, name), { signal: options.signal });
    } catch (error) {
      if (errnoOf(error) === 'ENOENT') throw new ObjectNotFoundError(this.root, container, name, { cause: error });
      this.fail('read', container, name, error);
    }
  }

  async *getStream(container: string, name: string, options: StoreCallOptions = {}): AsyncIterable<Buffer> {
    checkObjectPath(this.root, container, name);
    let handle;
    try {
      handle = await open(join(this.root, container, name), 'r');
    } catch (error) {
      if (errnoOf(error) === 'ENOENT') throw new ObjectNotFoundError(this.root, container, name, { cause: error });
      this.fail('read', container, name, error);
    }
    try {
      let left = await handle.stat().then((st) => st.size, (error: unknown) => this.fail('stat', container, name, error)); // small objects get a small buffer
      for (;;) {
        throwIfAborted(options.signal, `reading ${container}/${name}`);
        const want = Math.min(STREAM_PIECE, Math.max(4096, left));
        const buf = Buffer.allocUnsafe(want);
        let bytesRead: number;
        try {
          ({ bytesRead } = await handle.read(buf, 0, want, null));
        } catch (error) {
          this.fail('read', container, name, error);
        }
        if (bytesRead === 0) return;
        left -= bytesRead;
        yield bytesRead === want ? buf : buf.subarray(0, bytesRead);
      }
    } finally {
      await handle.close();
    }
  }

  private async entries(container: string, temporary: boolean, prefix = '', suffix = ''): Promise<ObjectInfo[]> {
    checkObjectPath(this.root, container);
    const dir = join(this.root, container);
    let names: string[];
    try {
      names = await readdir(dir);
    } catch (error) {
      if (errnoOf(error) === 'ENOENT') return [];
      this.fail('list', container, undefined, error);
    }
    const out: ObjectInfo[] = [];
    for (const entry of names.sort()) {
      const isTemp = entry.startsWith('.') && entry.endsWith(TEMP_SUFFIX);
      if (isTemp !== temporary || (!temporary && entry.startsWith('.')) || !entry.startsWith(prefix) || !entry.endsWith(suffix)) continue;
      try {
        const info = await stat(join(dir, entry));
        if (info.isFile()) out.push({ name: entry, size: info.size, modified: info.mtime });
      } catch (error) {
        if (errnoOf(error) !== 'ENOENT') this.fail('stat', container, entry, error);
      }
    }
    return out;
  }

  async list(container: string, prefix = '', options: ListOptions = {}): Promise<ObjectInfo[]> {
    return this.entries(container, false, prefix, options.suffix);
  }

  async listTemporary(container: string): Promise<ObjectInfo[]> {
    return this.entries(container, true);
  }

  async deleteTemporary(container: string, name: string): Promise<void> {
    checkObjectPath(this.root, container);
    if (!name.startsWith('.') || !name.endsWith(TEMP_SUFFIX) || name.includes('/')) {
      throw new StoreError(`"${name}" in ${this.root}/${container} is not a temporary object`);
    }
    try {
      await unlink(join(this.root, container, name));
    } catch (error) {
      if (errnoOf(error) !== 'ENOENT') this.fail('delete', container, name, error);
    }
    await this.pruneEmpty(container);
  }

  async delete(container: string, name: string): Promise<boolean> {
    checkObjectPath(this.root, container, name);
    try {
      await unlink(join(this.root, container, name));
    } catch (error) {
      if (errnoOf(error) === 'ENOENT') return false;
      this.fail('delete', container, name, error);
    }
    await this.pruneEmpty(container);
    return true;
  }

  /** Removes the container directory and its empty parents once nothing is left in it. */
  private async pruneEmpty(container: string): Promise<void> {
    const segments = container.split('/');
    for (let i = segments.length; i > 0; i--) {
      try {
        await rmdir(join(this.root, ...segments.slice(0, i)));
      } catch {
        return; // not empty (or gone): stop climbing
      }
    }
  }

  async exists(container: string, name: string): Promise<boolean> {
    checkObjectPath(this.root, container, name);
    try {
      return (await stat(join(this.root, container, name))).isFile();
    } catch (error) {
      if (errnoOf(error) === 'ENOENT') return false;
      this.fail('stat', container, name, error);
    }
  }

  async *listContainers(options: StoreCallOptions = {}): AsyncIterable<string> {
    const walk = async function* (this: FsObjectStore, rel: string): AsyncGenerator<string> {
      throwIfAborted(options.signal, 'listing the repository');
      let entries;
      try {
        entries = await readdir(join(this.root, rel), { withFileTypes: true });
      } catch (error) {
        if (errnoOf(error) === 'ENOENT') return;
        this.fail('list', rel || '.', undefined, error);
      }
      if (rel !== '' && entries.some((e) => e.isFile())) yield rel;
      for (const entry of entries.sort((a, b) => (a.name < b.name ? -1 : 1))) {
        if (entry.isDirectory() && !entry.name.startsWith('.')) yield* walk.call(this, rel === '' ? entry.name : `${rel}/${entry.name}`);
      }
    };
    yield* walk.call(this, '');
  }

  async getRoot(name: string): Promise<Buffer | undefined> {
    checkObjectPath(this.root, '.root', name);
    try {
      return await readFile(join(this.root, name));
    } catch (error) {
      if (errnoOf(error) === 'ENOENT') return undefined;
      this.fail('read', '.', name, error);
    }
  }

  async putRoot(name: string, data: Uint8Array, options: { exclusive?: boolean } = {}): Promise<boolean> {
    checkObjectPath(this.root, '.root', name);
    const tmp = join(this.root, `.${name}.${randomBytes(6).toString('hex')}${TEMP_SUFFIX}`);
    try {
      await mkdir(this.root, { recursive: true });
      const handle = await open(tmp, 'wx', 0o644);
      try {
        await handle.writeFile(data);
        await handle.sync();
      } finally {
        await handle.close();
      }
      if (options.exclusive) {
        const linked = await link(tmp, join(this.root, name)).then(() => true, (error: unknown) => { // the first writer wins
          if (errnoOf(error) === 'EEXIST') return false;
          throw error;
        });
        await unlink(tmp);
        if (!linked) return false;
      } else {
        await rename(tmp, join(this.root, name));
      }
      await fsyncDirectory(this.root);
      return true;
    } catch (error) {
      await unlink(tmp).catch(() => undefined);
      this.fail('write', '.', name, error);
    }
  }

  async listEverything(limit: number): Promise<string[]> {
    const out: string[] = [];
    const walk = async (rel: string): Promise<void> => {
      let entries;
      try {
        entries = await readdir(rel === '' ? this.root : join(this.root, rel), { withFileTypes: true });
      } catch (error) {
        if (errnoOf(error) === 'ENOENT') return;
        this.fail('list', rel || '.', undefined, error);
      }
      for (const entry of entries.sort((a, b) => (a.name < b.name ? -1 : 1))) {
        if (out.length >= limit) return;
        const path = rel === '' ? entry.name : `${rel}/${entry.name}`;
        if (entry.isDirectory()) await walk(path);
        else out.push(path);
      }
    };
    await walk('');
    return out;
  }
}
