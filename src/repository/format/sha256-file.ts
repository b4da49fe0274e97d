// The `<prefix>_sha256file`: one hex sha256 per sha block of the whole disk, written and read streaming (never one giant string).
import { IntegrityError, throwIfAborted } from '../../util/errors.js';
import { FORMAT_VERSION } from './naming.js';
import { pythonJsonString } from './python-json.js';

export const DIGEST_BYTES = 32;

/** The header fields of a sha256file (the digests are kept apart). */
export interface Sha256FileHeader {
  backup_description: string | null;
  backup_id: string;
  backup_name: string | null;
  /** The sha block size in bytes. */
  chunk_size: number;
  created_at: string;
  version: string;
  volume_id: string;
}

export interface Sha256File extends Sha256FileHeader {
  /** Concatenated binary digests, 32 bytes per block. */
  digests: Buffer;
}

/** Where digests come from when writing: a Buffer, or anything that reads ranges (a DigestTable). */
export interface DigestSource {
  readonly length: number;
  read(first: number, count: number): Buffer;
}

function nullable(s: string | null): string {
  return s === null ? 'null' : pythonJsonString(s);
}

/**
 * Yields the sha256file text in pieces of about `pieceBytes`, byte-identical to Python's
 * json.dumps(sort_keys=True, indent=2), without ever building one giant string.
 */
export function* sha256FileText(header: Sha256FileHeader, digests: Buffer | DigestSource, pieceBytes = 1 << 20): Generator<Buffer> {
  const source: DigestSource = Buffer.isBuffer(digests)
    ? { length: digests.length / DIGEST_BYTES, read: (first, count) => digests.subarray(first * DIGEST_BYTES, (first + count) * DIGEST_BYTES) }
    : digests;
  const count = source.length;
  let head = '{\n'
    + `  "backup_description": ${nullable(header.backup_description)},\n`
    + `  "backup_id": ${pythonJsonString(header.backup_id)},\n`
    + `  "backup_name": ${nullable(header.backup_name)},\n`
    + `  "chunk_size": ${header.chunk_size},\n`
    + `  "created_at": ${pythonJsonString(header.created_at)},\n`;
  head += count === 0 ? '  "sha256s": [],\n' : '  "sha256s": [';
  let piece = Buffer.from(head, 'latin1');
  const linesPerPiece = Math.max(1, Math.floor(pieceBytes / LINE_BYTES));
  for (let i = 0; i < count; i += linesPerPiece) {
    const lines = Math.min(count, i + linesPerPiece) - i;
    yield digestLines(piece, source.read(i, lines), lines, i === 0);
    piece = Buffer.alloc(0);
  }
  let tail = count > 0 ? '\n  ],\n' : '';
  tail += `  "version": ${pythonJsonString(header.version)},\n  "volume_id": ${pythonJsonString(header.volume_id)}\n}`;
  yield Buffer.concat([piece, Buffer.from(tail, 'latin1')]);
}

/** `,\n    "` + 64 hex + `"`: one digest's line (the first has no comma). */
const LINE_BYTES = 4 + 2 + 64 + 2;
/** Two ASCII hex digits per byte value, as one 16-bit store (laid out byte by byte: any endianness). */
const HEX_PAIRS = new Uint16Array(new Uint8Array(Buffer.from(Array.from({ length: 256 }, (_, v) => v.toString(16).padStart(2, '0')).join(''), 'latin1')).buffer);
/** `"` `,` `\n` and four spaces then `"`: what comes between two digests' hex, as four 16-bit stores. */
const BETWEEN16 = new Uint16Array(new Uint8Array(Buffer.from('",\n    "', 'latin1')).buffer);

/**
 * `prefix` then `lines` digest lines, as ASCII straight into one Buffer (no per-digest strings: a 2 TiB disk has
 * 64 Mi of them). The buffer is placed so that every digest's hex starts at an even byte: then each pair of hex
 * digits, and the 8 bytes between two digests, are 16-bit stores.
 */
