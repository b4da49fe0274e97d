// The repository marker: a small versioned JSON object at a repository's root that says "this is a fleece repository".
//
// As restic's `config` and PBS's `.chunks`: gc, delete and verify act only where it is, so that a mistyped --repo
// (a home directory, a photo archive, a shared bucket) is never taken for a repository. It sits outside every
// container (a root object, see store/root-objects.ts): Cinder's readers, the catalog and gc never see it. It also
// carries the repository's encryption settings (crypto/keys.ts): the wrapped data key, never the key itself.
import { randomUUID } from 'node:crypto';
import { ConflictError, IntegrityError, InvalidInputError } from '../util/errors.js';
import type { ObjectStore, StoreCallOptions } from './store/object-store.js';
import { rootObjectsOf } from './store/root-objects.js';
import type { RepositoryLayout } from './format/naming.js';
import type { EncryptionConfig } from './crypto/keys.js';

/** The marker's object name at the repository root (a directory's file, or the `<prefix>/` key on S3). */
export const MARKER_NAME = 'fleece-repository.json';
export const MARKER_FORMAT = 'fleece-repository';
/** The marker version this fleece writes and reads; a newer one is refused (a newer fleece may mean more). */
export const MARKER_VERSION = 1;
/** Entries listed at most when deciding what a location without a marker holds. */
const LISTING_LIMIT = 5_000_000;

export interface RepositoryMarker {
  format: typeof MARKER_FORMAT;
  version: number;
  /** A random UUID: the repository's identity (associated data of its wrapped key). */
  id: string;
  /** ISO 8601 UTC. */
  created: string;
  layout: RepositoryLayout;
  encryption: EncryptionConfig | null;
  /** Set when `repo init` (or a backup) adopted backups written before the marker existed. */
  adopted?: boolean;
}

/** What a location without a marker holds. */
export type LocationContents =
  | { kind: 'empty' }
  | { kind: 'cinder'; entries: number }
  | { kind: 'foreign'; examples: string[] };

export function newMarker(layout: RepositoryLayout, encryption: EncryptionConfig | null, adopted: boolean, now = new Date()): RepositoryMarker {
  return {
    format: MARKER_FORMAT, version: MARKER_VERSION, id: randomUUID(), created: now.toISOString(), layout, encryption,
    ...(adopted ? { adopted: true } : {}),
  };
}

/** Throws IntegrityError (not JSON, not a marker) or ConflictError (written by a newer fleece). */
export function parseMarker(bytes: Buffer, where: string): RepositoryMarker {
  let value: unknown;
  try {
    value = JSON.parse(bytes.toString('utf8'));
  } catch (error) {
    throw new IntegrityError(`the repository marker ${where} is not JSON`, { cause: error, hint: 'restore it from a copy, or remove it and run `fleece repo init` again (an encrypted repository needs its original marker)' });
  }
  const m = value as Partial<RepositoryMarker> | null;
  if (typeof m !== 'object' || m === null || m.format !== MARKER_FORMAT || typeof m.version !== 'number' || typeof m.id !== 'string') {
    throw new IntegrityError(`${where} is not a fleece repository marker`, { hint: `it should be {"format": "${MARKER_FORMAT}", "version": ${MARKER_VERSION}, "id": …}` });
  }
  if (m.version > MARKER_VERSION) {
    throw new ConflictError(`the repository ${where} was created by a newer fleece (marker version ${m.version}, this fleece knows ${MARKER_VERSION})`, { hint: 'use a newer fleece' });
  }
  if (m.layout !== 'posix' && m.layout !== 's3') throw new IntegrityError(`the repository marker ${where} names an unknown layout ${String(m.layout)}`);
  return { ...m, encryption: m.encryption ?? null } as RepositoryMarker;
}

export function serializeMarker(marker: RepositoryMarker): Buffer {
  return Buffer.from(`${JSON.stringify(marker, null, 2)}\n`);
}

