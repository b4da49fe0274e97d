// BlockSink adapters over files: a new sparse raw file, or an existing file / block device overwritten in place.
import { constants as fsConstants } from 'node:fs';
import { open, stat, type FileHandle } from 'node:fs/promises';
import { InvalidInputError } from '../util/errors.js';
import { StoreError } from '../repository/store/object-store.js';
import type { BlockSink } from './block-sink.js';

const ZERO_PIECE = 1 << 20;

class FileSink implements BlockSink {
  private closed = false;
  constructor(readonly name: string, readonly size: number, readonly startsZeroed: boolean, private readonly handle: FileHandle) {}

  private fail(action: string, error: unknown): never {
    throw new StoreError(`cannot ${action} the restore target ${this.name}: ${(error as NodeJS.ErrnoException).code ?? String(error)}`, {
      cause: error, errno: (error as NodeJS.ErrnoException).code,
    });
  }

  async write(offset: number, data: Uint8Array): Promise<void> {
    if (offset < 0 || offset + data.length > this.size) throw new InvalidInputError(`write at ${offset} length ${data.length} is outside ${this.name} (size ${this.size})`);
    try {
      let done = 0;
      while (done < data.length) {
        const { bytesWritten } = await this.handle.write(data, done, data.length - done, offset + done);
        done += bytesWritten;
      }
    } catch (error) {
      this.fail('write', error);
    }
  }

  async zeroRange(offset: number, length: number): Promise<void> {
    const zeros = Buffer.alloc(Math.min(ZERO_PIECE, length));
    for (let done = 0; done < length; done += zeros.length) {
      const n = Math.min(zeros.length, length - done);
      await this.write(offset + done, n === zeros.length ? zeros : zeros.subarray(0, n));
    }
  }

  async read(offset: number, length: number, into?: Buffer): Promise<Buffer> {
    const buf = into && into.length >= length ? into.subarray(0, length) : Buffer.allocUnsafeSlow(length);
    let done = 0;
    try {
      while (done < length) {
        const { bytesRead } = await this.handle.read(buf, done, length - done, offset + done);
        if (bytesRead === 0) break;
        done += bytesRead;
      }
    } catch (error) {
      this.fail('read', error);
    }
    if (done < length) buf.fill(0, done); // past the end of a shorter file: what the disk would read
    return buf;
  }

  async flush(): Promise<void> {
    try {
      await this.handle.sync();
    } catch (error) {
      this.fail('sync', error);
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.handle.close();
  }
}

/** Creates a new sparse raw file of `size` bytes (fails if it exists unless overwrite). Throws StoreError. */
export async function createSparseFileSink(path: string, size: number, options: { overwrite?: boolean } = {}): Promise<BlockSink> {
  let handle: FileHandle;
  try {
    // O_NOFOLLOW: an overwrite never writes through a symbolic link into its target (ELOOP instead).
    handle = await open(path, options.overwrite ? fsConstants.O_RDWR | fsConstants.O_CREAT | fsConstants.O_TRUNC | fsConstants.O_NOFOLLOW : 'wx+', 0o644);
    await handle.truncate(size);
  } catch (error) {
    throw new StoreError(`cannot create the restore target ${path}: ${(error as NodeJS.ErrnoException).code ?? String(error)}`, {
      cause: error, hint: (error as NodeJS.ErrnoException).code === 'EEXIST' ? 'choose a new path or allow overwrite' : (error as NodeJS.ErrnoException).code === 'ELOOP' ? 'it is a symbolic link: restore to the real path' : undefined,
    });
  }
  return new FileSink(path, size, true, handle);
}

/**
 * Opens an existing file or block device to restore into; restore zeroes every range the chain does not cover.
 * A regular file smaller than `size` is extended. Throws StoreError, InvalidInputError (a device too small).
 */
export async function openExistingSink(path: string, size: number): Promise<BlockSink> {
  let handle: FileHandle;
  try {
    handle = await open(path, 'r+');
    const info = await stat(path);
    if (info.isFile() && info.size < size) await handle.truncate(size);
    if (info.isBlockDevice()) {
      const { size: devSize } = await handle.stat();
      if (devSize !== 0 && devSize < size) throw new InvalidInputError(`device ${path} holds ${devSize} bytes, the backup needs ${size}`);
    }
  } catch (error) {
    if (error instanceof InvalidInputError) throw error;
    throw new StoreError(`cannot open the restore target ${path}: ${(error as NodeJS.ErrnoException).code ?? String(error)}`, { cause: error });
  }
  return new FileSink(path, size, false, handle);
}