function digestLines(prefix: Buffer, digests: Buffer, lines: number, first: boolean): Buffer {
  const length = prefix.length + lines * LINE_BYTES - (first ? 1 : 0);
  const hexStart = prefix.length + (first ? 6 : 7); // `\n    "` (and a comma unless first) before the first hex
  const shift = hexStart & 1;
  const mem = Buffer.allocUnsafeSlow(length + 2);
  const u16 = new Uint16Array(mem.buffer, mem.byteOffset, (length + 2) >> 1);
  const out = mem.subarray(shift, shift + length);
  prefix.copy(out, 0);
  // the first line's lead-in (`,` only when not the first line of the file), then its hex and the closing quote
  let at = prefix.length;
  if (!first) out[at++] = 0x2c;
  out[at++] = 0x0a; out[at++] = 0x20; out[at++] = 0x20; out[at++] = 0x20; out[at++] = 0x20; out[at++] = 0x22;
  let w = (hexStart + shift) >> 1; // in 16-bit words of `mem`
  for (let b = 0; b < lines; b++) {
    if (b > 0) { u16[w] = BETWEEN16[0]!; u16[w + 1] = BETWEEN16[1]!; u16[w + 2] = BETWEEN16[2]!; u16[w + 3] = BETWEEN16[3]!; w += 4; }
    const base = b * DIGEST_BYTES;
    for (let k = 0; k < DIGEST_BYTES; k++) u16[w + k] = HEX_PAIRS[digests[base + k]!]!;
    w += DIGEST_BYTES;
  }
  out[length - 1] = 0x22;
  return out;
}

/** An async iterable over sha256FileText, for ObjectStore.put. */
export async function* sha256FileStream(header: Sha256FileHeader, digests: Buffer | DigestSource): AsyncGenerator<Buffer> {
  yield* sha256FileText(header, digests);
}

/** Receives digests in ascending block order; `digests` (n × 32 bytes) is only valid during the call. */
export type DigestSink = (first: number, digests: Buffer) => void;

/** The byte two lowercase hex digits stand for, by (first << 8 | second); -1 for anything else. Made on first use. */
let HEX_PAIR_VALUES: Int16Array | undefined;
function hexPairs(): Int16Array {
  if (HEX_PAIR_VALUES) return HEX_PAIR_VALUES;
  const table = new Int16Array(65536).fill(-1);
  const digits = '0123456789abcdef';
  for (let v = 0; v < 256; v++) table[(digits.charCodeAt(v >> 4) << 8) | digits.charCodeAt(v & 15)] = v;
  HEX_PAIR_VALUES = table;
  return table;
}

function isWs(c: number): boolean {
  return c === 0x20 || c === 0x0a || c === 0x0d || c === 0x09;
}

/** Longest text accepted for one header value (an unknown key's value included). */
const MAX_VALUE_BYTES = 1 << 20;
/** Digests handed to the sink at once. */
const BATCH = 2048;

type State =
  | 'start' | 'key-or-end' | 'key-after-comma' | 'key' | 'colon' | 'value' | 'capture' | 'comma-or-end' | 'trailing'
  | 'list-start' | 'item-or-close' | 'item' | 'item-comma-or-close';

/**
 * An incremental sha256file parser with no I/O (pg-protocol style): push() the text in pieces of any size,
 * then end() returns the header and the digest count. Digests go to the sink as they are parsed. Accepts any
 * JSON layout (whitespace, key order, header keys after the list); checks as strictly as a whole-file parse:
 * lowercase 64-hex digests, version 1.0.0, a positive integer chunk_size. Throws IntegrityError naming `where`.
 */
export class Sha256FileParser {
  private state: State = 'start';
  private readonly values = new Map<string, unknown>();
  private key = '';
  private capture: number[] = [];
  private capDepth = 0;
  private capInString = false;
  private capEscape = false;
  private capScalar = false;
  private offset = 0;
  private count = 0;
  private sawList = false;
  private readonly batch = Buffer.alloc(BATCH * DIGEST_BYTES);
  private batchFill = 0;
  private batchFirst = 0;
  /** An item (quoted hex) split across pieces. */
  private partial: number[] = [];

  constructor(private readonly where: string, private readonly sink?: DigestSink) {}

  private fail(what: string): IntegrityError {
    return new IntegrityError(`sha256file ${this.where} is not valid: ${what}`, {
      hint: 'the object is damaged; restore from another backup or run verify',
    });
  }

  private syntax(c: number | undefined, expected: string): IntegrityError {
    const found = c === undefined ? 'the end of the text' : `"${String.fromCharCode(c)}"`;
    return this.fail(`not JSON (expected ${expected} at byte ${this.offset}, found ${found})`);
  }

