// Progress output of long commands: a bar with bytes, rate and ETA on a TTY, plain lines when piped, nothing with --quiet.
import { createRequire } from 'node:module';
import type cliProgressModule from 'cli-progress';

// cli-progress loads only when a bar is drawn (a TTY): the other commands start without it.
const require = createRequire(import.meta.url);

export interface ProgressUpdate {
  done: number;
  total: number;
}

export interface ProgressReporter {
  start(label: string, total: number): void;
  update(update: ProgressUpdate): void;
  stop(): void;
}

export function formatBytes(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = bytes;
  let unit = 0;
  while (Math.abs(value) >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${unit === 0 ? value : value.toFixed(1)} ${units[unit]}`;
}

export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds)) return '?';
  const s = Math.round(seconds);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`;
}

/** Picks the reporter for the output: quiet → none, TTY → bar, else → a plain line every `intervalMs`. */
export function createProgressReporter(options: { quiet?: boolean; json?: boolean; stream?: NodeJS.WriteStream; intervalMs?: number }): ProgressReporter {
  const stream = options.stream ?? process.stderr;
  if (options.quiet || options.json) return { start() {}, update() {}, stop() {} };
  if (stream.isTTY) return new BarReporter(stream);
  return new LineReporter(stream, options.intervalMs ?? 2000);
}

class BarReporter implements ProgressReporter {
  private bar: cliProgressModule.SingleBar | undefined;
  private startedAt = 0;

  constructor(private readonly stream: NodeJS.WriteStream) {}

  start(label: string, total: number): void {
    this.startedAt = Date.now();
    const cliProgress = require('cli-progress') as typeof cliProgressModule;
    this.bar = new cliProgress.SingleBar({
      stream: this.stream,
      format: `${label} [{bar}] {percentage}% | {doneText} / {totalText} | {rateText} | ETA {etaText}`,
      barCompleteChar: '#',
      barIncompleteChar: '-',
      hideCursor: true,
      clearOnComplete: false,
    });
    this.bar.start(Math.max(total, 1), 0, this.payload(0, total));
  }

  update({ done, total }: ProgressUpdate): void {
    this.bar?.setTotal(Math.max(total, 1));
    this.bar?.update(done, this.payload(done, total));
  }

  stop(): void {
    this.bar?.stop();
    this.bar = undefined;
  }

  private payload(done: number, total: number): Record<string, string> {
    const elapsed = (Date.now() - this.startedAt) / 1000;
    const rate = elapsed > 0 ? done / elapsed : 0;
    return {
      doneText: formatBytes(done),
      totalText: formatBytes(total),
      rateText: `${formatBytes(rate)}/s`,
      etaText: rate > 0 ? formatDuration((total - done) / rate) : '?',
    };
  }
}

class LineReporter implements ProgressReporter {
  private label = '';
  private startedAt = 0;
  private lastLine = 0;
  private last: ProgressUpdate = { done: 0, total: 0 };

  constructor(private readonly stream: NodeJS.WritableStream, private readonly intervalMs: number) {}

  start(label: string, total: number): void {
    this.label = label;
    this.startedAt = Date.now();
    this.lastLine = 0;
    this.last = { done: 0, total };
    this.stream.write(`${label}: ${formatBytes(total)} to process\n`);
  }

  update(update: ProgressUpdate): void {
    this.last = update;
    const now = Date.now();
    if (now - this.lastLine < this.intervalMs) return;
    this.lastLine = now;
    this.stream.write(`${this.line()}\n`);
  }

  stop(): void {
    if (this.label) this.stream.write(`${this.line()}\n`);
    this.label = '';
  }

  private line(): string {
    const { done, total } = this.last;
    const elapsed = (Date.now() - this.startedAt) / 1000;
    const rate = elapsed > 0 ? done / elapsed : 0;
    const percent = total > 0 ? Math.floor((done / total) * 100) : 100;
    return `${this.label}: ${percent}% ${formatBytes(done)} / ${formatBytes(total)} at ${formatBytes(rate)}/s, ETA ${rate > 0 ? formatDuration((total - done) / rate) : '?'}`;
  }
}
