// The streaming sha256file parser: every chunk boundary, any JSON layout, strict on damage (IntegrityError naming the object).
import { randomBytes } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { IntegrityError } from '../../../src/util/errors.js';
import {
  Sha256FileParser, parseSha256File, sha256FileText, readSha256Stream, type Sha256FileHeader,
} from '../../../src/repository/format/sha256-file.js';

const WHERE = 'ab/cd/abcd/volume_v_backup_x_sha256file';
const header: Sha256FileHeader = {
  backup_description: 'desc "quoted" \u00e9', backup_id: 'abcd', backup_name: null, chunk_size: 32768,
  created_at: '2026-01-02 03:04:05.123456', version: '1.0.0', volume_id: 'vol',
};

function parse(pieces: Uint8Array[]): { header: Sha256FileHeader & { count: number }; digests: Buffer } {
  const got: Buffer[] = [];
  let next = 0;
  const parser = new Sha256FileParser(WHERE, (first, d) => {
    expect(first).toBe(next); // in order, no gap
    next += d.length / 32;
    got.push(Buffer.from(d));
  });
  for (const p of pieces) parser.push(p);
  return { header: parser.end(), digests: Buffer.concat(got) };
}

function damaged(text: string | Buffer): IntegrityError {
  try {
    parse([Buffer.from(text)]);
  } catch (error) {
    expect(error).toBeInstanceOf(IntegrityError);
    expect((error as Error).message).toContain(WHERE);
    return error as IntegrityError;
  }
  throw new Error('parsed a damaged sha256file');
}

