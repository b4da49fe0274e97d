// LibvirtConnection against a real libvirtd (the shared test daemon): lookups and errors, domain XML/state/uuid,
// checkpoints, a pull backup read over NBD, the busy refusal, stale domain pointers, silence on stderr, timeouts, close.
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { NbdHandle } from '../../../native/nbd-handle.js';
import {
  LibvirtConnection, LibvirtError, VIR_ERR_NO_DOMAIN, VIR_ERR_NO_DOMAIN_CHECKPOINT, VIR_ERR_OPERATION_INVALID,
  VIR_ERR_OPERATION_TIMEOUT, VIR_DOMAIN_JOB_OPERATION_BACKUP,
} from '../../../native/libvirt/index.js';
import { libvirtWorkerData } from '../../../native/libvirt/connection.js';
import { LIBVIRT_WORKER_SOURCE } from '../../../native/libvirt/worker-source.js';
import {
  createImage, defineTestDomain, libvirtAvailability, sharedLibvirt, type LibvirtHarness, type TestDomain,
} from '../../harness/libvirt.js';
import { makeTempDir, removeTempDir } from '../../harness/temp-dir.js';

const MiB = 1024 * 1024;
const availability = libvirtAvailability();
const describeLibvirt = availability.ok ? describe : describe.skip;
const title = availability.ok ? 'LibvirtConnection (real libvirtd)' : `LibvirtConnection (skipped: ${availability.why})`;

/** Rejects with the error the promise rejects with, or fails when it resolves. */
async function failure(promise: Promise<unknown>): Promise<LibvirtError> {
  try {
    await promise;
  } catch (error) {
    expect(error).toBeInstanceOf(LibvirtError);
    return error as LibvirtError;
  }
  throw new Error('expected a LibvirtError, the call succeeded');
}

const checkpointXml = (name: string) =>
  `<domaincheckpoint><name>${name}</name><disks><disk name='vda' checkpoint='bitmap'/></disks></domaincheckpoint>`;

/**
 * Runs the worker in a child process (so that libvirt's own fprintf to fd 2 can be seen) through a few failing calls;
 * resolves each call's outcome (ok or libvirt's code) and everything the child wrote to stderr.
 */
async function failingCallsInChild(
  dir: string, uri: string, domain: string, silenceErrors: boolean,
): Promise<{ outcomes: (string | number)[]; stderr: string }> {
  const config = join(dir, `child-${silenceErrors ? 'silent' : 'loud'}.json`);
  await writeFile(config, JSON.stringify({
    source: LIBVIRT_WORKER_SOURCE, workerData: libvirtWorkerData({ silenceErrors }), uri, domain,
    badUri: `qemu+unix:///system?socket=${join(dir, 'no-such-socket')}`,
  }));
  const script = `
    const { Worker } = require('node:worker_threads');
    const cfg = JSON.parse(require('node:fs').readFileSync(process.argv[1], 'utf8'));
    const w = new Worker(cfg.source, { eval: true, workerData: cfg.workerData });
    let id = 0;
    const call = (op, args) => new Promise((resolve) => {
      const mine = ++id;
      const on = (m) => { if (m.id === mine) { w.off('message', on); resolve(m.ok ? 'ok' : m.error.code); } };
      w.on('message', on);
      w.postMessage({ id: mine, op, args });
    });
    (async () => {
      const out = [];
      out.push(await call('open', [cfg.badUri, false]));
      out.push(await call('open', [cfg.uri, false]));
      out.push(await call('domainXml', ['fleece-test-no-such-domain', 0]));
      out.push(await call('checkpointXml', [cfg.domain, 'no-such-checkpoint', 0]));
      out.push(await call('close', []));
      process.stdout.write(JSON.stringify(out));
      await w.terminate();
    })();`;
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['-e', script, config], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    child.on('error', reject);
    child.on('close', (code) => {
      if (code !== 0) reject(new Error(`child exited ${code}: ${stderr}`));
      else resolve({ outcomes: JSON.parse(stdout) as (string | number)[], stderr });
    });
  });
}

