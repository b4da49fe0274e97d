// The fleeced client against a tiny fake API server on a unix socket: paths, bodies, error mapping, SSE, detection.
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import http from 'node:http';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { DaemonClient, DaemonUnreachableError, detectDaemon, parseSseBlock } from '../../../src/cli/daemon-client.js';
import type { JobInfo } from '../../../src/daemon/api-types.js';
import { makeTempDir, removeTempDir } from '../../harness/temp-dir.js';

const job: JobInfo = {
  id: 'j1', vm: 'vm1', kind: 'pull', state: 'ready', startedAt: '2026-01-01T00:00:00Z',
  dataTotal: 10, dataProcessed: 0, dataRemaining: 10, elapsedMs: 5, disks: [],
};

interface Seen { method: string; url: string; body: unknown }

let dir: string;
let socket: string;
let server: http.Server;
const seen: Seen[] = [];

function reply(res: http.ServerResponse, status: number, body?: unknown): void {
  res.writeHead(status, body === undefined ? {} : { 'content-type': 'application/json' });
  res.end(body === undefined ? undefined : JSON.stringify(body));
}

beforeAll(async () => {
  dir = await makeTempDir('daemon-client');
  socket = join(dir, 'fleeced.sock');
  server = http.createServer((req, res) => {
    let text = '';
    req.on('data', (c: Buffer) => (text += c.toString()));
    req.on('end', () => {
      const body = text ? (JSON.parse(text) as unknown) : undefined;
      seen.push({ method: req.method ?? '', url: req.url ?? '', body });
      const route = `${req.method} ${req.url}`;
      switch (route) {
        case 'GET /v1/health': return reply(res, 200, { version: '0.1.0', pid: 42, uptimeMs: 1 });
        case 'GET /v1/vms': return reply(res, 200, { vms: [{ name: 'vm1', qmp: '/q.sock' }] });
        case 'POST /v1/vms': return reply(res, 201, { vm: body });
        case 'GET /v1/vms/vm1/checkpoints':
          return reply(res, 200, { current: 'cp2', checkpoints: [{ name: 'cp1', parent: null, creationTime: 1, disks: [] }] });
        case 'POST /v1/vms/vm1/checkpoints': return reply(res, 201, { name: 'cp3', xml: '<domaincheckpoint/>' });
        case 'GET /v1/vms/vm1/checkpoints/cp1?size=true': return reply(res, 200, { name: 'cp1', xml: '<x/>' });
        case 'DELETE /v1/vms/vm1/checkpoints/cp1?metadataOnly=true': return reply(res, 204);
        case 'POST /v1/vms/vm1/checkpoints/redefine': return reply(res, 201, { name: 'cp1' });
        case 'POST /v1/vms/vm1/backup-begin': return reply(res, 202, { job });
        case 'GET /v1/vms/vm1/job?completed=true': return reply(res, 200, { job: null });
        case 'GET /v1/vms/vm1/job?completed=false': return reply(res, 200, { job });
        case 'POST /v1/vms/vm1/job/abort': return reply(res, 200, { job: { ...job, state: 'cancelled' } });
        case 'GET /v1/vms/nope/checkpoints':
          return reply(res, 404, { error: { code: 'NOT_FOUND', message: "VM 'nope' is not registered; register it" } });
        case 'POST /v1/vms/busy/backup-begin':
          return reply(res, 409, { error: { code: 'CONFLICT', message: 'another backup job is already running' } });
        case 'POST /v1/vms/bad/backup-begin':
          return reply(res, 400, { error: { code: 'INVALID_INPUT', message: 'backupXml: unknown element <foo>' } });
        case 'GET /v1/vms/boom/job?completed=false':
          return reply(res, 500, { error: { code: 'QMP_COMMAND', message: 'QEMU said no' } });
        case 'GET /v1/jobs/j1/events': {
          res.writeHead(200, { 'content-type': 'text/event-stream' });
          res.write(': fleeced events\n\n');
          res.write(`event: state\ndata: ${JSON.stringify({ ...job, state: 'running' })}\n\n`);
          // An event split across two writes.
          const last = `event: state\ndata: ${JSON.stringify({ ...job, state: 'completed' })}\n\n`;
          res.write(last.slice(0, 20));
          setTimeout(() => res.end(last.slice(20)), 20);
          return;
        }
        default: return reply(res, 404, { error: { code: 'NOT_FOUND', message: `no route ${route}` } });
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(socket, resolve));
});

afterAll(async () => {
  await new Promise<void>((resolve) => server.close(() => resolve()));
  await removeTempDir(dir);
});

describe('DaemonClient', () => {
  test('calls the contract paths with the bodies and returns the unwrapped results', async () => {
    const client = new DaemonClient(socket);
    expect(await client.health()).toEqual({ version: '0.1.0', pid: 42, uptimeMs: 1 });
    expect(await client.listVms()).toEqual([{ name: 'vm1', qmp: '/q.sock' }]);
    expect(await client.addVm({ name: 'vm2', qmp: '/q2.sock' })).toEqual({ name: 'vm2', qmp: '/q2.sock' });
    expect((await client.checkpoints('vm1')).current).toBe('cp2');
    expect(await client.createCheckpoint('vm1', { name: 'cp3', description: 'd' })).toEqual({ name: 'cp3', xml: '<domaincheckpoint/>' });
    expect(seen.at(-1)).toEqual({ method: 'POST', url: '/v1/vms/vm1/checkpoints', body: { name: 'cp3', description: 'd' } });
    expect(await client.checkpointXml('vm1', 'cp1', { size: true })).toEqual({ name: 'cp1', xml: '<x/>' });
    await client.deleteCheckpoint('vm1', 'cp1', { metadataOnly: true });
    expect(await client.redefineCheckpoint('vm1', '<domaincheckpoint/>')).toEqual({ name: 'cp1' });
    expect(await client.backupBegin('vm1', { backupXml: '<domainbackup/>', reuseExternal: true })).toEqual(job);
    expect(seen.at(-1)?.body).toEqual({ backupXml: '<domainbackup/>', reuseExternal: true });
    expect(await client.vmJob('vm1', { completed: true })).toBeNull();
    expect(await client.vmJob('vm1')).toEqual(job);
    expect((await client.abortVmJob('vm1')).state).toBe('cancelled');
  });

  test('maps error replies to the error tree with the daemon\'s message', async () => {
    const client = new DaemonClient(socket);
    await expect(client.checkpoints('nope')).rejects.toMatchObject({ code: 'NOT_FOUND', message: "VM 'nope' is not registered; register it" });
    await expect(client.backupBegin('busy', {})).rejects.toMatchObject({ code: 'CONFLICT', message: 'another backup job is already running' });
    await expect(client.backupBegin('bad', {})).rejects.toMatchObject({ code: 'INVALID_INPUT', message: 'backupXml: unknown element <foo>' });
    await expect(client.vmJob('boom')).rejects.toMatchObject({ code: 'QMP_COMMAND', message: 'QEMU said no' });
  });

  test('streams job events, joining events split across chunks, until the server ends the stream', async () => {
    const states: string[] = [];
    for await (const event of new DaemonClient(socket).jobEvents('j1')) states.push(`${event.event}:${event.job.state}`);
    expect(states).toEqual(['state:running', 'state:completed']);
  });

  test('an absent socket is DaemonUnreachableError naming the socket', async () => {
    const missing = join(dir, 'missing.sock');
    await expect(new DaemonClient(missing).health()).rejects.toBeInstanceOf(DaemonUnreachableError);
    await expect(new DaemonClient(missing).health()).rejects.toThrow(missing);
  });
});

describe('detectDaemon', () => {
  test('a client when the socket answers /v1/health; undefined for no socket, a plain file, or a dead socket', async () => {
    expect(await detectDaemon(socket)).toBeInstanceOf(DaemonClient);
    expect(await detectDaemon(join(dir, 'none.sock'))).toBeUndefined();
    const file = join(dir, 'file');
    await writeFile(file, 'x');
    expect(await detectDaemon(file)).toBeUndefined();
    // A socket whose listener answers nothing in time.
    const dead = join(dir, 'dead.sock');
    const silent = http.createServer(() => undefined);
    await new Promise<void>((resolve) => silent.listen(dead, resolve));
    try {
      expect(await detectDaemon(dead, { timeoutMs: 200 })).toBeUndefined();
    } finally {
      silent.closeAllConnections();
      await new Promise<void>((resolve) => silent.close(() => resolve()));
    }
  });
});

test('parseSseBlock ignores comments and other events', () => {
  expect(parseSseBlock(': keepalive')).toBeUndefined();
  expect(parseSseBlock('event: other\ndata: {}')).toBeUndefined();
  expect(parseSseBlock(`event: progress\ndata: ${JSON.stringify(job)}`)).toEqual({ event: 'progress', job });
});
