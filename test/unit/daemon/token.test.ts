// The TCP API's bearer token check: exact match only, the length included, compared as fixed-length digests.
import { describe, expect, test } from '@jest/globals';
import { BearerTokenCheck, bearerToken, tokenDigest } from '../../../src/daemon/token.js';

const TOKEN = 'a-long-secret-token-0123456789';

describe('BearerTokenCheck', () => {
  const check = new BearerTokenCheck(TOKEN);

  test('the exact token passes, with the scheme in any case', () => {
    expect(check.matches(`Bearer ${TOKEN}`)).toBe(true);
    expect(check.matches(`bearer ${TOKEN}`)).toBe(true);
  });

  test('a token of another length is refused without throwing (timingSafeEqual would throw on unequal lengths)', () => {
    expect(check.matches(`Bearer ${TOKEN}x`)).toBe(false);
    expect(check.matches(`Bearer ${TOKEN.slice(0, -1)}`)).toBe(false);
    expect(check.matches(`Bearer ${TOKEN.slice(0, 1)}`)).toBe(false);
    expect(check.matches(`Bearer ${TOKEN.repeat(40)}`)).toBe(false);
  });

  test('a wrong token of the same length, another scheme, or no header is refused', () => {
    expect(check.matches(`Bearer ${TOKEN.slice(0, -1)}X`)).toBe(false);
    expect(check.matches(`Basic ${TOKEN}`)).toBe(false);
    expect(check.matches(TOKEN)).toBe(false);
    expect(check.matches('Bearer ')).toBe(false);
    expect(check.matches(undefined)).toBe(false);
    expect(() => new BearerTokenCheck('')).toThrow(/empty/);
  });

  test('what is compared is a 32-byte digest whatever the length, so the length does not show in the comparison', () => {
    for (const given of ['', 'x', TOKEN, TOKEN.repeat(100)]) expect(tokenDigest(given)).toHaveLength(32);
    expect(tokenDigest(TOKEN).equals(tokenDigest(TOKEN))).toBe(true);
    expect(tokenDigest(TOKEN).equals(tokenDigest(`${TOKEN} `))).toBe(false);
    expect(bearerToken(`Bearer ${TOKEN}`)).toBe(TOKEN);
    expect(bearerToken('Token abc')).toBe('');
  });
});
