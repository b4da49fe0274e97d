// The bearer token check of the TCP API, in constant time: both sides are hashed to fixed-length sha256 digests
// before timingSafeEqual, so neither the token's content nor its length shows in how long a refusal takes.
import { createHash, timingSafeEqual } from 'node:crypto';

/** sha256 of a token: 32 bytes whatever the token's length. */
export function tokenDigest(token: string | Buffer): Buffer {
  return createHash('sha256').update(token).digest();
}

/** The token of an `Authorization: Bearer <token>` header; '' when there is none or it has another scheme. */
export function bearerToken(header: string | undefined): string {
  return /^Bearer (.+)$/i.exec(header ?? '')?.[1] ?? '';
}

/**
 * Checks `Authorization` headers against one token. The expected digest is computed once; every check hashes what
 * was given and compares the two 32-byte digests with crypto.timingSafeEqual (a different length is just a
 * different digest: no early return on a length mismatch).
 */
export class BearerTokenCheck {
  readonly #expected: Buffer;

  constructor(token: string) {
    if (token.length === 0) throw new Error('an empty bearer token would let anyone in');
    this.#expected = tokenDigest(token);
  }

  /** True when the header carries exactly the token. */
  matches(header: string | undefined): boolean {
    const given = bearerToken(header);
    // Hash even an absent token, so that a missing header costs the same as a wrong one.
    const same = timingSafeEqual(tokenDigest(given), this.#expected);
    return same && given.length > 0;
  }
}
