// Plain text tables and number formats for the demo and the benchmark (no colours, no dependencies).

const MiB = 1024 * 1024;

export type Align = 'left' | 'right';

/** Formats rows under headers, columns padded; numbers right-aligned by default. Pure. */
export function formatTable(headers: readonly string[], rows: readonly (readonly string[])[], align?: readonly Align[]): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const alignOf = (i: number): Align => align?.[i] ?? (i === 0 ? 'left' : 'right');
  const line = (cells: readonly string[]): string =>
    cells.map((c, i) => (alignOf(i) === 'left' ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ').trimEnd();
  const rule = widths.map((w) => '-'.repeat(w)).join('  ');
  return [line(headers), rule, ...rows.map(line)].join('\n');
}

/** 1536 → "1.5 KiB"; 0 → "0 B". */
export function formatBytes(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = bytes;
  let unit = 0;
  while (Math.abs(value) >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return unit === 0 ? `${value} B` : `${value.toFixed(value >= 100 ? 0 : 1)} ${units[unit]}`;
}

/** Bytes per second as "123 MiB/s" (one decimal under 10). */
export function formatRate(bytes: number, seconds: number): string {
  if (!(seconds > 0)) return '-';
  const rate = bytes / MiB / seconds;
  return `${rate.toFixed(rate < 10 ? 1 : 0)} MiB/s`;
}

export function formatSeconds(seconds: number): string {
  return seconds < 10 ? `${seconds.toFixed(2)} s` : `${seconds.toFixed(1)} s`;
}

export function mib(bytes: number): number {
  return bytes / MiB;
}
