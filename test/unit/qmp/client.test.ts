import { jest } from '@jest/globals';
import { QmpClient } from '../../../src/qmp/client.js';
import {
  QmpClosedError,
  QmpConnectError,
  QmpError,
  QmpProtocolError,
  QmpTimeoutError,
} from '../../../src/qmp/errors.js';
import { AbortedError, FleeceError } from '../../../src/util/errors.js';
import { FakeQmpServer, type FakeQmpConnection } from '../../harness/fake-qmp-server.js';
import { makeTempDir, removeTempDir } from '../../harness/temp-dir.js';

let dir: string;
let server: FakeQmpServer;
let client: QmpClient | undefined;

beforeEach(async () => {
  dir = await makeTempDir('qmp-unit');
  server = await FakeQmpServer.start(dir);
});

afterEach(async () => {
  await client?.close();
  client = undefined;
  await server.stop();
  await removeTempDir(dir);
});

async function connected(): Promise<{ client: QmpClient; peer: FakeQmpConnection }> {
  const [c, peer] = await Promise.all([QmpClient.connect({ path: server.path }, { name: 'unit' }), server.connection()]);
  client = c;
  return { client: c, peer };
}

/** Lets the client read whatever the peer wrote. */
function settle(ms = 20): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

describe('QmpClient.connect', () => {
  it('reads the greeting, negotiates capabilities and is running', async () => {
    const { client: c, peer } = await connected();
    expect(c.greeting.version.qemu).toEqual({ major: 7, minor: 2, micro: 22 });
    expect(c.greeting.capabilities).toEqual(['oob']);
    expect(c.state).toBe('running');
    expect(c.closed).toBe(false);
    expect(peer.received.map((m) => m.execute)).toEqual(['qmp_capabilities']);
    expect(peer.received[0]!.arguments).toBeUndefined();
  });

  it('fails with QmpConnectError naming the socket when nothing listens there', async () => {
    const path = `${dir}/nobody.sock`;
    const error = await QmpClient.connect({ path }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(QmpConnectError);
    expect((error as QmpConnectError).code).toBe('QMP_CONNECT');
    expect((error as Error).message).toContain(path);
  });

  it('fails with QmpConnectError when the greeting never comes', async () => {
    await server.stop();
    server = await FakeQmpServer.start(dir, { greeting: null });
    const error = await QmpClient.connect({ path: server.path }, { timeoutMs: 200 }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(QmpConnectError);
    expect((error as Error).message).toMatch(/did not complete the handshake within 200 ms/);
  });

  it('fails with QmpConnectError when qmp_capabilities is refused', async () => {
    await server.stop();
    server = await FakeQmpServer.start(dir, { autoCapabilities: false });
    const pending = QmpClient.connect({ path: server.path }).catch((e: unknown) => e);
    const peer = await server.connection();
    const command = await peer.nextCommand();
    peer.error(command.id, 'CommandNotFound', 'nope');
    const error = await pending;
    expect(error).toBeInstanceOf(QmpConnectError);
    expect((error as Error).cause).toBeInstanceOf(QmpError);
  });

  it('fails with QmpConnectError when the first message is not a greeting', async () => {
    await server.stop();
    server = await FakeQmpServer.start(dir, { greeting: { hello: 'world' } });
    const error = await QmpClient.connect({ path: server.path }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(QmpConnectError);
    expect((error as Error).cause).toBeInstanceOf(QmpProtocolError);
  });

  it('rejects with AbortedError when its signal fires', async () => {
    await server.stop();
    server = await FakeQmpServer.start(dir, { greeting: null });
    const controller = new AbortController();
    const pending = QmpClient.connect({ path: server.path }, { signal: controller.signal }).catch((e: unknown) => e);
    await server.connection();
    controller.abort();
    expect(await pending).toBeInstanceOf(AbortedError);
  });
});

describe('QmpClient.execute', () => {
  it('sends arguments and resolves with the return value', async () => {
    const { client: c, peer } = await connected();
    const result = c.execute('query-block', { flat: true });
    const command = await peer.nextCommand();
    expect(command.execute).toBe('query-block');
    expect(command.arguments).toEqual({ flat: true });
    peer.reply(command.id, [{ device: 'vda' }]);
    await expect(result).resolves.toEqual([{ device: 'vda' }]);
  });

  it('routes replies by id when several commands are in flight and answered out of order', async () => {
    const { client: c, peer } = await connected();
    const calls = [c.execute('a'), c.execute('b'), c.execute('c')];
    const commands = [await peer.nextCommand(), await peer.nextCommand(), await peer.nextCommand()];
    expect(new Set(commands.map((m) => m.id)).size).toBe(3);
    // answer c, a, b, all in one write
    peer.raw(
      peer.replyLine(commands[2]!.id, 'C') + peer.replyLine(commands[0]!.id, 'A') + peer.replyLine(commands[1]!.id, 'B'),
    );
    await expect(Promise.all(calls)).resolves.toEqual(['A', 'B', 'C']);
  });

  it('handles a reply split across writes, with events interleaved, at every byte boundary', async () => {
    const { client: c, peer } = await connected();
    const seen: string[] = [];
    c.on('*', (e) => seen.push(`${e.event}:${String(e.data.n)}`));
    const wireFor = (id: unknown): Buffer =>
      Buffer.from(peer.eventLine('E', { n: 1 }) + peer.replyLine(id, { ok: 'ünï€' }) + peer.eventLine('E', { n: 2 }));
    const sample = wireFor('fleece-0-0');
    for (const cut of [1, 10, sample.indexOf('ü') + 1, sample.indexOf('€') + 2, sample.length - 3]) {
      seen.length = 0;
      const result = c.execute('x');
      const command = await peer.nextCommand();
      const bytes = wireFor(command.id);
      peer.raw(bytes.subarray(0, cut));
      await settle(5);
      peer.raw(bytes.subarray(cut));
      await expect(result).resolves.toEqual({ ok: 'ünï€' });
      await settle(5);
      expect(seen).toEqual(['E:1', 'E:2']);
    }
  });

  it('turns an error reply into a QmpError with QEMU class, description, command and arguments', async () => {
    const { client: c, peer } = await connected();
    const result = c.execute('blockdev-del', { 'node-name': 'nope' }).catch((e: unknown) => e);
    const command = await peer.nextCommand();
    peer.error(command.id, 'GenericError', "Failed to find node with node-name='nope'");
    const error = (await result) as QmpError;
    expect(error).toBeInstanceOf(QmpError);
    expect(error).toBeInstanceOf(FleeceError);
    expect(error.code).toBe('QMP_COMMAND');
    expect(error.errorClass).toBe('GenericError');
    expect(error.desc).toBe("Failed to find node with node-name='nope'");
    expect(error.command).toBe('blockdev-del');
    expect(error.args).toEqual({ 'node-name': 'nope' });
    expect(error.message).toContain('blockdev-del');
  });

  it('rejects with QmpTimeoutError after timeoutMs, drops the late reply, and keeps working', async () => {
    const { client: c, peer } = await connected();
    const error = await Promise.all([
      c.execute('slow', undefined, { timeoutMs: 50 }).catch((e: unknown) => e),
      peer.nextCommand(),
    ]).then(([e]) => e as QmpTimeoutError);
    expect(error).toBeInstanceOf(QmpTimeoutError);
    expect(error.code).toBe('QMP_TIMEOUT');
    expect(error.command).toBe('slow');
    expect(error.timeoutMs).toBe(50);
    expect(error.message).toMatch(/slow.*50 ms/);
    peer.reply(peer.received.at(-1)!.id, 'late');
    const next = c.execute('fast');
    const command = await peer.nextCommand();
    peer.reply(command.id, 'fast-result');
    await expect(next).resolves.toBe('fast-result');
    expect(c.closed).toBe(false);
  });

  it('rejects with AbortedError when the signal fires while in flight, and drops the late reply', async () => {
    const { client: c, peer } = await connected();
    const controller = new AbortController();
    const result = c.execute('slow', undefined, { signal: controller.signal }).catch((e: unknown) => e);
    const command = await peer.nextCommand();
    controller.abort(new Error('user'));
    expect(await result).toBeInstanceOf(AbortedError);
    peer.reply(command.id, 'late');
    const next = c.execute('fast');
    peer.reply((await peer.nextCommand()).id, 2);
    await expect(next).resolves.toBe(2);
  });

  it('does not send a command whose signal already fired', async () => {
    const { client: c, peer } = await connected();
    const error = await c.execute('never', undefined, { signal: AbortSignal.abort() }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(AbortedError);
    const after = c.execute('after');
    const command = await peer.nextCommand();
    expect(command.execute).toBe('after');
    peer.reply(command.id, null);
    await after;
  });
});

describe('QmpClient events', () => {
  it('listen() buffers an event that arrives before the reply and before next() is called', async () => {
    const { client: c, peer } = await connected();
    const listener = c.listen('JOB_STATUS_CHANGE');
    const result = c.execute('blockdev-create', { 'job-id': 'j0' });
    const command = await peer.nextCommand();
    peer.raw(
      peer.eventLine('JOB_STATUS_CHANGE', { status: 'created', id: 'j0' }) +
        peer.eventLine('JOB_STATUS_CHANGE', { status: 'running', id: 'j0' }) +
        peer.replyLine(command.id, {}) +
        peer.eventLine('JOB_STATUS_CHANGE', { status: 'concluded', id: 'j0' }),
    );
    await result;
    await settle();
    const concluded = await listener.next((e) => e.data.status === 'concluded', { timeoutMs: 1000 });
    expect(concluded.data).toEqual({ status: 'concluded', id: 'j0' });
    expect(concluded.timestamp).toEqual({ seconds: 1, microseconds: 2 });
    // events that did not match the predicate stay buffered, in order
    expect((await listener.next()).data.status).toBe('created');
    expect((await listener.next()).data.status).toBe('running');
    listener.close();
  });

  it('next() waits for an event that has not come yet, and ignores other event names', async () => {
    const { client: c, peer } = await connected();
    const listener = c.listen(['A', 'B']);
    const pending = listener.next((e) => e.event === 'B');
    peer.event('C');
    peer.event('A', { n: 1 });
    peer.event('B', { n: 2 });
    expect((await pending).data).toEqual({ n: 2 });
    expect((await listener.next()).data).toEqual({ n: 1 });
    listener.close();
    await expect(listener.next()).rejects.toBeInstanceOf(AbortedError);
  });

  it('an event without data gets an empty data object', async () => {
    const { client: c, peer } = await connected();
    const waiting = c.waitFor('STOP');
    peer.event('STOP');
    expect((await waiting).data).toEqual({});
  });

  it('waitFor rejects with QmpTimeoutError naming the event, and AbortedError on abort', async () => {
    const { client: c } = await connected();
    const timeout = (await c.waitFor('NEVER', undefined, { timeoutMs: 30 }).catch((e: unknown) => e)) as QmpTimeoutError;
    expect(timeout).toBeInstanceOf(QmpTimeoutError);
    expect(timeout.message).toContain('NEVER');
    const controller = new AbortController();
    const aborted = c.waitFor('NEVER', undefined, { signal: controller.signal }).catch((e: unknown) => e);
    controller.abort();
    expect(await aborted).toBeInstanceOf(AbortedError);
  });

  it('on() calls handlers until unsubscribed; a throwing handler does not break the client', async () => {
    const { client: c, peer } = await connected();
    const named = jest.fn();
    const all = jest.fn();
    c.on('X', () => {
      throw new Error('handler bug');
    });
    const offNamed = c.on('X', named);
    c.on('*', all);
    peer.event('X', { n: 1 });
    peer.event('Y', { n: 2 });
    await settle();
    offNamed();
    peer.event('X', { n: 3 });
    await settle();
    expect(named).toHaveBeenCalledTimes(1);
    expect(all).toHaveBeenCalledTimes(3);
    const result = c.execute('still-alive');
    peer.reply((await peer.nextCommand()).id, true);
    await expect(result).resolves.toBe(true);
  });
});

describe('QmpClient closing', () => {
  it('peer closing mid-command rejects every pending call and wait with QmpClosedError naming the socket', async () => {
    const { client: c, peer } = await connected();
    const onClose = jest.fn();
    c.onClose(onClose);
    const listener = c.listen('SHUTDOWN');
    const calls = [c.execute('a').catch((e: unknown) => e), c.execute('b').catch((e: unknown) => e)];
    const wait = listener.next().catch((e: unknown) => e);
    const waitFor = c.waitFor('OTHER').catch((e: unknown) => e);
    await peer.nextCommand();
    await peer.nextCommand();
    peer.drop();
    const errors = [...(await Promise.all(calls)), await wait, await waitFor] as Error[];
    for (const error of errors) {
      expect(error).toBeInstanceOf(QmpClosedError);
      expect(error.message).toContain(server.path);
      expect(error.message).toMatch(/QEMU/);
    }
    expect(errors[0]!.message).toContain('reply to a');
    expect(c.closed).toBe(true);
    expect(c.state).toBe('closed');
    expect(onClose).toHaveBeenCalledTimes(1);
    expect(onClose.mock.calls[0]![0]).toBeInstanceOf(QmpClosedError);
    // later calls reject at once, without hanging
    await expect(c.execute('later')).rejects.toBeInstanceOf(QmpClosedError);
    await expect(c.listen('X').next()).rejects.toBeInstanceOf(QmpClosedError);
    await expect(c.waitFor('X')).rejects.toBeInstanceOf(QmpClosedError);
    const lateClose = jest.fn();
    c.onClose(lateClose);
    await settle(1);
    expect(lateClose).toHaveBeenCalledTimes(1);
    await c.close();
  });

  it('an event buffered before the connection dropped can still be taken', async () => {
    const { client: c, peer } = await connected();
    const listener = c.listen('SHUTDOWN');
    peer.event('SHUTDOWN', { guest: false });
    await settle();
    peer.drop();
    await settle();
    expect(c.closed).toBe(true);
    expect((await listener.next()).data).toEqual({ guest: false });
    await expect(listener.next()).rejects.toBeInstanceOf(QmpClosedError);
  });

  it('close() rejects pending calls, is idempotent, and later calls reject at once', async () => {
    const { client: c, peer } = await connected();
    const pending = c.execute('a').catch((e: unknown) => e);
    await peer.nextCommand();
    await Promise.all([c.close(), c.close()]);
    await c.close();
    const error = (await pending) as QmpClosedError;
    expect(error).toBeInstanceOf(QmpClosedError);
    expect(error.message).toContain('closed by this client');
    expect(c.state).toBe('closed');
    await expect(c.execute('b')).rejects.toThrow(/b was not sent/);
  });

  it('a peer that sends garbage is disconnected with a protocol error as the cause', async () => {
    const { client: c, peer } = await connected();
    const pending = c.execute('a').catch((e: unknown) => e);
    await peer.nextCommand();
    peer.raw('this is not json\r\n');
    const error = (await pending) as QmpClosedError;
    expect(error).toBeInstanceOf(QmpClosedError);
    expect(error.cause).toBeInstanceOf(QmpProtocolError);
    expect(c.closed).toBe(true);
  });
});
