// Reference copies of a guest disk at a point in time, and sha256 of large files read in a stream.
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { AbortedError } from '../../src/util/errors.js';

const execFileAsync = promisify(execFile);

/**
 * `qemu-img convert -U -O raw`: the image as it reads now, while a running QEMU holds it (flush the guest first).
 * Throws Error with qemu-img's message, AbortedError.
 */
export async function rawCopy(image: string, out: string, signal?: AbortSignal): Promise<void> {
  try {
    await execFileAsync('qemu-img', ['convert', '-U', '-O', 'raw', image, out], signal ? { signal } : {});
  } catch (error) {
    if (signal?.aborted) throw new AbortedError(`copying ${image} was interrupted`);
    const stderr = (error as { stderr?: string }).stderr ?? String(error);
    throw new Error(`qemu-img convert -U -O raw ${image} ${out} failed: ${stderr.trim()}`, { cause: error });
  }
}

/** The sha256 of a file, hex. Throws the read error (ENOENT…), AbortedError. */
export async function sha256File(path: string, signal?: AbortSignal): Promise<string> {
  const hash = createHash('sha256');
  const stream = createReadStream(path, { highWaterMark: 4 << 20, ...(signal ? { signal } : {}) });
  try {
    for await (const chunk of stream) hash.update(chunk as Buffer);
  } catch (error) {
    if (signal?.aborted) throw new AbortedError(`hashing ${path} was interrupted`);
    throw error;
  }
  return hash.digest('hex');
}
