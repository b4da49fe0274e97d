// Pure extent arithmetic: merge, clip, align, split, intersect.
import { alignExtents, clipExtents, intersectExtents, mergeExtents, splitExtents, totalLength } from '../../../src/nbd/extent-algebra.js';
import { InvalidInputError } from '../../../src/util/errors.js';

const e = (offset: number, length: number, flags = 0) => ({ offset, length, flags });

test('merge sorts, joins touching extents with equal flags, keeps different flags apart', () => {
  expect(mergeExtents([e(10, 5), e(0, 10), e(15, 5, 1), e(20, 0)])).toEqual([e(0, 15), e(15, 5, 1)]);
  expect(mergeExtents([e(0, 10), e(5, 10)])).toEqual([e(0, 15)]);
  expect(mergeExtents([e(0, 10), e(2, 3)])).toEqual([e(0, 10)]);
  expect(mergeExtents([e(0, 10), e(5, 10, 1)])).toEqual([e(0, 10), e(10, 5, 1)]);
  expect(() => mergeExtents([e(-1, 3)])).toThrow(InvalidInputError);
});

test('clip keeps only the parts inside the range', () => {
  expect(clipExtents([e(0, 10), e(10, 10, 1), e(30, 5)], { offset: 5, length: 10 })).toEqual([e(5, 5), e(10, 5, 1)]);
  expect(clipExtents([e(0, 10)], { offset: 20, length: 5 })).toEqual([]);
});

test('align widens to the granularity, ORs flags of merged pieces and clips to size', () => {
  expect(alignExtents([e(1000, 10, 1), e(65536 + 5, 3, 2)], 65536)).toEqual([e(0, 131072, 3)]);
  expect(alignExtents([e(100, 10)], 64, 105)).toEqual([e(64, 41)]);
  expect(alignExtents([e(0, 0)], 64)).toEqual([]);
  expect(() => alignExtents([], 0)).toThrow(InvalidInputError);
});

test('split yields pieces of at most N bytes that cover each extent exactly', () => {
  const pieces = [...splitExtents([e(0, 10, 1), e(100, 3)], 4)];
  expect(pieces).toEqual([e(0, 4, 1), e(4, 4, 1), e(8, 2, 1), e(100, 3)]);
  expect(totalLength(pieces)).toBe(13);
  expect(() => [...splitExtents([e(0, 1)], 0)]).toThrow(InvalidInputError);
});

test('intersect returns the overlap carrying the first list\'s flags', () => {
  expect(intersectExtents([e(0, 100, 1), e(200, 100, 2)], [{ offset: 50, length: 200 }])).toEqual([e(50, 50, 1), e(200, 50, 2)]);
  expect(intersectExtents([e(0, 10)], [e(10, 10)])).toEqual([]);
});