  /** Parses one more piece of text. Throws IntegrityError. */
  push(piece: Uint8Array): void {
    const buf = piece;
    const n = buf.length;
    let i = 0;
    while (i < n) {
      const c = buf[i]!;
      switch (this.state) {
        case 'start':
          if (isWs(c)) break;
          if (c !== 0x7b) throw this.syntax(c, '"{"');
          this.state = 'key-or-end';
          break;
        case 'key-or-end':
          if (isWs(c)) break;
          if (c === 0x7d && this.values.size === 0 && !this.sawList) { this.state = 'trailing'; break; }
          if (c !== 0x22) throw this.syntax(c, 'a key');
          this.beginCapture(c, 'key');
          break;
        case 'key':
        case 'capture': {
          const done = this.captureByte(c);
          if (done === 'more') break;
          if (done === 'reprocess') { this.finishCapture(); continue; }
          this.finishCapture();
          break;
        }
        case 'colon':
          if (isWs(c)) break;
          if (c !== 0x3a) throw this.syntax(c, '":"');
          this.state = this.key === 'sha256s' ? 'list-start' : 'value';
          if (this.key === 'sha256s' && this.sawList) throw this.fail('sha256s appears twice');
          break;
        case 'value':
          if (isWs(c)) break;
          this.beginCapture(c, 'capture');
          break;
        case 'comma-or-end':
          if (isWs(c)) break;
          if (c === 0x2c) this.state = 'key-after-comma';
          else if (c === 0x7d) this.state = 'trailing';
          else throw this.syntax(c, '"," or "}"');
          break;
        case 'trailing':
          if (!isWs(c)) throw this.syntax(c, 'the end of the text');
          break;
        case 'list-start':
          if (isWs(c)) break;
          if (c !== 0x5b) throw this.fail('sha256s is not a list');
          this.sawList = true;
          this.state = 'item-or-close';
          break;
        case 'item-or-close':
          if (isWs(c)) break;
          if (c === 0x5d && this.count === 0) { this.endList(); break; }
          this.state = 'item';
          continue;
        case 'item': {
          if (this.partial.length === 0) {
            if (isWs(c)) break;
            // fast path: the whole quoted digest is in this piece
            if (c === 0x22 && i + 65 < n && buf[i + 65] === 0x22 && this.decodeInto(buf, i + 1)) {
              i += 66;
              this.offset += 66;
              this.state = 'item-comma-or-close';
              continue;
            }
            if (c !== 0x22) throw this.fail(`sha256s[${this.count}] is not a hex sha256`);
          }
          this.partial.push(c);
          if (this.partial.length === 66) {
            const p = Uint8Array.from(this.partial);
            if (p[65] !== 0x22 || !this.decodeInto(p, 1)) throw this.fail(`sha256s[${this.count}] is not a hex sha256`);
            this.partial = [];
            this.state = 'item-comma-or-close';
          } else if (c === 0x22 && this.partial.length > 1) {
            throw this.fail(`sha256s[${this.count}] is not a hex sha256`);
          }
          break;
        }
        case 'item-comma-or-close':
          if (isWs(c)) break;
          if (c === 0x2c) {
            // fast path: the next items (comma, whitespace, the quoted digest) wholly in this piece, without a state per byte
            const after = this.items(buf, i, n);
            if (after > i) {
              this.offset += after - i;
              i = after;
              continue;
            }
            this.state = 'item';
          }
          else if (c === 0x5d) this.endList();
          else throw this.syntax(c, '"," or "]" in sha256s');
          break;
        case 'key-after-comma':
          if (isWs(c)) break;
          if (c !== 0x22) throw this.syntax(c, 'a key');
          this.beginCapture(c, 'key');
          break;
      }
      i++;
      this.offset++;
    }
  }

  /**
   * Decodes the items `,` whitespace `"<64 hex>"` from `i` on while each lies wholly before `n`; returns where it
   * stopped (`i` when none). A small loop of its own, so that it is optimised early (it runs once per process).
   */
  private items(buf: Uint8Array, i: number, n: number): number {
    for (;;) {
      if (buf[i] !== 0x2c) return i;
      let j = i + 1;
      while (j < n && isWs(buf[j]!)) j++;
      if (j + 65 >= n || buf[j] !== 0x22 || buf[j + 65] !== 0x22) return i;
      this.decodeInto(buf, j + 1);
      i = j + 66;
    }
  }

  /** Decodes 64 lowercase hex characters at `at` into the batch; false when they are not. */
  private decodeInto(buf: Uint8Array, at: number): boolean {
    const out = this.batchFill * DIGEST_BYTES;
    const pairs = hexPairs();
    for (let k = 0; k < DIGEST_BYTES; k++) {
      const v = pairs[(buf[at + 2 * k]! << 8) | buf[at + 2 * k + 1]!]!;
      if (v < 0) throw this.fail(`sha256s[${this.count}] is not a hex sha256`);
      this.batch[out + k] = v;
    }
    this.count++;
    this.batchFill++;
    if (this.batchFill === BATCH) this.flushBatch();
    return true;
  }

  private flushBatch(): void {
    if (this.batchFill > 0) this.sink?.(this.batchFirst, this.batch.subarray(0, this.batchFill * DIGEST_BYTES));
    this.batchFirst += this.batchFill;
    this.batchFill = 0;
  }

