// The BlockSink port: where a restore writes a disk image (a sparse raw file, an existing file or device, later NBD).

/**
 * Contract: `write` and `zeroRange` take byte ranges within `size`; after `flush` resolves the data is durable;
 * `close` releases the target and is safe to call twice. `read` (optional) returns what the target holds,
 * for the final re-hash; a sink without it skips that check.
 */
export interface BlockSink {
  /** A human-readable name for messages (a path, a URL). */
  readonly name: string;
  readonly size: number;
  /** True when the target reads zeros everywhere before the restore writes (a new sparse file). */
  readonly startsZeroed: boolean;
  write(offset: number, data: Uint8Array): Promise<void>;
  /** Makes a range read as zeros (punch a hole or write zeros). */
  zeroRange(offset: number, length: number): Promise<void>;
  /** `into`: a buffer of at least `length` bytes to read into (its start is returned), else a new one. */
  read?(offset: number, length: number, into?: Buffer): Promise<Buffer>;
  flush(): Promise<void>;
  close(): Promise<void>;
}
