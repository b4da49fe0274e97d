// fleeced's API edges as a process: bad input gets 4xx naming the field and never crashes it, TCP needs the token,
// the OpenAPI document is served, and --exit-when-idle ends the daemon by itself.
import { afterEach, beforeEach, describe, expect, test } from '@jest/globals';
import { readFile, symlink, writeFile } from 'node:fs/promises';
import { openRepository } from '../../src/repository/index.js';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { useQemuSystem } from '../harness/jest-qemu.js';
import { createDisk } from '../harness/qemu.js';
import { makeTempDir, removeTempDir } from '../harness/temp-dir.js';
import { daemonDirs, request, runDaemonExpectingFailure, startDaemonProcess, type DaemonProcess } from '../integration/daemon/daemon-process.js';
import { injectFault } from '../faults/fault-count.js';

const fixture = useQemuSystem(async (dir) => {
  await createDisk(join(dir, 'a.qcow2'), { size: 8 * 1024 * 1024 });
  return { extraQmpSockets: 1, disks: [{ path: join(dir, 'a.qcow2'), target: 'vda' }] };
}, 'all');

let dir: string;
let daemon: DaemonProcess | undefined;

beforeEach(async () => {
  dir = await makeTempDir('fleeced');
});

afterEach(async () => {
  await daemon?.stop();
  daemon = undefined;
  await removeTempDir(dir);
});

async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

