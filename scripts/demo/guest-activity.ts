// What the demo's guest does between two backups: overwrites in data, new data in holes, zeroed ranges, scattered small
// writes and a range written twice, sized in proportion to the disk (about 3 % of it). Pure planning plus one runner.
import { writeFileSync } from 'node:fs';
import { RandomStream, seededRandom, type Region } from './mixed-disk.js';

const KiB = 1024;
const MiB = 1024 * KiB;

export interface GuestWrite {
  /** A qemu-io command for the guest device (`write -P 0x41 1048576 65536`). */
  command: string;
  offset: number;
  length: number;
  what: string;
}

/**
 * The writes for a disk laid out as `regions`; `randomFile` names a 4 MiB file of random bytes that `write -s` repeats
 * (write it with writeRandomPatternFile). Pure; deterministic for a seed.
 */
export function planGuestActivity(regions: readonly Region[], size: number, randomFile: string, seed = 7): GuestWrite[] {
  const random = seededRandom(seed);
  const unit = Math.max(64 * KiB, Math.floor(size / 256 / (64 * KiB)) * 64 * KiB);
  const writes: GuestWrite[] = [];
  const pick = (kind: Region['kind'], minLength: number): Region | undefined => {
    const candidates = regions.filter((r) => r.kind === kind && r.length >= minLength);
    return candidates[Math.floor(random() * candidates.length)];
  };
  const inside = (region: Region, length: number): number => {
    const slots = Math.floor((region.length - length) / (64 * KiB));
    return region.offset + Math.floor(random() * (slots + 1)) * 64 * KiB;
  };
  const fill = (what: string, offset: number, length: number, source: 'random' | number): void => {
    for (let done = 0; done < length; done += 4 * MiB) {
      const part = Math.min(4 * MiB, length - done);
      const data = source === 'random' ? `-s ${randomFile}` : `-P 0x${source.toString(16).padStart(2, '0')}`;
      writes.push({ command: `write ${data} ${offset + done} ${part}`, offset: offset + done, length: part, what });
    }
  };
  const zero = (what: string, offset: number, length: number): void => {
    writes.push({ command: `write -z ${offset} ${length}`, offset, length, what });
  };

  const randomRegion = pick('random', unit * 2);
  if (randomRegion) fill('new random data over old random data', inside(randomRegion, unit * 2), unit * 2, 'random');
  const textRegion = pick('text', unit);
  if (textRegion) fill('pattern over text', inside(textRegion, unit), unit, 0x41);
  const hole = pick('hole', unit * 2);
  if (hole) fill('new data where there was none', inside(hole, unit * 2), unit * 2, 'random');
  const zeroed = pick('random', unit);
  if (zeroed && zeroed !== randomRegion) zero('zeroed (write -z)', inside(zeroed, unit), unit);
  // The same range written twice: only the second version is in the incremental.
  const twice = pick('text', 64 * KiB);
  if (twice) {
    const offset = inside(twice, 64 * KiB);
    fill('written twice (first)', offset, 64 * KiB, 0x21);
    fill('written twice (second)', offset, 64 * KiB, 0x22);
  }
  // Scattered 4 KiB writes anywhere (a few land in holes, most in data).
  for (let i = 0; i < 16; i++) {
    const offset = Math.floor(random() * (size / (4 * KiB))) * 4 * KiB;
    fill('scattered 4 KiB write', offset, 4 * KiB, 0x60 + i);
  }
  return writes;
}

/** Writes the 4 MiB of random bytes that `write -s` uses. Throws the write error. */
export function writeRandomPatternFile(path: string, seed = 99): void {
  writeFileSync(path, new RandomStream(seed).next(4 * MiB));
}

/** Bytes the writes cover, overlaps counted once. Pure. */
export function coveredBytes(writes: readonly GuestWrite[]): number {
  const ranges = writes.map((w) => [w.offset, w.offset + w.length] as const).sort((a, b) => a[0] - b[0]);
  let total = 0;
  let end = -1;
  for (const [start, stop] of ranges) {
    if (stop <= end) continue;
    total += stop - Math.max(start, end);
    end = stop;
  }
  return total;
}
