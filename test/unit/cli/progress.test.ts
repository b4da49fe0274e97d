import { PassThrough } from 'node:stream';
import { createProgressReporter, formatBytes, formatDuration } from '../../../src/cli/progress.js';

describe('progress output', () => {
  it('formats bytes and durations for people', () => {
    expect(formatBytes(512)).toBe('512 B');
    expect(formatBytes(1536)).toBe('1.5 KiB');
    expect(formatBytes(3 * 1024 ** 3)).toBe('3.0 GiB');
    expect(formatDuration(42)).toBe('42s');
    expect(formatDuration(125)).toBe('2m05s');
    expect(formatDuration(7322)).toBe('2h02m');
  });

  it('prints plain lines when the output is not a terminal, and nothing when quiet', () => {
    const stream = new PassThrough() as unknown as NodeJS.WriteStream;
    let text = '';
    (stream as unknown as PassThrough).on('data', (chunk: Buffer) => { text += chunk.toString(); });
    const reporter = createProgressReporter({ stream, intervalMs: 0 });
    reporter.start('vda', 1024 * 1024);
    reporter.update({ done: 512 * 1024, total: 1024 * 1024 });
    reporter.stop();
    expect(text).toContain('vda: 1.0 MiB to process');
    expect(text).toMatch(/vda: 50% 512\.0 KiB \/ 1\.0 MiB at/);

    const quietStream = new PassThrough();
    let quietText = '';
    quietStream.on('data', (chunk: Buffer) => { quietText += chunk.toString(); });
    const quiet = createProgressReporter({ quiet: true, stream: quietStream as unknown as NodeJS.WriteStream, intervalMs: 0 });
    quiet.start('vda', 10);
    quiet.update({ done: 5, total: 10 });
    quiet.stop();
    expect(quietText).toBe('');
  });
});
