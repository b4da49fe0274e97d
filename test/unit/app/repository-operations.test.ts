// Point-in-time parsing and record times of the repository commands.
import { describe, expect, test } from '@jest/globals';
import { createdAtDate, parsePointInTime } from '../../../src/app/repository-operations.js';
import { InvalidInputError } from '../../../src/util/errors.js';

describe('parsePointInTime', () => {
  test('ISO times with and without a zone (UTC by default), dates alone', () => {
    expect(parsePointInTime('2025-01-02T03:04:05Z').toISOString()).toBe('2025-01-02T03:04:05.000Z');
    expect(parsePointInTime('2025-01-02 03:04').toISOString()).toBe('2025-01-02T03:04:00.000Z');
    expect(parsePointInTime('2025-01-02T03:04:05+02:00').toISOString()).toBe('2025-01-02T01:04:05.000Z');
    expect(parsePointInTime('2025-01-02').toISOString()).toBe('2025-01-02T00:00:00.000Z');
  });
  test('junk is an InvalidInputError naming the text and the form', () => {
    expect(() => parsePointInTime('yesterday')).toThrow(InvalidInputError);
    expect(() => parsePointInTime('yesterday')).toThrow(/--at 'yesterday' is not a point in time; use ISO 8601/);
  });
  test("a record's Cinder created_at text is UTC", () => {
    expect(createdAtDate({ createdAt: '2025-01-02 03:04:05.123456' }).toISOString()).toBe('2025-01-02T03:04:05.123Z');
    expect(createdAtDate({ createdAt: '2025-01-02 03:04:05' }).toISOString()).toBe('2025-01-02T03:04:05.000Z');
  });
});
