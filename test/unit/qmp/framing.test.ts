import { QmpDecoder, encodeMessage } from '../../../src/qmp/framing.js';
import { QmpProtocolError } from '../../../src/qmp/errors.js';

const reply = { return: { status: 'running', name: 'vm-€-ünïcødé' }, id: 'fleece-1-7' };
const event = { timestamp: { seconds: 1, microseconds: 2 }, event: 'JOB_STATUS_CHANGE', data: { status: 'created', id: 'j0' } };
const wire = Buffer.from(`${JSON.stringify(event)}\r\n${JSON.stringify(reply)}\r\n`, 'utf8');

function feedInPieces(decoder: QmpDecoder, bytes: Buffer, cuts: number[]): Record<string, unknown>[] {
  const out: Record<string, unknown>[] = [];
  let start = 0;
  for (const cut of [...cuts, bytes.length]) {
    out.push(...decoder.push(bytes.subarray(start, cut)));
    start = cut;
  }
  return out;
}

describe('QmpDecoder', () => {
  it('decodes several messages delivered in one chunk, in order', () => {
    const decoder = new QmpDecoder();
    expect(decoder.push(wire)).toEqual([event, reply]);
    expect(decoder.bufferedBytes).toBe(0);
  });

  it('reassembles the stream whatever single byte boundary it is split at (including inside UTF-8 characters)', () => {
    for (let cut = 1; cut < wire.length; cut++) {
      const decoder = new QmpDecoder();
      expect(feedInPieces(decoder, wire, [cut])).toEqual([event, reply]);
    }
  });

  it('reassembles the stream delivered one byte at a time', () => {
    const decoder = new QmpDecoder();
    const cuts = Array.from({ length: wire.length - 1 }, (_, i) => i + 1);
    expect(feedInPieces(decoder, wire, cuts)).toEqual([event, reply]);
  });

  it('decodes a three-byte character split across two chunks', () => {
    const bytes = Buffer.from('{"return": "€"}\r\n', 'utf8');
    const euro = bytes.indexOf(0xe2);
    const decoder = new QmpDecoder();
    expect(decoder.push(bytes.subarray(0, euro + 1))).toEqual([]);
    expect(decoder.push(bytes.subarray(euro + 1, euro + 2))).toEqual([]);
    expect(decoder.push(bytes.subarray(euro + 2))).toEqual([{ return: '€' }]);
  });

  it('does not keep a reference to the caller buffer it was given', () => {
    const decoder = new QmpDecoder();
    const chunk = Buffer.from('{"return": 1');
    decoder.push(chunk);
    chunk.fill(0x20);
    expect(decoder.push(Buffer.from('}\n'))).toEqual([{ return: 1 }]);
  });

  it('accepts bare \\n and skips blank lines', () => {
    const decoder = new QmpDecoder();
    expect(decoder.push(Buffer.from('\r\n\n{"return": 1}\n\r\n{"return": 2}\n'))).toEqual([{ return: 1 }, { return: 2 }]);
  });

  it('refuses a line that is not JSON, or JSON that is not an object', () => {
    expect(() => new QmpDecoder().push(Buffer.from('hello\r\n'))).toThrow(QmpProtocolError);
    expect(() => new QmpDecoder().push(Buffer.from('[1,2]\r\n'))).toThrow(/not an object/);
  });

  it('refuses a runaway line longer than the limit', () => {
    const decoder = new QmpDecoder({ maxLineBytes: 16 });
    decoder.push(Buffer.from('{"return": '));
    expect(() => decoder.push(Buffer.from('"0123456789"'))).toThrow(/longer than 16 bytes/);
  });

  it('encodes a message as one JSON line that decodes back to itself', () => {
    const message = { execute: 'human-monitor-command', arguments: { 'command-line': 'info \n "x" é' }, id: 'a-1' };
    const bytes = encodeMessage(message);
    expect(bytes.indexOf(0x0a)).toBe(bytes.length - 1);
    expect(new QmpDecoder().push(bytes)).toEqual([message]);
  });
});
