// Sealing one data object: AES-256-GCM, a fresh random 96-bit nonce, the object's place as associated data.
//
// Layout: "FLE1" (4) | nonce (12) | ciphertext | tag (16). The associated data binds the bytes to the repository,
// the container, the object's name (which holds its backup id and index) and its disk offset: an object copied
// under another name, into another backup or another repository, or listed at another offset does not open.
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import { IntegrityError } from '../../util/errors.js';

const MAGIC = Buffer.from('FLE1');
const NONCE = 12;
const TAG = 16;
export const SEAL_OVERHEAD = MAGIC.length + NONCE + TAG;

/** Where an object belongs: what its associated data says. */
export interface ObjectPlace { repositoryId: string; container: string; name: string; offset: number }

function aad(place: ObjectPlace): Buffer {
  return Buffer.from(`fleece-object\0${place.repositoryId}\0${place.container}\0${place.name}\0${place.offset}`);
}

export function sealObject(key: Buffer, plaintext: Uint8Array, place: ObjectPlace): Buffer {
  const nonce = randomBytes(NONCE);
  const cipher = createCipheriv('aes-256-gcm', key, nonce);
  cipher.setAAD(aad(place));
  const out = Buffer.allocUnsafe(SEAL_OVERHEAD + plaintext.byteLength);
  MAGIC.copy(out, 0);
  nonce.copy(out, MAGIC.length);
  let at = MAGIC.length + NONCE;
  at += cipher.update(plaintext).copy(out, at);
  at += cipher.final().copy(out, at);
  cipher.getAuthTag().copy(out, at);
  return out;
}

/** The plaintext. Throws IntegrityError naming the object: not sealed, tampered, moved, or another key. */
export function openObject(key: Buffer, sealed: Buffer, place: ObjectPlace, where: string): Buffer {
  if (sealed.length < SEAL_OVERHEAD || !sealed.subarray(0, MAGIC.length).equals(MAGIC)) {
    throw new IntegrityError(`object ${where} is not an encrypted fleece object (${sealed.length} bytes without the FLE1 header)`, {
      hint: 'the repository is encrypted: this object was replaced or damaged; restore from another backup',
    });
  }
  const decipher = createDecipheriv('aes-256-gcm', key, sealed.subarray(MAGIC.length, MAGIC.length + NONCE));
  decipher.setAAD(aad(place));
  decipher.setAuthTag(sealed.subarray(sealed.length - TAG));
  try {
    return Buffer.concat([decipher.update(sealed.subarray(MAGIC.length + NONCE, sealed.length - TAG)), decipher.final()]);
  } catch (error) {
    throw new IntegrityError(`object ${where} failed authentication (AES-256-GCM): it was changed, moved from another place (offset ${place.offset}), or sealed with another key`, {
      cause: error, hint: 'the backup is damaged or was tampered with: restore from another backup',
    });
  }
}
