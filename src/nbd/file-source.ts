// FileSource: a BlockSource over a local raw file (tests, ingesting push targets); holes found with SEEK_DATA/SEEK_HOLE.
import { open, type FileHandle } from 'node:fs/promises';
import { ENXIO, SEEK_DATA, SEEK_HOLE, loadLibc } from '../../native/libc.js';
import { FleeceError, InvalidInputError, NotFoundError, throwIfAborted } from '../util/errors.js';
import type { BlockSource } from './block-source.js';
import type { ByteRange, Extent } from './extent-algebra.js';
import { STATE_HOLE, STATE_ZERO } from './context-extents.js';

/** A raw file read as a disk; `base:allocation` is its only context (holes: flags 3, data: flags 0). */
export class FileSource implements BlockSource {
  readonly canTrim = false;
  readonly contexts = ['base:allocation'] as const;
  private file: FileHandle | undefined;

  private constructor(file: FileHandle, readonly size: number, readonly path: string) {
    this.file = file;
  }

  /** Opens a raw file read-only. @throws NotFoundError when it does not exist */
  static async open(path: string): Promise<FileSource> {
    let file: FileHandle;
    try {
      file = await open(path, 'r');
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') throw new NotFoundError(`raw image ${path} does not exist`, { cause: error });
      throw error;
    }
    const { size } = await file.stat();
    return new FileSource(file, size, path);
  }

  /** Data and hole extents of the file over `range`. @throws InvalidInputError for other contexts or ranges; AbortedError */
  async *extents(context: string, range?: ByteRange, signal?: AbortSignal): AsyncGenerator<Extent> {
    const file = this.handle();
    if (context !== 'base:allocation') {
      throw new InvalidInputError(`a raw file has no meta context "${context}"; only base:allocation`);
    }
    const start = range?.offset ?? 0;
    const end = range ? range.offset + range.length : this.size;
    if (start < 0 || end > this.size || start > end) throw new InvalidInputError(`range [${start}, ${end}) is outside ${this.path} (${this.size} bytes)`);
    const libc = loadLibc();
    let pos = start;
    while (pos < end) {
      throwIfAborted(signal, `mapping ${this.path}`);
      let data = libc.lseek(file.fd, pos, SEEK_DATA);
      if (data < 0) {
        if (libc.errno() !== ENXIO) {
          // No SEEK_DATA support: the rest is data.
          yield { offset: pos, length: end - pos, flags: 0 };
          return;
        }
        data = end;
      }
      data = Math.min(data, end);
      if (data > pos) {
        yield { offset: pos, length: data - pos, flags: STATE_HOLE | STATE_ZERO };
        pos = data;
        continue;
      }
      let hole = libc.lseek(file.fd, pos, SEEK_HOLE);
      if (hole < 0) hole = end;
      hole = Math.min(hole, end);
      yield { offset: pos, length: hole - pos, flags: 0 };
      pos = hole;
    }
  }

  /** Reads exactly `length` bytes at `offset`. @throws InvalidInputError outside the file; AbortedError */
  async read(offset: number, length: number, signal?: AbortSignal, into?: Buffer): Promise<Buffer> {
    const file = this.handle();
    throwIfAborted(signal, `reading ${this.path}`);
    if (offset < 0 || length < 0 || offset + length > this.size) {
      throw new InvalidInputError(`cannot read ${length} bytes at offset ${offset} from ${this.path} (${this.size} bytes)`);
    }
    const buffer = into ? into.subarray(0, length) : Buffer.allocUnsafe(length);
    let done = 0;
    while (done < length) {
      const { bytesRead } = await file.read(buffer, done, length - done, offset + done);
      if (bytesRead === 0) throw new FleeceError('INTERNAL', `${this.path} shrank while being read (at offset ${offset + done})`);
      done += bytesRead;
    }
    return buffer;
  }

  /** A raw file source cannot trim; does nothing. */
  async trim(): Promise<void> {}

  /** Closes the file; idempotent. */
  async close(): Promise<void> {
    const file = this.file;
    this.file = undefined;
    await file?.close();
  }

  private handle(): FileHandle {
    if (!this.file) throw new InvalidInputError(`the file source ${this.path} is closed; open it again`);
    return this.file;
  }
}