  private endList(): void {
    this.flushBatch();
    this.state = 'comma-or-end';
  }

  private beginCapture(c: number, state: 'key' | 'capture'): void {
    this.capture = [c];
    this.capDepth = c === 0x7b || c === 0x5b ? 1 : 0;
    this.capInString = c === 0x22;
    this.capEscape = false;
    this.capScalar = c !== 0x22 && c !== 0x7b && c !== 0x5b;
    this.state = state;
  }

  /** Feeds one byte of a value or key: 'more', 'done' (byte consumed, value complete), 'reprocess' (ends before it). */
  private captureByte(c: number): 'more' | 'done' | 'reprocess' {
    if (this.capScalar) {
      if (c === 0x2c || c === 0x7d || c === 0x5d || isWs(c)) return 'reprocess';
      this.capture.push(c);
    } else {
      this.capture.push(c);
      if (this.capInString) {
        if (this.capEscape) this.capEscape = false;
        else if (c === 0x5c) this.capEscape = true;
        else if (c === 0x22) {
          this.capInString = false;
          if (this.capDepth === 0) return 'done';
        }
      } else if (c === 0x22) this.capInString = true;
      else if (c === 0x7b || c === 0x5b) this.capDepth++;
      else if (c === 0x7d || c === 0x5d) {
        this.capDepth--;
        if (this.capDepth === 0) return 'done';
      }
    }
    if (this.capture.length > MAX_VALUE_BYTES) throw this.fail(`a value is longer than ${MAX_VALUE_BYTES} bytes`);
    return 'more';
  }

  private finishCapture(): void {
    let value: unknown;
    const text = Buffer.from(this.capture).toString('utf8');
    this.capture = [];
    try {
      value = JSON.parse(text);
    } catch (error) {
      throw this.fail(`not JSON (${(error as Error).message} near byte ${this.offset})`);
    }
    if (this.state === 'key') {
      this.key = value as string;
      if (this.key !== 'sha256s' && this.values.has(this.key)) this.values.delete(this.key); // last one wins, as JSON.parse
      this.state = 'colon';
    } else {
      if (this.key === 'sha256s') throw this.fail('sha256s is not a list');
      this.values.set(this.key, value);
      this.state = 'comma-or-end';
    }
  }

  /** Checks the whole document was seen; returns the header and the digest count. Throws IntegrityError. */
  end(): Sha256FileHeader & { count: number } {
    if (this.state === 'capture' && this.capScalar) this.finishCapture();
    if (this.state !== 'trailing') throw this.syntax(undefined, this.sawList ? 'the rest of the document' : 'more text');
    const raw = this.values;
    if (raw.get('version') !== FORMAT_VERSION) throw this.fail(`version ${JSON.stringify(raw.get('version'))} is not ${FORMAT_VERSION}`);
    const size = raw.get('chunk_size');
    if (typeof size !== 'number' || !Number.isSafeInteger(size) || size <= 0) throw this.fail('chunk_size is not a positive integer');
    if (!this.sawList) throw this.fail('sha256s is not a list');
    return {
      backup_description: (raw.get('backup_description') as string | null | undefined) ?? null,
      backup_id: String(raw.get('backup_id')),
      backup_name: (raw.get('backup_name') as string | null | undefined) ?? null,
      chunk_size: size,
      created_at: String(raw.get('created_at') ?? ''),
      version: FORMAT_VERSION,
      volume_id: String(raw.get('volume_id')),
      count: this.count,
    };
  }
}

/**
 * Reads a sha256file from a stream of pieces, handing digests to `sink` in order. Returns the header and count.
 * Throws IntegrityError naming `where` when damaged, AbortedError, and whatever the source throws (StoreError…).
 */
export async function readSha256Stream(source: AsyncIterable<Uint8Array>, where: string, sink?: DigestSink, signal?: AbortSignal): Promise<Sha256FileHeader & { count: number }> {
  const parser = new Sha256FileParser(where, sink);
  for await (const piece of source) {
    throwIfAborted(signal, `reading ${where}`);
    parser.push(piece);
  }
  return parser.end();
}

/** Parses a whole sha256file held in memory (small disks, tests). Throws IntegrityError when damaged. */
export function parseSha256File(text: string | Buffer, where: string): Sha256File {
  const pieces: Buffer[] = [];
  const parser = new Sha256FileParser(where, (_first, d) => { pieces.push(Buffer.from(d)); });
  parser.push(typeof text === 'string' ? Buffer.from(text, 'utf8') : text);
  const { count: _count, ...header } = parser.end();
  return { ...header, digests: Buffer.concat(pieces) };
}
