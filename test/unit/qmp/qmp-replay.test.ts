// The transcript parser and the replaying fake monitor (test/harness), on the recorded libvirt captures.
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { QmpClosedError, QmpError } from '../../../src/qmp/errors.js';
import type { QmpEvent } from '../../../src/qmp/messages.js';
import { ReplayMismatchError, ReplayQmp } from '../../harness/qmp-replay.js';
import { formatTranscript, loadTranscript, parseTranscript } from '../../harness/qmp-transcript.js';

const captures = join(process.cwd(), 'fixtures/qmp/7.2.22/libvirt-9.0');

describe('transcripts', () => {
  it('parse and format back to the same messages for every captured file', async () => {
    const files = (await readdir(captures)).filter((f) => f.endsWith('.qmp'));
    expect(files.length).toBeGreaterThanOrEqual(10);
    for (const file of files) {
      const text = await readFile(join(captures, file), 'utf8');
      const entries = parseTranscript(text, file);
      expect(entries.length).toBe(text.split('\n').filter((l) => l.trim()).length);
      const again = parseTranscript(formatTranscript(entries));
      expect(again).toEqual(entries);
      const original = text.split('\n').filter((l) => l.trim()).map((l) => JSON.parse(l.slice(1)) as unknown);
      const formatted = formatTranscript(entries).split('\n').filter((l) => l.trim()).map((l) => JSON.parse(l.slice(1)) as unknown);
      expect(formatted).toEqual(original);
    }
  });

  it('refuses a line that is not a transcript line, naming the line', () => {
    expect(() => parseTranscript('> {"execute":"a"}\n? {}\n', 'x.qmp')).toThrow(/x\.qmp:2/);
    expect(() => parseTranscript('< {nope\n', 'y.qmp')).toThrow(/y\.qmp:1: not JSON/);
  });
});

describe('ReplayQmp', () => {
  it('replays libvirt push-full: replies in order, job events reach a listener registered before the command', async () => {
    const entries = await loadTranscript(join(captures, '02-push-full-cp1.qmp'));
    const qmp = new ReplayQmp(entries);
    const listener = qmp.listen('JOB_STATUS_CHANGE');
    const label = (e: QmpEvent): string => `${String(e.data.id).split('-')[0]}:${String(e.data.status)}`;
    const replies: unknown[] = [];
    const createdJob: string[] = [];
    for (const command of entries) {
      if (command.kind !== 'command') continue;
      replies.push(await qmp.execute(command.execute, command.arguments));
      if (command.execute === 'blockdev-create') {
        // the events after the reply arrive later, as from QEMU: wait for them
        let event: QmpEvent;
        do {
          event = await listener.next(undefined, { timeoutMs: 1000 });
          createdJob.push(label(event));
        } while (event.data.status !== 'concluded');
      }
    }
    qmp.assertDone();
    await new Promise((resolve) => setImmediate(resolve));
    const rest = listener.buffered.map(label);
    listener.close();
    expect(createdJob).toEqual(['create:created', 'create:running', 'create:waiting', 'create:pending', 'create:concluded']);
    expect(rest).toEqual([
      'create:null',
      'backup:created',
      'backup:running',
      'backup:paused',
      'backup:running',
      'backup:waiting',
      'backup:pending',
      'backup:concluded',
      'backup:null',
    ]);
    const recorded = entries.filter((e) => e.kind === 'return').map((e) => (e.kind === 'return' ? e.value : undefined));
    expect(replies).toEqual(recorded);
  });

  it('rejects a command the transcript does not expect, and reports commands never sent', async () => {
    const qmp = new ReplayQmp(parseTranscript('> {"execute":"a","arguments":{"x":1}}\n< {"return": 5}\n> {"execute":"b"}\n< {"return": {}}\n'));
    await expect(qmp.execute('a', { x: 2 })).rejects.toBeInstanceOf(ReplayMismatchError);
    await expect(qmp.execute('a', { x: 1 })).resolves.toBe(5);
    expect(() => qmp.assertDone()).toThrow(/never sent, next: .*"b"/);
    await expect(qmp.execute('c')).rejects.toThrow(/expects b/);
  });

  it('matches arguments with a custom matcher, turns recorded errors into QmpError, and closes', async () => {
    const qmp = new ReplayQmp(
      parseTranscript('> {"execute":"blockdev-del","arguments":{"node-name":"libvirt-9-format"}}\n< {"id": 1, "error": {"class": "GenericError", "desc": "busy"}}\n'),
      { matchArguments: (expected, actual) => Object.keys(expected ?? {}).join() === Object.keys(actual ?? {}).join() },
    );
    const error = (await qmp.execute('blockdev-del', { 'node-name': 'fleece-vda' }).catch((e: unknown) => e)) as QmpError;
    expect(error).toBeInstanceOf(QmpError);
    expect([error.errorClass, error.desc, error.command]).toEqual(['GenericError', 'busy', 'blockdev-del']);
    const waiting = qmp.waitFor('NEVER').catch((e: unknown) => e);
    qmp.close();
    expect(await waiting).toBeInstanceOf(QmpClosedError);
    await expect(qmp.execute('x')).rejects.toBeInstanceOf(QmpClosedError);
  });
});
