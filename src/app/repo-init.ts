// `fleece repo init` and `fleece repo key-generate`: make a location a repository (optionally encrypted), or adopt one.
import { open } from 'node:fs/promises';
import {
  createEncryption, generateKeyBytes, registerRepositoryKey, inspectLocation, keySourceFromEnv, newMarker, openRepository, writeMarker,
  type KeySourceSpec, type RepositoryMarker, type RepositoryOptions,
} from '../repository/index.js';
import { ConflictError, InvalidInputError } from '../util/errors.js';
import { repoLocation } from './repo-location.js';

export interface InitRequest {
  /** A directory (created when missing) or s3://bucket[/prefix]. */
  location: string;
  /** Encrypt the data objects of every backup (needs `key`, or FLEECE_KEY_FILE / FLEECE_PASSPHRASE[_FILE]). */
  encrypt?: boolean;
  key?: KeySourceSpec;
  /** scrypt parameters of a passphrase (default DEFAULT_SCRYPT). */
  scrypt?: { N: number; r: number; p: number };
  /** How to reach it (S3 endpoint, credentials…), as openRepository takes them. */
  repository?: RepositoryOptions;
}

export interface InitResult { location: string; marker: RepositoryMarker; adopted: boolean }

/**
 * Writes the repository marker: in an empty (or new) location, or one holding only backups (an older fleece's, or
 * Cinder's: adopted). Throws ConflictError (already a repository; other files there), InvalidInputError (encrypting
 * existing backups, no key), StoreError.
 */
export async function initRepository(request: InitRequest): Promise<InitResult> {
  const repo = await openRepository(request.location, request.repository);
  const where = repo.store.location;
  const existing = await repo.marker();
  if (typeof existing === 'object') {
    throw new ConflictError(`${where} is already a fleece repository (id ${existing.id}, created ${existing.created}${existing.encryption ? ', encrypted' : ''})`, {
      hint: 'nothing to do; its marker is never replaced (an encrypted repository\'s key is in it)',
    });
  }
  const contents = await inspectLocation(repo.store, repo.layout);
  if (contents.kind === 'foreign') {
    throw new ConflictError(`${where} is not empty and holds things that are not backups (e.g. ${contents.examples.join(', ')}): refusing to make it a repository`, {
      hint: 'choose an empty or new directory (or S3 prefix)',
    });
  }
  const adopted = contents.kind === 'cinder';
  if (request.encrypt && adopted) {
    throw new InvalidInputError(`${where} already holds backups: encryption can only be turned on for a new repository`, {
      hint: 'init an encrypted repository in an empty location and back up into it',
    });
  }
  const marker = newMarker(repo.layout, null, adopted);
  if (request.encrypt) {
    const key = request.key ?? keySourceFromEnv();
    if (key === undefined) {
      throw new InvalidInputError('--encrypt needs a key', { hint: 'give --key-file FILE (make one with `fleece repo key-generate FILE`) or --passphrase-file FILE (or FLEECE_PASSPHRASE)' });
    }
    marker.encryption = (await createEncryption(marker.id, key, request.scrypt)).config;
  }
  if (!(await writeMarker(repo.store, marker, { exclusive: true }))) {
    throw new ConflictError(`${where} became a fleece repository meanwhile (another fleece made it)`, { hint: 'nothing to do' });
  }
  return { location: where, marker, adopted };
}

/**
 * The keys of encrypted repositories by location (the daemon's `repositoryKeys`): every later open of one of them,
 * by any job, unlocks it with its key. Locations as `--repo` takes them (absolute directories, s3:// URLs).
 */
export function registerRepositoryKeys(keys: Record<string, { keyFile?: string; passphraseFile?: string }>): void {
  for (const [location, source] of Object.entries(keys)) {
    registerRepositoryKey(repoLocation(location), source.keyFile !== undefined ? { kind: 'key-file', path: source.keyFile } : { kind: 'passphrase-file', path: source.passphraseFile! });
  }
}

/** Writes 32 random bytes to a new file, mode 0600. Throws ConflictError when it exists, InvalidInputError otherwise. */
export async function generateKeyFile(path: string): Promise<void> {
  let handle;
  try {
    handle = await open(path, 'wx', 0o600);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'EEXIST') throw new ConflictError(`the key file ${path} already exists`, { hint: 'a key is never overwritten: choose another path' });
    throw new InvalidInputError(`cannot create the key file ${path}: ${code ?? String(error)}`, { cause: error });
  }
  try {
    await handle.writeFile(generateKeyBytes());
    await handle.sync();
  } finally {
    await handle.close();
  }
}
