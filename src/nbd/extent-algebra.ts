// Pure arithmetic on byte extents: merge, clip, align to a granularity, split into bounded pieces, intersect.
import { InvalidInputError } from '../util/errors.js';

/** A byte range of a disk with the meta-context flags the server reported for it (0 when not relevant). */
export interface Extent {
  offset: number;
  length: number;
  flags: number;
}

/** A byte range [offset, offset + length). */
export interface ByteRange {
  offset: number;
  length: number;
}

function checkRange(range: ByteRange, what: string): void {
  if (!Number.isSafeInteger(range.offset) || !Number.isSafeInteger(range.length) || range.offset < 0 || range.length < 0) {
    throw new InvalidInputError(`${what} {offset: ${range.offset}, length: ${range.length}} is not a valid byte range; use non-negative integers`);
  }
}

/**
 * Sorts by offset and merges extents that touch or overlap and carry the same flags (overlaps with different flags
 * keep the earlier extent's flags for the overlapping part). Empty extents are dropped.
 * @throws InvalidInputError on negative or non-integer offsets/lengths
 */
export function mergeExtents(extents: Iterable<Extent>): Extent[] {
  const sorted = [...extents].filter((e) => {
    checkRange(e, 'extent');
    return e.length > 0;
  });
  sorted.sort((a, b) => a.offset - b.offset);
  const out: Extent[] = [];
  for (const e of sorted) {
    const last = out[out.length - 1];
    const end = e.offset + e.length;
    if (last && e.offset <= last.offset + last.length) {
      const lastEnd = last.offset + last.length;
      if (end <= lastEnd) continue;
      if (last.flags === e.flags) {
        last.length = end - last.offset;
        continue;
      }
      out.push({ offset: lastEnd, length: end - lastEnd, flags: e.flags });
      continue;
    }
    out.push({ ...e });
  }
  return out;
}

/** Keeps only the parts of `extents` inside `range`. @throws InvalidInputError on an invalid range */
export function clipExtents(extents: Iterable<Extent>, range: ByteRange): Extent[] {
  checkRange(range, 'clip range');
  const start = range.offset;
  const end = range.offset + range.length;
  const out: Extent[] = [];
  for (const e of extents) {
    const s = Math.max(e.offset, start);
    const t = Math.min(e.offset + e.length, end);
    if (t > s) out.push({ offset: s, length: t - s, flags: e.flags });
  }
  return out;
}

/**
 * Widens every extent outwards to multiples of `granularity` (a bitmap's or a chunk's size), merges what then
 * overlaps (flags are OR-ed) and clips to `size` when given.
 * @throws InvalidInputError when granularity is not a positive integer
 */
export function alignExtents(extents: Iterable<Extent>, granularity: number, size?: number): Extent[] {
  if (!Number.isSafeInteger(granularity) || granularity <= 0) {
    throw new InvalidInputError(`granularity ${granularity} is not a positive integer number of bytes`);
  }
  const widened: Extent[] = [];
  for (const e of extents) {
    if (e.length === 0) continue;
    const s = Math.floor(e.offset / granularity) * granularity;
    let t = Math.ceil((e.offset + e.length) / granularity) * granularity;
    if (size !== undefined) t = Math.min(t, size);
    if (t > s) widened.push({ offset: s, length: t - s, flags: e.flags });
  }
  widened.sort((a, b) => a.offset - b.offset);
  const out: Extent[] = [];
  for (const e of widened) {
    const last = out[out.length - 1];
    if (last && e.offset <= last.offset + last.length) {
      last.length = Math.max(last.offset + last.length, e.offset + e.length) - last.offset;
      last.flags |= e.flags;
    } else {
      out.push({ ...e });
    }
  }
  return out;
}

/** Splits each extent into consecutive pieces of at most `maxLength` bytes (lazily). @throws InvalidInputError */
export function* splitExtents<T extends ByteRange>(extents: Iterable<T>, maxLength: number): Generator<T> {
  if (!Number.isSafeInteger(maxLength) || maxLength <= 0) {
    throw new InvalidInputError(`maximum piece length ${maxLength} is not a positive integer number of bytes`);
  }
  for (const e of extents) {
    for (let done = 0; done < e.length; done += maxLength) {
      yield { ...e, offset: e.offset + done, length: Math.min(maxLength, e.length - done) };
    }
  }
}

/** The same, over an async source. @throws InvalidInputError */
export async function* splitExtentsAsync<T extends ByteRange>(extents: AsyncIterable<T> | Iterable<T>, maxLength: number): AsyncGenerator<T> {
  for await (const e of extents) yield* splitExtents([e], maxLength);
}

/**
 * The ranges covered by both lists (each list is merged first); the result carries `a`'s flags.
 * @throws InvalidInputError on invalid extents
 */
export function intersectExtents(a: Iterable<Extent>, b: Iterable<Extent | ByteRange>): Extent[] {
  const left = mergeExtents(a);
  const right = mergeExtents([...b].map((r) => ({ offset: r.offset, length: r.length, flags: 0 })));
  const out: Extent[] = [];
  let j = 0;
  for (const e of left) {
    while (j < right.length && right[j].offset + right[j].length <= e.offset) j++;
    for (let k = j; k < right.length && right[k].offset < e.offset + e.length; k++) {
      const s = Math.max(e.offset, right[k].offset);
      const t = Math.min(e.offset + e.length, right[k].offset + right[k].length);
      if (t > s) out.push({ offset: s, length: t - s, flags: e.flags });
    }
  }
  return out;
}

/** Total bytes covered by the extents (as given, overlaps counted twice). */
export function totalLength(extents: Iterable<ByteRange>): number {
  let sum = 0;
  for (const e of extents) sum += e.length;
  return sum;
}