/** Where the marker is, for messages. */
export function markerLocation(store: ObjectStore): string {
  return `${store.location.replace(/\/$/, '')}/${MARKER_NAME}`;
}

/**
 * The store's marker; undefined when there is none; 'unsupported' for stores without root objects (a memory store
 * handed over by a program), which are taken as repositories. Throws StoreError, IntegrityError, ConflictError.
 */
export async function readMarker(store: ObjectStore, options: StoreCallOptions = {}): Promise<RepositoryMarker | undefined | 'unsupported'> {
  const root = rootObjectsOf(store);
  if (!root) return 'unsupported';
  const bytes = await root.getRoot(MARKER_NAME, options);
  return bytes === undefined ? undefined : parseMarker(bytes, markerLocation(store));
}

/** Writes the marker; with `exclusive`, only when there is none yet (returns false then). Throws StoreError. */
export async function writeMarker(store: ObjectStore, marker: RepositoryMarker, options: StoreCallOptions & { exclusive?: boolean } = {}): Promise<boolean> {
  const root = rootObjectsOf(store);
  if (!root) throw new InvalidInputError(`the store ${store.location} cannot hold a repository marker`);
  return root.putRoot(MARKER_NAME, serializeMarker(marker), options);
}

const ID = '[A-Za-z0-9][A-Za-z0-9-]{3,}';
const POSIX_OBJECT = new RegExp(`^(?:volume_[A-Za-z0-9._-]+_\\d{14}_backup_(${ID})(?:-\\d{5,}|_metadata|_sha256file)|fleece_lease_(${ID}))$`);
const S3_OBJECT = new RegExp(`^(?:az_[A-Za-z0-9._-]+_backup_${ID}(?:-\\d{5,}|_metadata|_sha256file)|fleece_lease_${ID})$`);
/** What a put leaves while it runs (posix: `.<name>.<hex>.tmp`). */
const TEMPORARY = /^\..+\.[0-9a-f]{12}\.tmp$/;

/** Whether `path` (relative to the root) is something a repository of `layout` holds. */
export function isRepositoryPath(path: string, layout: RepositoryLayout): boolean {
  const segments = path.split('/');
  if (segments.length === 1) return segments[0] === MARKER_NAME || (TEMPORARY.test(segments[0]!) && segments[0]!.startsWith(`.${MARKER_NAME}.`));
  if (layout === 's3') {
    return segments.length === 3 && /^volume_[A-Za-z0-9][A-Za-z0-9._-]*$/.test(segments[0]!) && /^\d{14}$/.test(segments[1]!)
      && (S3_OBJECT.test(segments[2]!) || /^fleece_[A-Za-z0-9._-]+$/.test(segments[2]!));
  }
  if (segments.length !== 4) return false;
  const [a, b, id, name] = segments as [string, string, string, string];
  if (!new RegExp(`^${ID}$`).test(id) || a !== id.slice(0, 2) || b !== id.slice(2, 4)) return false;
  if (TEMPORARY.test(name)) return name.includes(id);
  const m = POSIX_OBJECT.exec(name);
  // also what a fleece keeps beside a backup's objects (a lease, a marker of its own): named by that backup's id
  return (m !== null && (m[1] ?? m[2]) === id) || (name.startsWith('fleece_') && name.includes(id));
}

/** What a location without a marker holds: nothing, only what a repository of `layout` holds, or other things. Throws StoreError. */
export async function inspectLocation(store: ObjectStore, layout: RepositoryLayout, options: StoreCallOptions = {}): Promise<LocationContents> {
  const root = rootObjectsOf(store);
  if (!root) return { kind: 'cinder', entries: 0 };
  const paths = await root.listEverything(LISTING_LIMIT, options);
  if (paths.length === 0) return { kind: 'empty' };
  const foreign = paths.filter((p) => !isRepositoryPath(p, layout));
  return foreign.length === 0 ? { kind: 'cinder', entries: paths.length } : { kind: 'foreign', examples: foreign.slice(0, 3) };
}
