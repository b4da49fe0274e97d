// Which object supplies each byte of a restored disk: the chain resolved to the newest object per region, so every
// byte of the target is written once and objects fully overwritten by later backups are never read.

export interface Range {
  offset: number;
  length: number;
}

/** One object to read, and the parts of it (target ranges, ascending, disjoint) that survive in the final disk. */
export interface PlannedObject<E extends Range> {
  /** Index into the chain (0 = the full backup). */
  backup: number;
  entry: E;
  live: Range[];
}

/**
 * Resolves a chain (full first; each backup's objects in their listed order, a later one winning where they
 * overlap, as Cinder applies them) into the objects to read, ascending by offset, each with its surviving ranges.
 * Objects with nothing left are dropped. O(n log n) plus the splices of the covered list.
 */
export function planRestore<E extends Range>(chain: readonly (readonly E[])[]): PlannedObject<E>[] {
  // `covered`: disjoint ranges already supplied by newer objects, kept in negated coordinates ([-end, -start),
  // ascending): objects come in descending offset order, so new ranges land at the array's end, not its front
  // (splices at the front made this quadratic on chains of many small objects).
  const covered: [number, number][] = [];
  const planned: PlannedObject<E>[] = [];
  for (let b = chain.length - 1; b >= 0; b--) {
    const objects = chain[b]!;
    for (let i = objects.length - 1; i >= 0; i--) { // listed ascending: the last one first
      const entry = objects[i]!;
      if (entry.length <= 0) continue;
      const live = claim(covered, -(entry.offset + entry.length), 0 - entry.offset)
        .map((r) => ({ offset: 0 - (r.offset + r.length) + 0, length: r.length }))
        .reverse();
      if (live.length > 0) planned.push({ backup: b, entry, live });
    }
  }
  return planned.sort((x, y) => x.entry.offset - y.entry.offset || x.backup - y.backup);
}

/** The parts of [start, end) not in `covered`; then adds [start, end) to `covered` (merging). */
function claim(covered: [number, number][], start: number, end: number): Range[] {
  // first range that ends after start
  let lo = 0;
  let hi = covered.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (covered[mid]![1] <= start) lo = mid + 1;
    else hi = mid;
  }
  const free: Range[] = [];
  let pos = start;
  let j = lo;
  while (j < covered.length && covered[j]![0] < end) {
    const [cs, ce] = covered[j]!;
    if (cs > pos) free.push({ offset: pos, length: cs - pos });
    pos = Math.max(pos, ce);
    j++;
  }
  if (pos < end) free.push({ offset: pos, length: end - pos });
  // covered[lo, j) overlap [start, end): replace them and any touching neighbours with one merged range
  let first = lo;
  let last = j; // exclusive
  if (first > 0 && covered[first - 1]![1] === start) first--;
  if (last < covered.length && covered[last]![0] === end) last++;
  const mergedStart = Math.min(start, first < covered.length ? covered[first]![0] : start);
  const mergedEnd = Math.max(end, last > first ? covered[last - 1]![1] : end);
  covered.splice(first, last - first, [mergedStart, mergedEnd]);
  return free;
}

/** The complement of the union of ranges within [0, size), ascending. */
export function uncovered(ranges: readonly Range[], size: number): Range[] {
  const sorted = [...ranges].sort((a, b) => a.offset - b.offset);
  const gaps: Range[] = [];
  let pos = 0;
  for (const r of sorted) {
    if (r.offset > pos) gaps.push({ offset: pos, length: r.offset - pos });
    pos = Math.max(pos, r.offset + r.length);
  }
  if (pos < size) gaps.push({ offset: pos, length: size - pos });
  return gaps;
}
