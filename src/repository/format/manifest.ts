// The `<prefix>_metadata` manifest: its types, fleece's extra_metadata, writing it and reading it back strictly.
import { IntegrityError } from '../../util/errors.js';
import { FORMAT_VERSION } from './naming.js';
import { JsonObjectStream } from './json-object-stream.js';
import { pythonJsonDumpsAt, pythonJsonString, type JsonValue } from './python-json.js';

export type Compression = 'none' | 'zlib' | 'bz2' | 'zstd';
export const COMPRESSIONS: readonly Compression[] = ['none', 'zlib', 'bz2', 'zstd'];

/** One data object as the manifest lists it. */
export interface ObjectEntry {
  name: string;
  compression: Compression;
  /** Uncompressed length in bytes. */
  length: number;
  /** Hex md5 of the uncompressed data. */
  md5: string;
  /** Byte offset on the disk. */
  offset: number;
}

/** What fleece adds, stored as `extra_metadata.fleece`; every field optional so Cinder-written backups read too. */
export interface FleeceExtra {
  fleece_version: string;
  /** Groups the per-disk backups of one VM backup. */
  group_id?: string;
  vm?: string;
  /** The disk's target name (vda, sda…). */
  disk?: string;
  /** The checkpoint this backup ends at. */
  checkpoint?: string;
  /** The checkpoint it starts from (incremental). */
  incremental_from?: string;
  virtual_size: number;
  sha_block_size: number;
  chunk_size: number;
  /** How the data was read: full, changed extents (dirty bitmap), or whole-disk hash comparison. */
  mode: 'full' | 'changed-extents' | 'compare';
  /** Bytes the producer handed over, and bytes stored (compressed) in data objects. */
  bytes_read: number;
  bytes_stored: number;
  /** The guest's configuration at backup time (libvirt: the domain XML), for a VM-level restore. */
  guest_config?: GuestConfigExtra;
}

/** A VM's configuration as the hypervisor gave it; `format` says how to read `text`. */
export interface GuestConfigExtra {
  format: 'libvirt-domain-xml';
  text: string;
}

/** The parsed `_metadata` manifest (Cinder chunked driver 1.0.0). */
export interface BackupMetadata {
  backup_description: string | null;
  backup_id: string;
  backup_name: string | null;
  created_at: string;
  extra_metadata?: { fleece?: FleeceExtra; [key: string]: unknown };
  objects: ObjectEntry[];
  parent_id: string | null;
  version: string;
  volume_id: string;
  volume_meta: string | null;
}

/**
 * The manifest text in pieces of about `pieceBytes`, exactly as Cinder's json.dumps(sort_keys=True, indent=2) would
 * write it, without one giant string or a JSON tree of the objects list (a 2 TiB full lists 512 Ki objects).
 */
export function* serializeMetadataPieces(meta: BackupMetadata, pieceBytes = 1 << 20): Generator<Buffer> {
  const value: Record<string, JsonValue> = {
    backup_description: meta.backup_description,
    backup_id: meta.backup_id,
    backup_name: meta.backup_name,
    created_at: meta.created_at,
    objects: [], // written below, entry by entry
    parent_id: meta.parent_id,
    version: meta.version,
    volume_id: meta.volume_id,
    volume_meta: meta.volume_meta,
  };
  if (meta.extra_metadata !== undefined) value.extra_metadata = meta.extra_metadata as unknown as JsonValue;
  const keys = Object.keys(value).sort(); // ASCII keys: code point order
  let text = '{';
  for (const [k, key] of keys.entries()) {
    text += `${k === 0 ? '' : ','}\n  ${pythonJsonString(key)}: `;
    if (key !== 'objects' || meta.objects.length === 0) {
      text += pythonJsonDumpsAt(value[key]!, 1);
      continue;
    }
    text += '[';
    const lines: string[] = [];
    let size = text.length;
    for (const [i, o] of meta.objects.entries()) {
      const line = `${i === 0 ? '' : ','}\n    {\n      ${pythonJsonString(o.name)}: {\n        "compression": ${pythonJsonString(o.compression)},\n`
        + `        "length": ${o.length.toFixed(0)},\n        "md5": ${pythonJsonString(o.md5)},\n        "offset": ${o.offset.toFixed(0)}\n      }\n    }`;
      lines.push(line);
      size += line.length;
      if (size >= pieceBytes) {
        yield Buffer.from(text + lines.join(''), 'utf8');
        text = '';
        lines.length = 0;
        size = 0;
      }
    }
    text += `${lines.join('')}\n  ]`;
  }
  yield Buffer.from(`${text}\n}`, 'utf8');
}

/** The manifest text as one string (small manifests, tests); see serializeMetadataPieces. */
export function serializeMetadata(meta: BackupMetadata): string {
  return Buffer.concat([...serializeMetadataPieces(meta)]).toString('utf8');
}

/** A manifest of a format version this fleece does not know yet (written by a newer fleece): not damaged, unreadable here. */
export class NewerFormatError extends IntegrityError {
  constructor(where: string, readonly formatVersion: string) {
    super(`manifest ${where} is of format ${formatVersion}, written by a newer fleece (this one reads ${FORMAT_VERSION})`, {
      hint: 'use the fleece that wrote it (or a newer one) for this backup',
    });
  }
}

