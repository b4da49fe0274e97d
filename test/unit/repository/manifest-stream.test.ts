// The manifest written in pieces is byte-identical to json.dumps(sort_keys=True, indent=2) of the whole value.
import { IntegrityError } from '../../../src/util/errors.js';
import { serializeMetadata, serializeMetadataPieces, parseMetadata, parseMetadataStream, type BackupMetadata } from '../../../src/repository/format/manifest.js';
import { pythonJsonDumps, type JsonValue } from '../../../src/repository/format/python-json.js';

function manifest(objects: number, extra: boolean): BackupMetadata {
  return {
    backup_description: 'd\u00e9sc', backup_id: 'b1', backup_name: null, created_at: '2026-01-01 00:00:00.5',
    ...(extra ? { extra_metadata: { fleece: { fleece_version: '0.1.0', virtual_size: 1 << 30, sha_block_size: 32768, chunk_size: 4 << 20, mode: 'full' as const, bytes_read: 3, bytes_stored: 2, vm: 'v\u2603' } } } : {}),
    objects: Array.from({ length: objects }, (_, i) => ({ name: `volume_v_backup_b1-${String(i + 1).padStart(5, '0')}`, compression: 'zstd' as const, length: 4194304 - i, md5: 'd41d8cd98f00b204e9800998ecf8427e', offset: i * 4194304 })),
    parent_id: objects % 2 ? 'p0' : null, version: '1.0.0', volume_id: 'vol', volume_meta: null,
  };
}

function reference(meta: BackupMetadata): string {
  const { objects, extra_metadata, ...rest } = meta;
  return pythonJsonDumps({
    ...rest, objects: objects.map((o) => ({ [o.name]: { compression: o.compression, length: o.length, md5: o.md5, offset: o.offset } })),
    ...(extra_metadata ? { extra_metadata: extra_metadata as unknown as JsonValue } : {}),
  } as JsonValue);
}

it.each([[0, false], [1, true], [3000, true], [3001, false]])('%d objects (extra_metadata %s): pieces join to the reference text, and parse back', (n, extra) => {
  const meta = manifest(n, extra);
  const pieces = [...serializeMetadataPieces(meta, 4096)];
  const text = Buffer.concat(pieces).toString('utf8');
  expect(text).toBe(reference(meta));
  expect(serializeMetadata(meta)).toBe(text);
  if (n > 100) expect(pieces.length).toBeGreaterThan(10);
  expect(parseMetadata(text, 'x')).toEqual(meta);
});

describe('parseMetadataStream', () => {
  const meta = manifest(3, true);
  const text = Buffer.from(serializeMetadata(meta));
  async function* split(buf: Buffer, at: number[]) { let prev = 0; for (const a of [...at, buf.length]) { yield buf.subarray(prev, a); prev = a; } }

  it('reads a manifest split at every boundary, and in any layout or key order', async () => {
    for (let cut = 0; cut <= text.length; cut++) {
      const got = await parseMetadataStream(split(text, [cut]), 'x');
      if (serializeMetadata(got) !== text.toString()) throw new Error(`cut at ${cut} misparsed`);
    }
    const raw = JSON.parse(text.toString()) as Record<string, unknown>;
    const reordered = { objects: raw.objects, ...raw, extra: [1, { a: '}]"' }] };
    for (const layout of [JSON.stringify(reordered), JSON.stringify(reordered, null, '\t'), `\n ${JSON.stringify(reordered, null, 1)}\r\n`]) {
      const buf = Buffer.from(layout);
      for (let cut = 0; cut <= buf.length; cut += 5) expect(await parseMetadataStream(split(buf, [cut, Math.min(buf.length, cut + 3)]), 'x')).toEqual(meta);
    }
  });

  it.each([
    ['truncated', (t: string) => t.slice(0, t.length - 20), /not JSON/],
    ['a trailing comma in objects', (t: string) => t.replace(/\}\n {2}\],/, '},\n  ],'), /not JSON/],
    ['a bad md5', (t: string) => t.replace('d41d8cd98f00b204e9800998ecf8427e', 'x'), /has no valid md5/],
    ['objects not a list', (t: string) => t.replace(/"objects": \[[\s\S]*?\n {2}\]/, '"objects": 5'), /objects is not a list/],
    ['a newer version', (t: string) => t.replace('"1.0.0"', '"9"'), /of format 9, written by a newer fleece/],
    ['a version that is not one', (t: string) => t.replace('"1.0.0"', '"x"'), /version "x" is not 1.0.0/],
    ['garbage after', (t: string) => `${t} x`, /not JSON/],
    ['a top-level list', () => '[1]', /not JSON/],
  ])('refuses %s with an IntegrityError naming the object', async (_what, damage, pattern) => {
    const bad = Buffer.from(damage(text.toString()));
    const error = await parseMetadataStream(split(bad, [7]), 'c/x_metadata').catch((e: unknown) => e);
    expect(error).toBeInstanceOf(IntegrityError);
    expect((error as Error).message).toContain('c/x_metadata');
    expect((error as Error).message).toMatch(pattern);
  });
});