describe('fleeced API', () => {
  test('bad input gets 4xx with a message naming the field; the daemon keeps serving', async () => {
    daemon = await startDaemonProcess(daemonDirs(dir));
    const d = daemon;
    expect((await d.request('POST', '/v1/vms', { name: 'vm1', qmp: fixture.qemu.extraQmpPaths[0] })).status).toBe(201);

    const cases: [string, string, unknown, number, RegExp][] = [
      ['POST', '/v1/vms/nope/backup-begin', {}, 404, /VM 'nope' is not registered/],
      ['GET', '/v1/vms/nope', undefined, 404, /VM 'nope'/],
      ['GET', '/v1/vms/nope/checkpoints', undefined, 404, /VM 'nope'/],
      ['GET', '/v1/jobs/no-such-job', undefined, 404, /job 'no-such-job'/],
      ['POST', '/v1/vms/vm1/backup-begin', { backupXml: '<domainbackup' }, 400, /backupXml/],
      ['POST', '/v1/vms/vm1/backup-begin', { backupXml: "<domainbackup mode='sideways'/>" }, 400, /backupXml.*mode/],
      ['POST', '/v1/vms/vm1/backup-begin', { backupXml: "<domainbackup><disks><disk name='vdz'/></disks></domainbackup>" }, 400, /backupXml.*vdz/],
      ['POST', '/v1/vms/vm1/backup-begin', { backupXml: '<domainbackup><incremental>nocp</incremental></domainbackup>' }, 400, /incremental.*nocp/],
      ['POST', '/v1/vms/vm1/backup-begin', { checkpointXml: '<domaincheckpoint><nome/></domaincheckpoint>' }, 400, /checkpointXml/],
      ['POST', '/v1/vms/vm1/backup-begin', { reuseExternal: 'yes' }, 400, /reuseExternal/],
      ['POST', '/v1/vms/vm1/backup-begin', { backupXml: 42 }, 400, /backupXml/],
      ['POST', '/v1/vms/vm1/backup-begin', '{not json', 400, /body: not valid JSON/],
      ['POST', '/v1/vms', '', 400, /body/],
      ['POST', '/v1/jobs/no-such-job/finish', '', 404, /job 'no-such-job'/],
      ['POST', '/v1/vms', { name: 'bad name!', qmp: '/x' }, 400, /name/],
      ['POST', '/v1/vms', { name: 'vm2' }, 400, /qmp/],
      ['POST', '/v1/vms', { name: 'vm1', qmp: fixture.qemu.extraQmpPaths[0] }, 409, /already registered/],
      ['POST', '/v1/vms/vm1/checkpoints', { xml: '<domaincheckpoint>' }, 400, /xml/],
      ['POST', '/v1/vms/vm1/checkpoints', {}, 400, /name/],
      ['GET', '/v1/vms/vm1/checkpoints/nocp', undefined, 404, /nocp/],
      ['DELETE', '/v1/vms/vm1/checkpoints/nocp', undefined, 404, /nocp/],
      ['POST', '/v1/vms/vm1/backups', { level: 'full' }, 400, /repo/],
      ['POST', '/v1/vms/vm1/backups', { repo: '/r', compression: 'lzma' }, 400, /compression/],
      ['GET', '/v1/repository/backups', undefined, 400, /repo/],
      ['GET', '/v1/repository/backups?repo=relative/dir', undefined, 400, /repo/],
      ['POST', '/v1/repository/restore', { repo: '/r', backupId: 'x' }, 400, /out/],
      ['GET', '/v1/vms/vm1/backup-xml', undefined, 404, /no active backup job/],
      ['POST', '/v1/vms/vm1/job/abort', undefined, 404, /no active backup job/],
      ['GET', '/v1/no/such/route', undefined, 404, /no route/],
      // Unknown fields and relative paths are refused on every route (issue 14, item 9).
      ['POST', '/v1/vms', { name: 'vm9', qmp: '/x', colour: 'red' }, 400, /colour/],
      ['POST', '/v1/vms', { name: 'vm9', qmp: '/x', guestAgent: 'ga.sock' }, 400, /guestAgent/],
      ['POST', '/v1/vms/vm1/backup-begin', { bogus: 1 }, 400, /bogus/],
      ['POST', '/v1/vms/vm1/checkpoints', { name: 'c9', extra: 1 }, 400, /extra/],
      ['POST', '/v1/vms/vm1/checkpoints/redefine', { xml: '<domaincheckpoint/>', extra: 1 }, 400, /extra/],
      ['POST', '/v1/vms/vm1/backups', { repo: '/r', surprise: 1 }, 400, /surprise/],
      ['POST', '/v1/vms/vm1/backups', { repo: 'relative/repo' }, 400, /repo/],
      ['POST', '/v1/repository/restore', { repo: 'relative/repo', backupId: 'x', out: '/o.raw' }, 400, /repo/],
      ['POST', '/v1/repository/restore', { repo: '/r', backupId: 'x', out: 'o.raw' }, 400, /out/],
      ['POST', '/v1/repository/restore', { repo: '/r', backupId: 'x', out: '/o.raw', overwrite: true }, 400, /overwrite/],
      ['POST', '/v1/repository/verify', { repo: 'relative', backupId: 'x' }, 400, /repo/],
      ['POST', '/v1/repository/verify', { repo: '/r', backupId: 'x', deeep: true }, 400, /deeep/],
      ['GET', '/v1/repository/backups?repo=/r&colour=red', undefined, 400, /colour/],
      ['GET', '/v1/jobs?colour=red', undefined, 400, /colour/],
      // An oversized body is refused by its size, over fastify's bodyLimit (issue 14, item 6).
      ['POST', '/v1/vms', JSON.stringify({ name: 'vm9', qmp: '/x', pad: 'x'.repeat(5 * 1024 * 1024) }), 413, /too large/],
    ];
    const fault = injectFault('hostile API input: unknown fields, relative paths, bad and oversized bodies');
    for (const [method, path, body, status, message] of cases) {
      const reply = await d.request(method, path, body);
      expect({ method, path, status: reply.status }).toEqual({ method, path, status });
      expect(reply.body?.error?.message).toMatch(message);
      expect(typeof reply.body.error.code).toBe('string');
    }

    // Still alive and well, and the checkpoint verbs work on the shared connection.
    expect((await d.request('GET', '/v1/health')).body).toMatchObject({ version: expect.any(String), pid: expect.any(Number) });
    const created = await d.request('POST', '/v1/vms/vm1/checkpoints', { name: 'cp1', description: 'first' });
    expect(created.status).toBe(201);
    expect(created.body.xml).toContain('<name>cp1</name>');
    expect((await d.request('GET', '/v1/vms/vm1/checkpoints/tree')).body.text).toContain('cp1');
    expect((await d.request('GET', '/v1/vms/vm1/checkpoints/validate')).body.checks).toEqual([expect.objectContaining({ name: 'cp1', valid: true })]);
    expect((await d.request('GET', '/v1/vms/vm1/checkpoints/cp1?size=true')).body.xml).toMatch(/size='\d+'/);
    expect((await d.request('DELETE', '/v1/vms/vm1/checkpoints/cp1')).status).toBe(204);
    const vm = await d.request('GET', '/v1/vms/vm1');
    expect(vm.body).toMatchObject({ name: 'vm1', connected: true, disks: [{ target: 'vda', format: 'qcow2' }], job: null });

    const doc = await d.request('GET', '/openapi.json');
    expect(doc.body.openapi).toMatch(/^3\./);
    expect(Object.keys(doc.body.paths)).toEqual(expect.arrayContaining(['/v1/vms/{vm}/backup-begin', '/v1/jobs/{id}/events', '/v1/repository/restore']));
    fault.held();
  });

  test('API restore: force replaces an existing file as the CLI\'s --force does, never through a symbolic link', async () => {
    const repo = join(dir, 'repo');
    const disk = Buffer.alloc(1024 * 1024, 0x5a);
    const r = await openRepository(repo);
    const w = await r.startBackup({ volumeId: 'v', size: disk.length, workers: 1 });
    await w.write({ offset: 0, length: disk.length, data: disk });
    const { backupId } = await w.finish();
    daemon = await startDaemonProcess(daemonDirs(dir));
    const out = join(dir, 'out.raw');
    await writeFile(out, 'old');
    const refused = await daemon.request('POST', '/v1/repository/restore', { repo, backupId, out });
    expect(refused.status).toBe(409);
    expect(refused.body.error.message).toContain('already exists');
    expect((await daemon.request('POST', '/v1/repository/restore', { repo, backupId, out, force: true })).status).toBe(200);
    expect((await readFile(out)).equals(disk)).toBe(true);
    const victim = join(dir, 'victim.txt');
    await writeFile(victim, 'keep');
    await symlink(victim, join(dir, 'link.raw'));
    const fault = injectFault('hostile API input: restore force onto a symlink');
    const link = await daemon.request('POST', '/v1/repository/restore', { repo, backupId, out: join(dir, 'link.raw'), force: true });
    expect(link.status).toBe(409);
    expect(link.body.error.message).toContain('is a symbolic link');
    expect(await readFile(victim, 'utf8')).toBe('keep');
    fault.held();
  });

  test('TCP needs the bearer token; TCP without a token file refuses to start', async () => {
    const port = await freePort();
    const tokenFile = join(dir, 'token');
    const token = 'a-long-secret-token-0123456789';
    await writeFile(tokenFile, `${token}\n`, { mode: 0o600 });
    const refused = await runDaemonExpectingFailure(daemonDirs(dir), ['--tcp', `127.0.0.1:${port}`]);
    expect(refused.exitCode).not.toBe(0);
    expect(refused.stderr).toMatch(/token/);

    // Plain HTTP on loopback, as explicitly allowed (test/e2e/daemon-https.test.ts covers HTTPS).
    daemon = await startDaemonProcess(daemonDirs(dir), ['--tcp', `127.0.0.1:${port}`, '--token-file', tokenFile, '--allow-plain-loopback']);
    const target = { host: '127.0.0.1', port };
    const anonymous = await request(target, 'GET', '/v1/health');
    expect(anonymous.status).toBe(401);
    expect((await request(target, 'GET', '/v1/health', undefined, { authorization: 'Bearer wrong' })).status).toBe(401);
    const authorized = await request(target, 'GET', '/v1/health', undefined, { authorization: `Bearer ${token}` });
    expect(authorized.status).toBe(200);
    expect(authorized.body.pid).toBe(daemon.proc.pid);
    // The unix socket needs no token (its mode 0600 is the access control).
    expect((await daemon.request('GET', '/v1/health')).status).toBe(200);
  });

  test('--exit-when-idle ends the daemon once no job ran for that long', async () => {
    daemon = await startDaemonProcess(daemonDirs(dir), ['--exit-when-idle', '1']);
    const result = await daemon.proc;
    expect(result.exitCode).toBe(0);
    expect(daemon.stderr()).toMatch(/no job for 1 s/);
  });
});
