// checkBackupRequest's verifyBitmap (the CLI's --verify-bitmap, the daemon's field): a percentage from 0 to 100.
import { describe, expect, test } from '@jest/globals';
import { checkBackupRequest } from '../../../src/app/backup-request.js';
import { InvalidInputError } from '../../../src/util/errors.js';

describe('checkBackupRequest: verifyBitmap', () => {
  const base = { vm: 'vm1', repo: '/backups/repo' };
  test('0 (trust the bitmap), fractions and 100 are accepted as they are', () => {
    for (const verifyBitmap of [0, 0.5, 2, 100]) expect(checkBackupRequest({ ...base, verifyBitmap }).verifyBitmap).toBe(verifyBitmap);
    expect(checkBackupRequest(base).verifyBitmap).toBeUndefined();
  });
  test('anything else is refused, naming the field', () => {
    for (const verifyBitmap of [-1, 100.5, Number.NaN, '1', true]) {
      expect(() => checkBackupRequest({ ...base, verifyBitmap })).toThrow(InvalidInputError);
      expect(() => checkBackupRequest({ ...base, verifyBitmap })).toThrow(/verifyBitmap/);
    }
  });
});
