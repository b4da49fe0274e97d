// Splits the QMP byte stream into JSON messages and encodes outgoing ones; pure, no I/O (fed arbitrary chunks).
import { QmpProtocolError } from './errors.js';

const NEWLINE = 0x0a;

/** Lines longer than this are refused: QEMU never sends one, a runaway peer would exhaust memory. */
export const DEFAULT_MAX_LINE_BYTES = 64 * 1024 * 1024;

/**
 * Turns chunks read from a QMP socket into parsed JSON messages.
 * QEMU writes one JSON object per line ending in `\r\n`; a chunk may hold part of a message, several messages,
 * or split a multi-byte UTF-8 character. Splitting on the newline byte is safe for UTF-8 (0x0a never occurs
 * inside a multi-byte sequence), so lines are decoded only once complete.
 */
export class QmpDecoder {
  readonly #maxLineBytes: number;
  #pending: Buffer[] = [];
  #pendingBytes = 0;

  constructor(options: { maxLineBytes?: number } = {}) {
    this.#maxLineBytes = options.maxLineBytes ?? DEFAULT_MAX_LINE_BYTES;
  }

  /** Bytes held back waiting for the end of their line. */
  get bufferedBytes(): number {
    return this.#pendingBytes;
  }

  /**
   * Feeds one chunk; returns the messages it completed, in order.
   * @throws QmpProtocolError when a complete line is not a JSON object, or a line exceeds the size limit.
   */
  push(chunk: Buffer | Uint8Array): Record<string, unknown>[] {
    const messages: Record<string, unknown>[] = [];
    let start = 0;
    for (;;) {
      const end = chunk.indexOf(NEWLINE, start);
      if (end === -1) break;
      const piece = chunk.subarray(start, end);
      let line: Buffer;
      if (this.#pending.length > 0) {
        line = Buffer.concat([...this.#pending, piece]);
        this.#pending = [];
        this.#pendingBytes = 0;
      } else {
        line = Buffer.from(piece.buffer, piece.byteOffset, piece.byteLength);
      }
      start = end + 1;
      const message = parseLine(line);
      if (message !== undefined) messages.push(message);
    }
    if (start < chunk.length) {
      const rest = chunk.subarray(start);
      this.#pendingBytes += rest.length;
      if (this.#pendingBytes > this.#maxLineBytes) {
        this.#pending = [];
        this.#pendingBytes = 0;
        throw new QmpProtocolError(`QMP peer sent a line longer than ${this.#maxLineBytes} bytes without a newline`, {
          hint: 'the peer is not a QMP monitor, or is misbehaving; check the socket path',
        });
      }
      // Copy: the caller may reuse its buffer.
      this.#pending.push(Buffer.from(rest));
    }
    return messages;
  }
}

function parseLine(line: Buffer): Record<string, unknown> | undefined {
  const text = line.toString('utf8').trim();
  if (text.length === 0) return undefined;
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (error) {
    throw new QmpProtocolError(`QMP peer sent a line that is not JSON: ${abbreviate(text)}`, {
      cause: error,
      hint: 'the peer is not a QMP monitor, or is misbehaving; check the socket path',
    });
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new QmpProtocolError(`QMP peer sent JSON that is not an object: ${abbreviate(text)}`, {
      hint: 'the peer is not a QMP monitor; check the socket path',
    });
  }
  return value as Record<string, unknown>;
}

function abbreviate(text: string): string {
  return text.length > 200 ? `${text.slice(0, 200)}…` : text;
}

/** Encodes one outgoing message as a line of JSON (QEMU accepts `\n`-terminated objects). */
export function encodeMessage(message: object): Buffer {
  return Buffer.from(`${JSON.stringify(message)}\n`, 'utf8');
}