describe('sha256file streaming parser', () => {
  const digests = randomBytes(5 * 32);
  const text = Buffer.concat([...sha256FileText(header, digests)]);

  it('parses a file split at every possible boundary (two pieces), and byte by byte', () => {
    for (let cut = 0; cut <= text.length; cut++) {
      const r = parse([text.subarray(0, cut), text.subarray(cut)]);
      if (!r.digests.equals(digests) || r.header.count !== 5) throw new Error(`cut at ${cut} misparsed`);
      expect(r.header).toEqual({ ...header, count: 5 });
    }
    const bytes = [...text].map((b) => Uint8Array.of(b));
    expect(parse(bytes).digests).toEqual(digests);
  });

  it('matches what Python json.loads reads, for Python\'s own output with header keys after the list and odd whitespace', () => {
    const hex = [...Array(5).keys()].map((i) => digests.toString('hex', i * 32, i * 32 + 32));
    const py = execFileSync('python3', ['-c', `
import json, sys
d = {"sha256s": ${JSON.stringify(hex)}, "version": "1.0.0", "chunk_size": 32768, "backup_id": "abcd",
     "volume_id": "vol", "created_at": "x", "backup_name": None, "backup_description": None, "extra": {"a": [1, "]}"]}}
sys.stdout.write(json.dumps(d))                      # insertion order: sha256s first, compact separators
sys.stdout.write("\\x00")
sys.stdout.write(json.dumps(d, indent="\\t", sort_keys=False, separators=(" ,", " :  ")))
`]);
    const [compact, odd] = py.toString('latin1').split('\0').map((t) => Buffer.from(t, 'latin1'));
    for (const doc of [compact!, odd!, Buffer.from(`\r\n  ${odd!.toString()}  \n`)]) {
      for (let cut = 0; cut <= doc.length; cut += 7) {
        const r = parse([doc.subarray(0, cut), doc.subarray(cut)]);
        expect(r.digests).toEqual(digests);
        expect(r.header.chunk_size).toBe(32768);
        expect(r.header.backup_id).toBe('abcd');
      }
    }
  });

  it('an empty list and a whole-file parse agree with the writer', () => {
    const empty = Buffer.concat([...sha256FileText(header, Buffer.alloc(0))]);
    expect(parse([empty]).header.count).toBe(0);
    expect(parseSha256File(text, WHERE)).toEqual({ ...header, digests });
  });

  it('reads from an async stream and stops on abort', async () => {
    async function* pieces() { for (let i = 0; i < text.length; i += 10) yield text.subarray(i, i + 10); }
    const seen: number[] = [];
    const r = await readSha256Stream(pieces(), WHERE, (first, d) => { seen.push(first, d.length); });
    expect(r.count).toBe(5);
    expect(seen).toEqual([0, 160]);
    const ac = new AbortController();
    ac.abort();
    await expect(readSha256Stream(pieces(), WHERE, undefined, ac.signal)).rejects.toThrow(/abort/);
  });

  it('writes what Python json.dumps(sort_keys=True, indent=2) writes, in pieces of any size, whatever the header length', () => {
    const many = randomBytes(300 * 32);
    // header lengths of both parities (the writer aligns the hex to even bytes) and pieces of 1, 2 and 7 lines
    for (const id of ['abcd', 'abcde']) {
      const h = { ...header, backup_id: id };
      const py = execFileSync('python3', ['-c', `
import json, sys
d = json.loads(sys.stdin.read())
sys.stdout.write(json.dumps(d, sort_keys=True, indent=2))
`], { input: JSON.stringify({ ...h, sha256s: [...Array(300).keys()].map((i) => many.toString('hex', i * 32, i * 32 + 32)) }) });
      for (const pieceBytes of [1, 72 * 2, 72 * 7, 1 << 20]) {
        const pieces = [...sha256FileText(h, many, pieceBytes)];
        expect(Buffer.concat(pieces).equals(py)).toBe(true);
        expect(parse(pieces).digests.equals(many)).toBe(true);
      }
    }
  });

  const good = text.toString('latin1');
  const firstHex = digests.toString('hex', 0, 32);
  const thirdHex = digests.toString('hex', 64, 96);
  it.each([
    ['truncated in the list', good.slice(0, good.indexOf(firstHex) + 30), /not JSON/],
    ['truncated after the list', good.slice(0, good.length - 5), /not JSON/],
    ['a digest one character short', good.replace(firstHex, firstHex.slice(1)), /sha256s\[0\] is not a hex sha256/],
    ['an uppercase digest', good.replace(firstHex, firstHex.toUpperCase()), /sha256s\[0\] is not a hex sha256/],
    ['a non-hex digest', good.replace(firstHex, `z${firstHex.slice(1)}`), /sha256s\[0\] is not a hex sha256/],
    ['a later digest one character short', good.replace(thirdHex, thirdHex.slice(1)), /sha256s\[2\] is not a hex sha256/],
    ['a later uppercase digest', good.replace(thirdHex, thirdHex.toUpperCase()), /sha256s\[2\] is not a hex sha256/],
    ['a later non-hex digest', good.replace(thirdHex, `${thirdHex.slice(0, 63)}g`), /sha256s\[2\] is not a hex sha256/],
    ['a number in the list', good.replace(`"${firstHex}"`, '12'), /sha256s\[0\] is not a hex sha256/],
    ['a trailing comma in the list', good.replace('\n  ],', ',\n  ],'), /sha256s\[5\] is not a hex sha256/],
    ['sha256s not a list', good.replace(/"sha256s": \[[^\]]*\]/, '"sha256s": "x"'), /sha256s is not a list/],
    ['no sha256s', good.replace(/"sha256s": \[[^\]]*\],/, ''), /sha256s is not a list/],
    ['another version', good.replace('"1.0.0"', '"2.0.0"'), /version "2.0.0" is not 1.0.0/],
    ['a bad chunk_size', good.replace('32768', '-1'), /chunk_size is not a positive integer/],
    ['a missing colon', good.replace('"chunk_size":', '"chunk_size"'), /not JSON/],
    ['garbage after the document', `${good}x`, /not JSON/],
    ['not an object', '[1, 2]', /not JSON/],
    ['empty', '', /not JSON/],
    ['a bad header value', good.replace('32768', '32x68'), /not JSON/],
  ])('refuses %s with an IntegrityError naming the object', (_what, doc, pattern) => {
    expect(damaged(doc).message).toMatch(pattern);
  });
});
