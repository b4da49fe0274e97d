// QMP transcripts (`>` command, `<` reply, `!` event, one JSON message a line): parse, format, and record from a live client.
import { readFile } from 'node:fs/promises';
import type { QmpTrace } from '../../src/qmp/client.js';
import type { QmpEvent } from '../../src/qmp/messages.js';

export type TranscriptEntry =
  | { kind: 'command'; execute: string; arguments?: Record<string, unknown>; id?: unknown }
  | { kind: 'return'; value: unknown; id?: unknown }
  | { kind: 'error'; error: { class: string; desc: string }; id?: unknown }
  | { kind: 'event'; event: QmpEvent };

/**
 * Parses a transcript; blank lines and lines starting with `#` are skipped.
 * @throws Error naming the line for anything else that is not `>`, `<` or `!` followed by a JSON object.
 */
export function parseTranscript(text: string, source = 'transcript'): TranscriptEntry[] {
  const entries: TranscriptEntry[] = [];
  text.split('\n').forEach((raw, index) => {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) return;
    const where = `${source}:${index + 1}`;
    const mark = line[0];
    let message: Record<string, unknown>;
    try {
      message = JSON.parse(line.slice(1)) as Record<string, unknown>;
    } catch (error) {
      throw new Error(`${where}: not JSON after '${mark}'`, { cause: error });
    }
    if (mark === '>') {
      const entry: TranscriptEntry = { kind: 'command', execute: String(message.execute), id: message.id };
      if (message.arguments !== undefined) entry.arguments = message.arguments as Record<string, unknown>;
      entries.push(entry);
    } else if (mark === '<') {
      if ('error' in message) {
        entries.push({ kind: 'error', error: message.error as { class: string; desc: string }, id: message.id });
      } else {
        entries.push({ kind: 'return', value: message.return, id: message.id });
      }
    } else if (mark === '!') {
      entries.push({
        kind: 'event',
        event: {
          event: String(message.event),
          data: (message.data as Record<string, unknown> | undefined) ?? {},
          timestamp: (message.timestamp as QmpEvent['timestamp'] | undefined) ?? { seconds: 0, microseconds: 0 },
        },
      });
    } else {
      throw new Error(`${where}: a transcript line starts with '>', '<' or '!', not '${mark}'`);
    }
  });
  return entries;
}

/** Reads and parses a transcript file. @throws Error when unreadable or malformed. */
export async function loadTranscript(path: string): Promise<TranscriptEntry[]> {
  return parseTranscript(await readFile(path, 'utf8'), path);
}

/** Formats entries as transcript text (the inverse of parseTranscript). */
export function formatTranscript(entries: TranscriptEntry[]): string {
  return entries
    .map((entry) => {
      switch (entry.kind) {
        case 'command': {
          const message: Record<string, unknown> = { execute: entry.execute };
          if (entry.arguments !== undefined) message.arguments = entry.arguments;
          if (entry.id !== undefined) message.id = entry.id;
          return `> ${JSON.stringify(message)}`;
        }
        case 'return':
          return `< ${JSON.stringify({ return: entry.value, id: entry.id })}`;
        case 'error':
          return `< ${JSON.stringify({ id: entry.id, error: entry.error })}`;
        case 'event': {
          const { event, data, timestamp } = entry.event;
          return `! ${JSON.stringify({ timestamp, event, data })}`;
        }
      }
    })
    .map((line) => `${line}\n`)
    .join('');
}

/**
 * A recorder to pass as `QmpClient.connect(address, { trace: recorder.trace })`: keeps the traffic in wire order,
 * without the greeting and the `qmp_capabilities` exchange.
 */
export function recordTranscript(): { trace: QmpTrace; entries: TranscriptEntry[]; text(): string } {
  const entries: TranscriptEntry[] = [];
  let negotiationId: unknown;
  const trace: QmpTrace = (direction, message) => {
    if (direction === 'send') {
      if (message.execute === 'qmp_capabilities') {
        negotiationId = message.id;
        return;
      }
      const entry: TranscriptEntry = { kind: 'command', execute: String(message.execute), id: message.id };
      if (message.arguments !== undefined) entry.arguments = message.arguments as Record<string, unknown>;
      entries.push(entry);
      return;
    }
    if ('QMP' in message) return;
    if (negotiationId !== undefined && message.id === negotiationId) return;
    const text = parseTranscript(`${'event' in message ? '!' : '<'} ${JSON.stringify(message)}`);
    entries.push(...text);
  };
  return { trace, entries, text: () => formatTranscript(entries) };
}
