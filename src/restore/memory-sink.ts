// An in-memory BlockSink (tests, small images): a zeroed Buffer of the disk size.
import { InvalidInputError } from '../util/errors.js';
import type { BlockSink } from './block-sink.js';

export class MemorySink implements BlockSink {
  readonly data: Buffer;
  readonly startsZeroed: boolean;

  /** `initial` pre-fills the target (to test that restore zeroes what the chain does not cover). */
  constructor(readonly size: number, initial?: Buffer, readonly name = 'memory') {
    this.data = Buffer.alloc(size);
    if (initial) initial.copy(this.data, 0, 0, Math.min(size, initial.length));
    this.startsZeroed = initial === undefined;
  }

  async write(offset: number, data: Uint8Array): Promise<void> {
    if (offset < 0 || offset + data.length > this.size) throw new InvalidInputError(`write at ${offset} length ${data.length} is outside ${this.name} (size ${this.size})`);
    this.data.set(data, offset);
  }

  async zeroRange(offset: number, length: number): Promise<void> {
    this.data.fill(0, offset, offset + length);
  }

  async read(offset: number, length: number): Promise<Buffer> {
    return Buffer.from(this.data.subarray(offset, offset + length));
  }

  async flush(): Promise<void> {}
  async close(): Promise<void> {}
}