/** `a` > `b` for dotted numeric versions (1.10.0 > 1.9.0); false when `a` is not such a version. */
function isNewerVersion(a: string, b: string): boolean {
  if (!/^\d+(\.\d+)*$/.test(a)) return false;
  const x = a.split('.').map(Number);
  const y = b.split('.').map(Number);
  for (let i = 0; i < Math.max(x.length, y.length); i++) {
    if ((x[i] ?? 0) !== (y[i] ?? 0)) return (x[i] ?? 0) > (y[i] ?? 0);
  }
  return false;
}

function bad(where: string, what: string): IntegrityError {
  return new IntegrityError(`manifest ${where} is not a valid Cinder 1.0.0 manifest: ${what}`, {
    hint: 'the object is damaged or not a backup manifest; restore from another backup',
  });
}

function isNullableString(v: unknown): v is string | null {
  return v === null || typeof v === 'string';
}

function isCount(v: unknown): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
}

/** Checks one item of the objects list. */
function objectEntry(item: unknown, i: number, where: string): ObjectEntry {
  if (typeof item !== 'object' || item === null) throw bad(where, `objects[${i}] is not an object`);
  const keys = Object.keys(item);
  if (keys.length !== 1) throw bad(where, `objects[${i}] has ${keys.length} keys, not one`);
  const name = keys[0]!;
  const e = (item as Record<string, Record<string, unknown>>)[name]!;
  if (typeof e !== 'object' || e === null) throw bad(where, `object ${name} is not described by an object`);
  const compression = e.compression ?? 'none';
  if (!COMPRESSIONS.includes(compression as Compression)) throw bad(where, `object ${name} has unknown compression ${JSON.stringify(compression)}`);
  if (!isCount(e.length) || !isCount(e.offset)) throw bad(where, `object ${name} has no valid offset/length`);
  if (typeof e.md5 !== 'string' || !/^[0-9a-f]{32}$/.test(e.md5)) throw bad(where, `object ${name} has no valid md5`);
  return { name, compression: compression as Compression, length: e.length, md5: e.md5, offset: e.offset };
}

/** Checks the members other than objects and builds the manifest. */
function metadataOf(m: Record<string, unknown>, objects: ObjectEntry[], where: string): BackupMetadata {
  if (m.version !== FORMAT_VERSION) {
    if (typeof m.version === 'string' && isNewerVersion(m.version, FORMAT_VERSION)) throw new NewerFormatError(where, m.version);
    throw bad(where, `version ${JSON.stringify(m.version)} is not ${FORMAT_VERSION}`);
  }
  if (typeof m.backup_id !== 'string' || typeof m.volume_id !== 'string') throw bad(where, 'backup_id or volume_id missing');
  if (!isNullableString(m.parent_id ?? null)) throw bad(where, 'parent_id is not a string or null');
  const extra = m.extra_metadata;
  if (extra !== undefined && extra !== null && (typeof extra !== 'object' || Array.isArray(extra))) throw bad(where, 'extra_metadata is not an object');
  return {
    backup_description: isNullableString(m.backup_description) ? m.backup_description : null,
    backup_id: m.backup_id,
    backup_name: isNullableString(m.backup_name) ? m.backup_name : null,
    created_at: typeof m.created_at === 'string' ? m.created_at : '',
    ...(extra ? { extra_metadata: extra as BackupMetadata['extra_metadata'] } : {}),
    objects,
    parent_id: (m.parent_id as string | null | undefined) ?? null,
    version: m.version,
    volume_id: m.volume_id,
    volume_meta: isNullableString(m.volume_meta) ? m.volume_meta : null,
  };
}

/** Parses and checks a manifest held whole in memory; `where` names the object in errors. Throws IntegrityError when damaged. */
export function parseMetadata(text: string | Buffer, where: string): BackupMetadata {
  let raw: unknown;
  try {
    raw = JSON.parse(text.toString());
  } catch (error) {
    throw bad(where, `not JSON (${(error as Error).message})`);
  }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw bad(where, 'not a JSON object');
  const m = raw as Record<string, unknown>;
  const head = metadataOf(m, [], where); // the header's checks first
  if (!Array.isArray(m.objects)) throw bad(where, 'objects is not a list');
  return { ...head, objects: m.objects.map((item: unknown, i: number) => objectEntry(item, i, where)) };
}

/**
 * Parses and checks a manifest read in pieces: the objects list item by item, never the whole text as one
 * string or JSON tree (a 2 TiB full lists 512 Ki objects, 141 MiB of JSON). Same checks as parseMetadata.
 * Throws IntegrityError naming `where`, and whatever the source throws (ObjectNotFoundError, StoreError…).
 */
export async function parseMetadataStream(source: AsyncIterable<Uint8Array>, where: string): Promise<BackupMetadata> {
  const objects: ObjectEntry[] = [];
  const scanner = new JsonObjectStream('objects', (item, i) => { objects.push(objectEntry(item, i, where)); }, (what) => bad(where, what));
  for await (const piece of source) scanner.push(piece);
  const { members, sawList } = scanner.end();
  const head = metadataOf(Object.fromEntries(members) as Record<string, unknown>, [], where);
  if (!sawList) throw bad(where, 'objects is not a list');
  return { ...head, objects };
}
