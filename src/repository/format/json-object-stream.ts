// An incremental scanner for a top-level JSON object whose one big list member is handed out item by item (the manifest's objects).
import { IntegrityError } from '../../util/errors.js';

function isWs(c: number): boolean {
  return c === 0x20 || c === 0x0a || c === 0x0d || c === 0x09;
}

type State = 'start' | 'first-key' | 'next-key' | 'key' | 'colon' | 'value' | 'capture' | 'comma-or-end' | 'trailing'
  | 'list-start' | 'first-item' | 'next-item' | 'item-capture' | 'item-comma-or-close';

/**
 * Push text in pieces of any size (no I/O, pg-protocol style); end() returns the other members, parsed.
 * Each item of the `listKey` member is parsed alone (JSON.parse of its own text) and given to `onItem`,
 * so the whole document is never one string nor one JSON tree. Every member value and every item must be
 * at most `maxValueBytes` long. Throws the IntegrityError `fail` makes on anything that is not JSON.
 */
export class JsonObjectStream {
  private state: State = 'start';
  private readonly members = new Map<string, unknown>();
  private key = '';
  private pieces: Buffer[] = [];
  private pieceBytes = 0;
  private depth = 0;
  private inString = false;
  private escape = false;
  private scalar = false;
  private consumed = 0;
  private items = 0;
  private sawList = false;

  constructor(
    private readonly listKey: string,
    private readonly onItem: (item: unknown, index: number) => void,
    private readonly fail: (what: string) => IntegrityError,
    private readonly maxValueBytes = 16 << 20,
  ) {}

  private syntax(c: number | undefined, expected: string, at: number): IntegrityError {
    const found = c === undefined ? 'the end of the text' : `"${String.fromCharCode(c)}"`;
    return this.fail(`not JSON (expected ${expected} at byte ${at}, found ${found})`);
  }

  /** Parses one more piece. Throws IntegrityError. */
  push(piece: Uint8Array): void {
    const buf = Buffer.from(piece.buffer, piece.byteOffset, piece.byteLength);
    const base = this.consumed;
    let from = this.state === 'key' || this.state === 'capture' || this.state === 'item-capture' ? 0 : -1;
    let i = 0;
    while (i < buf.length) {
      const c = buf[i]!;
      if (this.state === 'key' || this.state === 'capture' || this.state === 'item-capture') {
        const end = this.scan(buf, i);
        if (end < 0) break; // the value goes on in the next piece
        this.take(buf.subarray(from, end));
        from = -1;
        i = end;
        this.complete(base + i);
        continue;
      }
      if (isWs(c)) { i++; continue; }
      switch (this.state) {
        case 'start':
          if (c !== 0x7b) throw this.syntax(c, '"{"', base + i);
          this.state = 'first-key';
          break;
        case 'first-key':
        case 'next-key':
          if (c === 0x7d && this.state === 'first-key') { this.state = 'trailing'; break; }
          if (c !== 0x22) throw this.syntax(c, 'a key', base + i);
          this.begin(c, 'key');
          from = i;
          continue;
        case 'colon':
          if (c !== 0x3a) throw this.syntax(c, '":"', base + i);
          if (this.key === this.listKey && this.sawList) throw this.fail(`${this.listKey} appears twice`);
          this.state = this.key === this.listKey ? 'list-start' : 'value';
          break;
        case 'value':
          this.begin(c, 'capture');
          from = i;
          continue;
        case 'comma-or-end':
          if (c === 0x2c) this.state = 'next-key';
          else if (c === 0x7d) this.state = 'trailing';
          else throw this.syntax(c, '"," or "}"', base + i);
          break;
        case 'list-start':
          if (c !== 0x5b) throw this.fail(`${this.listKey} is not a list`);
          this.sawList = true;
          this.state = 'first-item';
          break;
        case 'first-item':
        case 'next-item':
          if (c === 0x5d && this.state === 'first-item') { this.state = 'comma-or-end'; break; }
          if (c === 0x5d || c === 0x2c) throw this.syntax(c, `an item of ${this.listKey}`, base + i);
          this.begin(c, 'item-capture');
          from = i;
          continue;
        case 'item-comma-or-close':
          if (c === 0x2c) this.state = 'next-item';
          else if (c === 0x5d) this.state = 'comma-or-end';
          else throw this.syntax(c, `"," or "]" in ${this.listKey}`, base + i);
          break;
        case 'trailing':
          throw this.syntax(c, 'the end of the text', base + i);
      }
      i++;
    }
    if (from >= 0) this.take(Buffer.from(buf.subarray(from))); // a copy: the caller may reuse its buffer
    this.consumed = base + buf.length;
  }

  private begin(c: number, state: 'key' | 'capture' | 'item-capture'): void {
    this.pieces = [];
    this.pieceBytes = 0;
    this.depth = 0;
    this.inString = false;
    this.escape = false;
    this.scalar = c !== 0x22 && c !== 0x7b && c !== 0x5b;
    this.state = state;
  }

  private take(piece: Buffer): void {
    this.pieces.push(piece);
    this.pieceBytes += piece.length;
    if (this.pieceBytes > this.maxValueBytes) throw this.fail(`a value is longer than ${this.maxValueBytes} bytes`);
  }

  /** Scans from `i`; returns the index just past the value's end, or -1 when it goes on in the next piece. */
  private scan(buf: Buffer, i: number): number {
    for (; i < buf.length; i++) {
      const c = buf[i]!;
      if (this.scalar) {
        if (c === 0x2c || c === 0x7d || c === 0x5d || isWs(c)) return i;
        continue;
      }
      if (this.inString) {
        if (this.escape) this.escape = false;
        else if (c === 0x5c) this.escape = true;
        else if (c === 0x22) {
          this.inString = false;
          if (this.depth === 0) return i + 1;
        }
      } else if (c === 0x22) this.inString = true;
      else if (c === 0x7b || c === 0x5b) this.depth++;
      else if (c === 0x7d || c === 0x5d) {
        this.depth--;
        if (this.depth === 0) return i + 1;
      }
    }
    return -1;
  }

  private complete(at: number): void {
    const text = (this.pieces.length === 1 ? this.pieces[0]! : Buffer.concat(this.pieces)).toString('utf8');
    this.pieces = [];
    let value: unknown;
    try {
      value = JSON.parse(text);
    } catch (error) {
      throw this.fail(`not JSON (${(error as Error).message} in the value ending at byte ${at})`);
    }
    if (this.state === 'key') {
      this.key = value as string;
      this.state = 'colon';
    } else if (this.state === 'capture') {
      this.members.set(this.key, value);
      this.state = 'comma-or-end';
    } else {
      this.onItem(value, this.items++);
      this.state = 'item-comma-or-close';
    }
  }

  /** Checks the document ended; returns the members other than the list. Throws IntegrityError. */
  end(): { members: Map<string, unknown>; sawList: boolean; items: number } {
    if (this.state !== 'trailing') throw this.syntax(undefined, 'the rest of the document', this.consumed);
    return { members: this.members, sawList: this.sawList, items: this.items };
  }
}
