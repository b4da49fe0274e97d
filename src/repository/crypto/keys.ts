// Repository keys: a random 256-bit data key, wrapped (AES-256-GCM) by a key derived from a key file or a passphrase.
//
// Only the wrapped key is stored (in the repository marker); the data key never leaves memory. A key file is 32
// random bytes, stretched by HKDF-SHA256 with the marker's salt; a passphrase goes through scrypt (memory-hard,
// its parameters recorded so that a later fleece can raise them for new repositories and still open old ones).
import { createCipheriv, createDecipheriv, createHmac, hkdfSync, randomBytes, scrypt as scryptCallback, type ScryptOptions } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { IntegrityError, InvalidInputError } from '../../util/errors.js';

export const ENCRYPTION_SCHEME = 'aes-256-gcm';
export const KEY_FILE_BYTES = 32;

/** scrypt N = 2^17, r = 8, p = 1: 128 MiB and about half a second per unlock (OWASP's recommendation for scrypt). */
export const DEFAULT_SCRYPT = { N: 2 ** 17, r: 8, p: 1 } as const;

export type KdfConfig =
  | { name: 'scrypt'; N: number; r: number; p: number; salt: string }
  | { name: 'hkdf-sha256'; salt: string };

/** What the marker records of a repository's encryption (never a key). */
export interface EncryptionConfig {
  scheme: typeof ENCRYPTION_SCHEME;
  /** Names the data key (an HMAC of it): the same in every backup's extra_metadata. */
  key_id: string;
  kdf: KdfConfig;
  /** base64 of nonce (12) | AES-256-GCM(data key) (32) | tag (16); associated data: the repository id. */
  wrapped_key: string;
}

/** Where the key comes from. */
export type KeySource =
  | { kind: 'key-file'; path: string }
  | { kind: 'passphrase'; passphrase: string; from: string };

const registered = new Map<string, KeySourceSpec>();
const normal = (location: string) => location.replace(/\/+$/, '');

/** The key of one repository location (the daemon's `repositoryKeys`): taken before the environment's. */
export function registerRepositoryKey(location: string, spec: KeySourceSpec): void {
  registered.set(normal(location), spec);
}

/** The key registered for `location`, else the environment's (keySourceFromEnv), else undefined. */
export function keySourceFor(location: string, env: NodeJS.ProcessEnv = process.env): KeySourceSpec | undefined {
  return registered.get(normal(location)) ?? keySourceFromEnv(env);
}

/** `FLEECE_KEY_FILE`, `FLEECE_PASSPHRASE_FILE` or `FLEECE_PASSPHRASE`, or undefined. Does not read the files yet. */
export function keySourceFromEnv(env: NodeJS.ProcessEnv = process.env): KeySource | { kind: 'passphrase-file'; path: string } | undefined {
  if (env.FLEECE_KEY_FILE) return { kind: 'key-file', path: env.FLEECE_KEY_FILE };
  if (env.FLEECE_PASSPHRASE_FILE) return { kind: 'passphrase-file', path: env.FLEECE_PASSPHRASE_FILE };
  if (env.FLEECE_PASSPHRASE) return { kind: 'passphrase', passphrase: env.FLEECE_PASSPHRASE, from: 'FLEECE_PASSPHRASE' };
  return undefined;
}

export type KeySourceSpec = KeySource | { kind: 'passphrase-file'; path: string };

/** Reads a passphrase file (one line; its trailing newline dropped). Throws InvalidInputError. */
async function resolveSource(spec: KeySourceSpec): Promise<KeySource> {
  if (spec.kind !== 'passphrase-file') return spec;
  let text: string;
  try {
    text = await readFile(spec.path, 'utf8');
  } catch (error) {
    throw new InvalidInputError(`cannot read the passphrase file ${spec.path}: ${(error as NodeJS.ErrnoException).code ?? String(error)}`, { cause: error });
  }
  return { kind: 'passphrase', passphrase: text.replace(/\r?\n$/, ''), from: `the passphrase file ${spec.path}` };
}

/** A key file's 32 bytes. Throws InvalidInputError (missing, unreadable, not 32 bytes). */
async function readKeyFile(path: string): Promise<Buffer> {
  let bytes: Buffer;
  try {
    bytes = await readFile(path);
  } catch (error) {
    throw new InvalidInputError(`cannot read the key file ${path}: ${(error as NodeJS.ErrnoException).code ?? String(error)}`, {
      cause: error, hint: 'create one with `fleece repo key-generate FILE` (or `head -c 32 /dev/urandom > FILE`)',
    });
  }
  if (bytes.length !== KEY_FILE_BYTES) {
    throw new InvalidInputError(`the key file ${path} holds ${bytes.length} bytes, not ${KEY_FILE_BYTES}`, {
      hint: 'a key file is 32 random bytes: `fleece repo key-generate FILE` (or `head -c 32 /dev/urandom > FILE`)',
    });
  }
  return bytes;
}

function scrypt(passphrase: string, salt: Buffer, options: ScryptOptions): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    scryptCallback(passphrase, salt, 32, options, (error, key) => (error ? reject(error) : resolve(key)));
  });
}