describeLibvirt(title, () => {
  const name = `fleece-test-native-lv-${process.pid}`;
  const spare = `fleece-test-native-lv2-${process.pid}`;
  const timings: Record<string, number> = {};
  let h: LibvirtHarness;
  let dir: string;
  let domain: TestDomain | undefined;
  let spareDomain: TestDomain | undefined;
  let conn: LibvirtConnection;

  beforeAll(async () => {
    h = await sharedLibvirt();
    dir = await makeTempDir('libvirt-native');
    await createImage(join(dir, 'vda.qcow2'), 'qcow2', 64 * MiB);
    await createImage(join(dir, 'spare.qcow2'), 'qcow2', 16 * MiB);
    let t = performance.now();
    conn = await LibvirtConnection.open(h.uri);
    timings.openMs = performance.now() - t;
    domain = await defineTestDomain(h, { name, disks: [{ target: 'vda', path: join(dir, 'vda.qcow2'), format: 'qcow2' }] });
    spareDomain = await defineTestDomain(h, { name: spare, disks: [{ target: 'vda', path: join(dir, 'spare.qcow2'), format: 'qcow2' }], start: false });
    t = performance.now();
    await conn.domainXml(name);
    timings.firstDomainXmlMs = performance.now() - t;
    t = performance.now();
    await conn.domainXml(name);
    timings.cachedDomainXmlMs = performance.now() - t;
  }, 120_000);

  afterAll(async () => {
    await conn?.close();
    await domain?.remove();
    await spareDomain?.remove();
    if (dir) await removeTempDir(dir);
    console.log(`libvirt latencies (ms): ${Object.entries(timings).map(([k, v]) => `${k} ${v.toFixed(1)}`).join(', ')}`);
  }, 60_000);

  test('a URI nobody listens on fails naming the URI, with a hint', async () => {
    const uri = `qemu+unix:///system?socket=${join(dir, 'no-such-socket')}`;
    const error = await failure(LibvirtConnection.open(uri));
    expect(error.operation).toBe('virConnectOpen');
    expect(error.message).toContain(`cannot connect to libvirt at ${uri}`);
    expect(error.message).toContain('is libvirtd running');
    expect(error.libvirtMessage).toMatch(/Failed to connect socket/);
  });

  test('an unknown domain is LibvirtError 42 naming it', async () => {
    const error = await failure(conn.domainXml('fleece-test-no-such-domain'));
    expect(error.libvirtCode).toBe(VIR_ERR_NO_DOMAIN);
    expect(error.operation).toBe('virDomainLookupByName');
    expect(error.code).toBe('LIBVIRT');
    expect(error.message).toContain("domain 'fleece-test-no-such-domain'");
    expect(error.libvirtMessage).toContain('fleece-test-no-such-domain');
  });

  test('domain XML (live and inactive), state, uuid, the domain list', async () => {
    const live = await conn.domainXml(name);
    expect(live).toContain(`<name>${name}</name>`);
    expect(live).toContain("<target dev='vda' bus='virtio'/>");
    expect(live).toContain('<alias name='); // only the live XML has device aliases
    expect(await conn.domainXml(name, { inactive: true })).not.toContain('<alias name=');
    expect(await conn.domainState(name)).toEqual({ state: 'running', reason: 1 }); // VIR_DOMAIN_RUNNING_BOOTED
    expect(await conn.domainState(spare)).toEqual(expect.objectContaining({ state: 'shutoff' }));
    expect(await conn.domainUuid(name)).toBe(await h.virsh(['domuuid', name]));
    expect(await conn.listDomains()).toEqual(expect.arrayContaining([name, spare]));
    expect(await conn.alive()).toBe(true);
    const capacity = (await conn.blockInfo(name, 'vda')).capacity;
    expect(capacity).toBe(64 * MiB);
  });

  test('checkpoints: create, list, XML with sizes and without the domain, a missing one is 103', async () => {
    expect(await conn.checkpointCreate(name, checkpointXml('cp1'))).toBe('cp1');
    expect(await conn.listCheckpoints(name)).toEqual(['cp1']);
    const xml = await conn.checkpointXml(name, 'cp1');
    expect(xml).toMatch(/<domaincheckpoint>[\s\S]*<name>cp1<\/name>[\s\S]*<disk name='vda' checkpoint='bitmap' bitmap='cp1'\/>/);
    expect(xml).toContain('<domain'); // the domain's definition at checkpoint time
    const sized = await conn.checkpointXml(name, 'cp1', { size: true, noDomain: true });
    expect(sized).toMatch(/<disk name='vda' checkpoint='bitmap' bitmap='cp1' size='\d+'\/>/);
    expect(sized).not.toContain('<domain ');
    const missing = await failure(conn.checkpointXml(name, 'no-such-checkpoint'));
    expect(missing.libvirtCode).toBe(VIR_ERR_NO_DOMAIN_CHECKPOINT);
    expect(missing.operation).toBe('virDomainCheckpointLookupByName');
    expect(missing.message).toContain(`checkpoint 'no-such-checkpoint' of domain '${name}'`);
  });

  test('a pull backup: job stats, the backup XML, the export read over NBD, a second backup refused at once, abort', async () => {
    await domain!.write('vda', 0, MiB, 0x5a);
    const socket = join(dir, 'backup.sock');
    const backupXml = `<domainbackup mode='pull'><server transport='unix' socket='${socket}'/><disks>`
      + `<disk name='vda' backup='yes' type='file'><scratch file='${join(dir, 'vda.scratch.qcow2')}'/></disk></disks></domainbackup>`;
    expect((await conn.jobStats(name)).type).toBe('none');
    const t = performance.now();
    await conn.backupBegin(name, backupXml, checkpointXml('cp2'));
    timings.backupBeginMs = performance.now() - t;
    try {
      const stats = await conn.jobStats(name);
      expect(stats.type).toBe('unbounded');
      expect(stats.operation).toBe(VIR_DOMAIN_JOB_OPERATION_BACKUP);
      expect(stats.fields).toEqual(expect.objectContaining({ operation: 9, time_elapsed: expect.any(Number), disk_temp_total: 64 * MiB }));
      const xml = await conn.backupXml(name);
      expect(xml).toContain(`<server transport='unix' socket='${socket}'/>`);
      expect(xml).toMatch(/<disk name='vda' backup='yes' type='file' backupmode='full' exportname='vda'/);
      expect(existsSync(socket)).toBe(true);

      const nbd = NbdHandle.create();
      try {
        nbd.setExportName('vda');
        await nbd.connectUnix(socket);
        expect(nbd.getSize()).toBe(64 * MiB);
        const head = new Uint8Array(64 * 1024);
        await nbd.pread(head, 0);
        expect(head.every((b) => b === 0x5a)).toBe(true);
        const beyond = new Uint8Array(4096);
        await nbd.pread(beyond, MiB);
        expect(beyond.every((b) => b === 0)).toBe(true);
      } finally {
        nbd.close();
      }

      // libvirt itself would wait 30 s for the running job's lock; the connection asks for the job first.
      const t2 = performance.now();
      const busy = await failure(conn.backupBegin(name, backupXml, null));
      expect(performance.now() - t2).toBeLessThan(2000);
      expect(busy.libvirtCode).toBe(VIR_ERR_OPERATION_INVALID);
      expect(busy.local).toBe('busy');
      expect(busy.message).toContain('another job is already running');
      expect((await conn.jobStats(name)).type).toBe('unbounded');
    } finally {
      await conn.abortJob(name);
    }
    expect(await conn.jobStats(name)).toEqual({ type: 'none', fields: {} });
    const completed = await conn.jobStats(name, { completed: true });
    expect(completed.operation).toBe(VIR_DOMAIN_JOB_OPERATION_BACKUP);
    expect(['completed', 'cancelled']).toContain(completed.type);
    expect(new Set(await conn.listCheckpoints(name))).toEqual(new Set(['cp1', 'cp2']));
    await conn.checkpointDelete(name, 'cp2');
    await conn.checkpointDelete(name, 'cp1');
    expect(await conn.listCheckpoints(name)).toEqual([]);
  }, 60_000);

  test('a cached domain pointer that libvirt no longer knows (undefined and defined again) is looked up again', async () => {
    const before = await conn.domainUuid(spare);
    await h.virsh(['undefine', spare]);
    const xmlPath = join(dir, 'spare.xml');
    await writeFile(xmlPath, spareDomain!.xml);
    await h.virsh(['define', xmlPath]);
    expect(await conn.domainState(spare)).toEqual(expect.objectContaining({ state: 'shutoff' })); // stale: 42, looked up again
    expect(await conn.domainXml(spare)).toContain(`<name>${spare}</name>`);
    const after = await conn.domainUuid(spare);
    expect(after).not.toBe(before);
    expect(after).toBe(await h.virsh(['domuuid', spare]));
  });

  test('failing calls print nothing on stderr (libvirt\'s default printer would)', async () => {
    const silent = await failingCallsInChild(dir, h.uri, name, true);
    expect(silent.outcomes).toEqual([38, 'ok', VIR_ERR_NO_DOMAIN, VIR_ERR_NO_DOMAIN_CHECKPOINT, 'ok']);
    expect(silent.stderr).toBe('');
    const loud = await failingCallsInChild(dir, h.uri, name, false);
    expect(loud.outcomes).toEqual(silent.outcomes);
    expect(loud.stderr).toMatch(/^libvirt: .*Failed to connect socket/m);
    expect(loud.stderr).toMatch(/^libvirt: .*no domain with matching name 'fleece-test-no-such-domain'/m);
    expect(loud.stderr).toMatch(/^libvirt: .*no-such-checkpoint/m);
  }, 30_000);

  test('a call past the call timeout rejects (68, local timeout); close() with a timeout abandons it and ends the connection', async () => {
    const slow = await LibvirtConnection.open(h.uri, { callTimeoutMs: 20, openTimeoutMs: 30_000 });
    const started = slow.start(spare); // starting QEMU takes some 300 ms
    const timedOut = await failure(started);
    expect(timedOut.libvirtCode).toBe(VIR_ERR_OPERATION_TIMEOUT);
    expect(timedOut.local).toBe('timeout');
    expect(timedOut.operation).toBe('virDomainCreate');
    const queued = slow.domainState(spare).catch((error: unknown) => error);
    const t = performance.now();
    await slow.close({ timeoutMs: 10 });
    expect(performance.now() - t).toBeLessThan(1500);
    expect(slow.closed).toBe(true);
    const late = await queued;
    expect(late).toBeInstanceOf(LibvirtError);
    expect(['closed', 'timeout']).toContain((late as LibvirtError).local);
    const after = await failure(slow.domainXml(spare));
    expect(after.local).toBe('closed');
    // The abandoned call still ran to its end inside libvirt.
    for (let i = 0; i < 100 && (await conn.domainState(spare)).state !== 'running'; i++) await new Promise((r) => setTimeout(r, 50));
    expect((await conn.domainState(spare)).state).toBe('running');
    await conn.destroy(spare);
  }, 30_000);

  test('close() is idempotent and later calls reject as closed', async () => {
    const other = await LibvirtConnection.open(h.uri, { readOnly: true });
    expect(await other.listDomains()).toEqual(expect.arrayContaining([name]));
    const denied = await failure(other.start(spare));
    expect(denied.message).toMatch(/read.?only/i);
    await Promise.all([other.close(), other.close()]);
    expect((await failure(other.listDomains())).local).toBe('closed');
  });
});
