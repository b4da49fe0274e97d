// Extents handed to the writer, and aligning dirty ranges to sha blocks.

/** A range of the disk with its data (`data.length === length`). */
export interface DataExtent {
  offset: number;
  length: number;
  data: Uint8Array;
}

/** A range the source reports as reading zeros (a hole, or a discarded dirty range). */
export interface ZeroExtent {
  offset: number;
  length: number;
  zero: true;
}

export type Extent = DataExtent | ZeroExtent;

export interface Range { offset: number; length: number }

/**
 * Expands ranges outward to `blockSize` boundaries (clamped to `diskSize`) and merges those that touch,
 * sorted by offset: what a changed-extents incremental must read (the writer refuses partial blocks).
 */
export function alignRangesToBlocks(ranges: readonly Range[], blockSize: number, diskSize: number): Range[] {
  const sorted = ranges.filter((r) => r.length > 0).map((r) => ({
    start: Math.floor(r.offset / blockSize) * blockSize,
    end: Math.min(diskSize, Math.ceil((r.offset + r.length) / blockSize) * blockSize),
  })).sort((a, b) => a.start - b.start);
  const out: Range[] = [];
  for (const r of sorted) {
    const last = out[out.length - 1];
    if (last && r.start <= last.offset + last.length) {
      last.length = Math.max(last.length, r.end - last.offset);
    } else if (r.end > r.start) {
      out.push({ offset: r.start, length: r.end - r.start });
    }
  }
  return out;
}