function describe(source: KeySource): string {
  return source.kind === 'key-file' ? `the key file ${source.path}` : source.from;
}

/** The key-encryption key of `source` under `kdf`. Throws InvalidInputError (wrong kind of source, bad file). */
async function deriveWrappingKey(source: KeySource, kdf: KdfConfig): Promise<Buffer> {
  const salt = Buffer.from(kdf.salt, 'base64');
  if (kdf.name === 'hkdf-sha256') {
    if (source.kind !== 'key-file') throw new InvalidInputError('this repository is encrypted with a key file, not a passphrase', { hint: 'give --key-file FILE (or FLEECE_KEY_FILE)' });
    return Buffer.from(hkdfSync('sha256', await readKeyFile(source.path), salt, 'fleece repository key-encryption key', 32));
  }
  if (source.kind !== 'passphrase') throw new InvalidInputError('this repository is encrypted with a passphrase, not a key file', { hint: 'give --passphrase-file FILE (or FLEECE_PASSPHRASE)' });
  if (source.passphrase === '') throw new InvalidInputError(`${describe(source)} is empty`, { hint: 'a passphrase needs at least one character (prefer many)' });
  // maxmem: scrypt needs 128 × N × r bytes, and refuses anything above maxmem (32 MiB by default)
  return scrypt(source.passphrase, salt, { N: kdf.N, r: kdf.r, p: kdf.p, maxmem: 256 * kdf.N * kdf.r + (1 << 20) });
}

function keyIdOf(dataKey: Buffer): string {
  return createHmac('sha256', dataKey).update('fleece key id').digest('hex').slice(0, 16);
}

const wrapAad = (repositoryId: string) => Buffer.from(`fleece-repository-key\0${repositoryId}`);

/** A new data key, wrapped for `source`, for the repository `repositoryId`. Throws InvalidInputError. */
export async function createEncryption(repositoryId: string, spec: KeySourceSpec, scryptParameters: { N: number; r: number; p: number } = DEFAULT_SCRYPT): Promise<{ config: EncryptionConfig; dataKey: Buffer }> {
  const source = await resolveSource(spec);
  const salt = randomBytes(16).toString('base64');
  const kdf: KdfConfig = source.kind === 'key-file' ? { name: 'hkdf-sha256', salt } : { name: 'scrypt', ...scryptParameters, salt };
  const wrapping = await deriveWrappingKey(source, kdf);
  const dataKey = randomBytes(32);
  const nonce = randomBytes(12);
  const cipher = createCipheriv('aes-256-gcm', wrapping, nonce);
  cipher.setAAD(wrapAad(repositoryId));
  const sealed = Buffer.concat([nonce, cipher.update(dataKey), cipher.final(), cipher.getAuthTag()]);
  return { config: { scheme: ENCRYPTION_SCHEME, key_id: keyIdOf(dataKey), kdf, wrapped_key: sealed.toString('base64') }, dataKey };
}

/**
 * The data key of a repository. Throws InvalidInputError (no source, wrong kind, bad file) or IntegrityError (the
 * key or passphrase does not open it, or the marker's wrapped key was changed).
 */
export async function unlockDataKey(config: EncryptionConfig, repositoryId: string, spec: KeySourceSpec | undefined, where: string): Promise<Buffer> {
  if (config.scheme !== ENCRYPTION_SCHEME) throw new InvalidInputError(`the repository ${where} is encrypted with ${String(config.scheme)}, which this fleece does not know`, { hint: 'use a newer fleece' });
  if (spec === undefined) {
    throw new InvalidInputError(`the repository ${where} is encrypted (key id ${config.key_id}): its data cannot be read or written without its key`, {
      hint: config.kdf.name === 'scrypt' ? 'give --passphrase-file FILE, or set FLEECE_PASSPHRASE' : 'give --key-file FILE (or set FLEECE_KEY_FILE)',
    });
  }
  const source = await resolveSource(spec);
  const wrapping = await deriveWrappingKey(source, config.kdf);
  const sealed = Buffer.from(config.wrapped_key, 'base64');
  if (sealed.length !== 12 + 32 + 16) throw new IntegrityError(`the repository marker of ${where} holds a damaged wrapped key`);
  const decipher = createDecipheriv('aes-256-gcm', wrapping, sealed.subarray(0, 12));
  decipher.setAAD(wrapAad(repositoryId));
  decipher.setAuthTag(sealed.subarray(44));
  let dataKey: Buffer;
  try {
    dataKey = Buffer.concat([decipher.update(sealed.subarray(12, 44)), decipher.final()]);
  } catch (error) {
    throw new IntegrityError(`${describe(source)} does not open the repository ${where} (key id ${config.key_id}): wrong key or passphrase`, {
      cause: error, hint: 'use the key (or passphrase) the repository was created with; its marker may also have been changed',
    });
  }
  if (keyIdOf(dataKey) !== config.key_id) throw new IntegrityError(`the repository marker of ${where} names key id ${config.key_id}, its key is ${keyIdOf(dataKey)}`);
  return dataKey;
}

/** 32 random bytes for a new key file. */
export function generateKeyBytes(): Buffer {
  return randomBytes(KEY_FILE_BYTES);
}
