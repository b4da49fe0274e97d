// Fault suite: fleeced killed with SIGKILL at each phase (before the transaction, after it, mid-read, during the
// commit) of a repository backup job of a bare QEMU it owns over QMP. FLEECE_TEST_PAUSE_AT in the daemon's
// environment (src/util/test-pause.ts) stops the job at the phase, so the kill lands there without timing. After
// each, a new daemon on the same state and config: (a) it says what it cleaned, naming the VM and the dead daemon's
// pid, and the job reads failed "interrupted by a daemon restart", (b) the first backup still restores byte for
// byte, (c) QEMU holds no job, export, fl- node or temporary bitmap, only the chain's bitmaps, (d) no scratch file,
// journal or uncommitted object, (e) the next backup through the API is incremental and succeeds. The same mid-read
// for a libvirt domain on the shared harness libvirtd: its job, export and new checkpoint are gone after the restart.
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { existsSync } from 'node:fs';
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { useQemuSystem } from '../harness/jest-qemu.js';
import { createImage, defineTestDomain, libvirtAvailability, sharedLibvirt, type LibvirtHarness, type TestDomain } from '../harness/libvirt.js';
import { createDisk } from '../harness/qemu.js';
import { makeTempDir, removeTempDir } from '../harness/temp-dir.js';
import { leftovers, snapshotRaw } from '../integration/backup/helpers.js';
import { daemonDirs, openEvents, startDaemonProcess, type DaemonProcess } from '../integration/daemon/daemon-process.js';
import { runCli } from '../e2e/helpers.js';
import { injectFault } from './fault-count.js';

const MiB = 1024 * 1024;

interface Listed {
  backupId: string;
  mode: string;
  checkpoint?: string;
}

/** The backup containers (`xx/yy/<id>`) in a posix repository. */
async function containers(repo: string): Promise<string[]> {
  const out: string[] = [];
  for (const a of await readdir(repo).catch(() => [])) {
    for (const b of await readdir(join(repo, a)).catch(() => [])) {
      for (const id of await readdir(join(repo, a, b)).catch(() => [])) out.push(id);
    }
  }
  return out.sort();
}

/** Resolves once the daemon says it paused at `phase` (rejects when it ends first). */
function pauseOf(d: DaemonProcess, phase: string): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    const timer = setInterval(() => {
      if (d.stderr().includes(`test pause at ${phase}`)) resolve();
      else if (d.proc.exitCode !== null && d.proc.exitCode !== undefined) reject(new Error(`fleeced ended before pausing at ${phase}: ${d.stderr()}`));
      else return;
      clearInterval(timer);
    }, 100);
  });
}

/** Pids of the processes whose command line names `path` (a daemon's state dir: the daemon, and any helper it left). */
async function processesNaming(path: string): Promise<number[]> {
  const pids: number[] = [];
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const cmdline = await readFile(`/proc/${entry}/cmdline`, 'utf8').catch(() => '');
    if (cmdline.split('\0').some((arg) => arg.includes(path))) pids.push(Number(entry));
  }
  return pids;
}

describe('fault suite: fleeced killed at each phase of a repository backup job', () => {
  const fixture = useQemuSystem(async (dir) => {
    await createDisk(join(dir, 'a.qcow2'), { size: 16 * MiB });
    return { disks: [{ path: join(dir, 'a.qcow2'), target: 'vda' }], extraQmpSockets: 1 };
  }, 'all');
  let dir: string;
  let daemon: DaemonProcess | undefined;
  let firstId: string;
  const repo = () => join(dir, 'repo');
  const stateDir = () => join(dir, 'state');

  beforeAll(async () => {
    dir = await makeTempDir('faults-daemon');
  });
  afterAll(async () => {
    await daemon?.stop();
    await removeTempDir(dir);
  });

  async function start(env: NodeJS.ProcessEnv = {}): Promise<DaemonProcess> {
    await daemon?.stop();
    daemon = await startDaemonProcess(daemonDirs(dir), [], env);
    return daemon;
  }

  const write = async (command: string) => {
    await fixture.qemu.guestWrite('vda', command);
    await fixture.qemu.guestWrite('vda', 'flush');
  };

  async function list(d: DaemonProcess): Promise<Listed[]> {
    const reply = await d.request('GET', `/v1/repository/backups?repo=${encodeURIComponent(repo())}&vm=vm1`);
    expect(reply.status).toBe(200);
    return reply.body.backups as Listed[];
  }

  /** A repository backup job through the API, to its end; its last state event. */
  async function backup(d: DaemonProcess): Promise<{ state: string; error?: string; incrementalFrom?: string }> {
    const reply = await d.request('POST', '/v1/vms/vm1/backups', { repo: repo() });
    expect({ status: reply.status, error: reply.body?.error }).toEqual({ status: 202, error: undefined });
    const events = await (await openEvents(d.target, `/v1/jobs/${reply.body.job.id}/events`)).ended;
    return events[events.length - 1]!.data;
  }

  /**
   * (a)–(e) after a restart on the state of a daemon `deadPid` killed during a job that held `effects` (as the
   * cleanup names them) and, with `objects`, objects of an uncommitted backup.
   */
  async function holds(d: DaemonProcess, deadPid: number, effects: string[], objects: boolean): Promise<void> {
    // (a) The restart reconciled the dead daemon's journal and says so, in its log and in the job, which reads failed.
    const said = new RegExp(`cleaned up after an interrupted backup of VM 'vm1' \\(fleece process ${deadPid}\\)`);
    expect(d.stderr()).toMatch(said);
    const jobs = (await d.request('GET', '/v1/jobs?vm=vm1')).body.jobs as { state: string; error?: string; result?: { cleaned: string[] } }[];
    const killed = jobs[jobs.length - 1]!;
    expect(killed).toMatchObject({ state: 'failed', error: expect.stringMatching(/^interrupted by a daemon restart \(was (starting|running)\); /) });
    expect(killed.error).toMatch(said);
    expect(killed.error).not.toMatch(/run gc/);
    expect(killed.result?.cleaned).toEqual(expect.arrayContaining(effects));
    if (objects) expect(killed.result?.cleaned).toEqual(expect.arrayContaining([expect.stringMatching(/objects of backup .*, never committed, removed/)]));
    // (c) Nothing of the killed job in QEMU; only the chain's bitmaps (the newest 3 checkpoints the repository's
    // backups ended at: the default checkpoint retention) — no temporary one, no killed job's checkpoint.
    const chainBitmaps = async () => (await list(d)).map((r) => r.checkpoint!).sort().slice(-3);
    const after = await leftovers(fixture.qemu.client);
    expect({ jobs: after.jobs, exports: after.exports, nodes: after.fleeceNodes }).toEqual({ jobs: [], exports: [], nodes: [] });
    expect(after.bitmaps.vda!.sort()).toEqual(await chainBitmaps());
    // (d) No scratch file, no journal, no object of the killed job (gc --grace 0 then finds nothing to take).
    const listed = await list(d);
    expect(await containers(repo())).toEqual(listed.map((r) => r.backupId).sort());
    expect(await readdir(join(stateDir(), 'scratch')).catch(() => [])).toEqual([]);
    expect(existsSync(join(stateDir(), 'journal', 'vm1.json'))).toBe(false);
    expect(await readdir(join(dir, 'run'))).toEqual([]);
    expect(await processesNaming(stateDir())).toEqual([d.proc.pid]);
    expect((await runCli(dir, ['gc', '--repo', repo(), '--grace', '0'])).exitCode).toBe(0);
    expect(await containers(repo())).toEqual(listed.map((r) => r.backupId).sort());
    // (b) The first backup restores byte for byte, through the API.
    const out = join(dir, `first-${Date.now()}.raw`);
    const restored = await d.request('POST', '/v1/repository/restore', { repo: repo(), backupId: firstId, out });
    expect(restored.status).toBe(200);
    expect((await readFile(out)).equals(await readFile(join(dir, 'first.raw')))).toBe(true);
    // (e) The next backup is incremental and succeeds; QEMU is as clean after it.
    const next = await backup(d);
    expect({ state: next.state, error: next.error }).toEqual({ state: 'completed', error: undefined });
    expect(next.incrementalFrom).toEqual(expect.any(String));
    const newest = (await list(d)).at(-1)!;
    expect(newest.mode).toBe('changed-extents');
    const end = await leftovers(fixture.qemu.client);
    expect({ jobs: end.jobs, exports: end.exports, nodes: end.fleeceNodes }).toEqual({ jobs: [], exports: [], nodes: [] });
    expect(end.bitmaps.vda!.sort()).toEqual(await chainBitmaps());
  }

  test('a full backup through the API starts the chain', async () => {
    const d = await start();
    expect((await d.request('POST', '/v1/vms', { name: 'vm1', qmp: fixture.qemu.extraQmpPaths[0] })).status).toBe(201);
    await write('write -P 0x11 0 2M');
    await snapshotRaw(join(fixture.dir, 'a.qcow2'), join(dir, 'first.raw'));
    const first = await backup(d);
    expect({ state: first.state, error: first.error }).toEqual({ state: 'completed', error: undefined });
    const listed = await list(d);
    expect(listed.map((r) => r.mode)).toEqual(['full']);
    firstId = listed[0]!.backupId;
  }, 120_000);

  for (const [i, phase] of ['before-transaction', 'after-transaction', 'mid-read', 'commit'].entries()) {
    test(`SIGKILL of the daemon ${phase}: the restart cleans up, the next job continues the chain`, async () => {
      await write(`write -P 0x${(0x21 + i).toString(16)} ${4 + i}M 1M`);
      const prior = (await leftovers(fixture.qemu.client)).bitmaps.vda!;
      const paused = await start({ FLEECE_TEST_PAUSE_AT: phase });
      // The reply may never come (the job pauses before it counts as started): the kill ends the request.
      const request = paused.request('POST', '/v1/vms/vm1/backups', { repo: repo(), bandwidth: 4 * MiB }).catch((error: unknown) => error);
      await pauseOf(paused, phase);
      const deadPid = paused.proc.pid!;
      // What the job holds where it pauses: the kill leaves it all behind.
      const held = { qemu: await leftovers(fixture.qemu.client), scratch: await readdir(join(stateDir(), 'scratch')).catch(() => []), run: await readdir(join(dir, 'run')) };
      if (held.qemu.exports.length > 0) expect(held.run).toHaveLength(1); // the NBD server's socket
      expect(held.qemu.fleeceNodes.length * held.scratch.length).toBeGreaterThan(0);
      const added = held.qemu.bitmaps.vda!.filter((b) => !prior.includes(b)); // the killed job's new checkpoint
      expect({ jobs: held.qemu.jobs.length, bitmaps: added.length }).toEqual(phase === 'before-transaction' ? { jobs: 0, bitmaps: 0 } : { jobs: 1, bitmaps: 1 });
      const unfinished = (await containers(repo())).length - (await list(paused)).length;
      expect(unfinished).toBe(phase === 'mid-read' || phase === 'commit' ? 1 : 0);
      const fault = injectFault(`SIGKILL of the daemon ${phase}`);
      await paused.kill();
      expect((await paused.proc).signal).toBe('SIGKILL');
      await request;
      await holds(await start(), deadPid, [
        ...held.qemu.fleeceNodes.map((n) => `node ${n}`), ...held.qemu.jobs.map((j) => `job ${j}`), ...added.map((b) => `bitmap ${b} of disk vda`),
        ...held.scratch.map((f) => `file ${join(stateDir(), 'scratch', f)}`),
      ], unfinished > 0);
      fault.held();
    }, 240_000);
  }
});

(libvirtAvailability().ok ? describe : describe.skip)('fault suite: fleeced killed mid-read of a libvirt domain\'s job', () => {
  let dir: string;
  let h: LibvirtHarness;
  let dom: TestDomain;
  let daemon: DaemonProcess | undefined;
  beforeAll(async () => {
    dir = await makeTempDir('faults-daemon-libvirt');
    h = await sharedLibvirt();
    await createImage(join(dir, 'vda.qcow2'), 'qcow2', 16 * MiB);
    dom = await defineTestDomain(h, { name: `fleece-test-dfault-${process.pid}`, disks: [{ target: 'vda', path: join(dir, 'vda.qcow2'), format: 'qcow2' }] });
  }, 120_000);
  afterAll(async () => {
    await daemon?.stop();
    await dom?.remove();
    if (dir) await removeTempDir(dir);
  }, 60_000);

  const repo = () => join(dir, 'repo');
  const monitor = async <T>(command: object): Promise<T> => JSON.parse(await h.virsh(['qemu-monitor-command', dom.name, JSON.stringify(command)])).return as T;
  const checkpoints = async () => (await h.virsh(['checkpoint-list', dom.name, '--name'])).split('\n').map((l) => l.trim()).filter(Boolean).sort();
  /** The job libvirt runs, QEMU's exports and jobs, and the dirty bitmaps on any of its nodes. */
  async function held(): Promise<{ job: string; exports: unknown[]; jobs: unknown[]; bitmaps: string[] }> {
    const nodes = await monitor<{ 'dirty-bitmaps'?: { name: string }[] }[]>({ execute: 'query-named-block-nodes', arguments: { flat: true } });
    return {
      job: (await h.virsh(['domjobinfo', dom.name])).split('\n')[0]!.replace(/^Job type:\s*/, '').trim(),
      exports: await monitor<unknown[]>({ execute: 'query-block-exports' }),
      jobs: await monitor<unknown[]>({ execute: 'query-jobs' }),
      bitmaps: [...new Set(nodes.flatMap((n) => (n['dirty-bitmaps'] ?? []).map((b) => b.name)))].sort(),
    };
  }
  async function start(env: NodeJS.ProcessEnv = {}): Promise<DaemonProcess> {
    await daemon?.stop();
    daemon = await startDaemonProcess(daemonDirs(dir), [], env);
    return daemon;
  }
  async function finished(d: DaemonProcess, id: string): Promise<{ state: string; error?: string; checkpoint?: string; incrementalFrom?: string }> {
    await (await openEvents(d.target, `/v1/jobs/${id}/events`)).ended;
    return (await d.request('GET', `/v1/jobs/${id}`)).body.job;
  }
  async function backup(d: DaemonProcess) {
    const reply = await d.request('POST', `/v1/vms/${dom.name}/backups`, { repo: repo() });
    expect({ status: reply.status, error: reply.body?.error }).toEqual({ status: 202, error: undefined });
    return finished(d, reply.body.job.id);
  }

  test('SIGKILL of the daemon mid-read: the restart ends the libvirt job, drops its checkpoint; the next job is incremental', async () => {
    let d = await start();
    expect((await d.request('POST', '/v1/vms', { name: dom.name, connect: h.uri })).status).toBe(201);
    await dom.write('vda', 0, 2 * MiB, 0x51);
    await dom.qemuIo('vda', 'flush');
    await snapshotRaw(join(dir, 'vda.qcow2'), join(dir, 'first.raw'));
    const full = await backup(d);
    expect({ state: full.state, error: full.error }).toEqual({ state: 'completed', error: undefined });
    const firstId = ((await d.request('GET', `/v1/repository/backups?repo=${encodeURIComponent(repo())}`)).body.backups as Listed[])[0]!.backupId;

    await dom.write('vda', 4 * MiB, MiB, 0x52);
    await dom.qemuIo('vda', 'flush');
    d = await start({ FLEECE_TEST_PAUSE_AT: 'mid-read' });
    const request = d.request('POST', `/v1/vms/${dom.name}/backups`, { repo: repo() }).catch((error: unknown) => error);
    await pauseOf(d, 'mid-read');
    // The kill leaves libvirt's job, its export and a new checkpoint behind.
    const before = await held();
    expect(before.job).not.toMatch(/None/);
    expect(before.exports.length).toBeGreaterThan(0);
    expect((await checkpoints()).length).toBe(2);
    expect(await readdir(join(dir, 'run'))).toHaveLength(1); // the job's socket directory
    const deadPid = d.proc.pid!;
    const fault = injectFault('SIGKILL of the daemon mid-read (libvirt domain)');
    await d.kill();
    await request;

    d = await start();
    const said = new RegExp(`cleaned up after an interrupted backup of VM '${dom.name}' \\(fleece process ${deadPid}\\): .*libvirt backup job of domain .*checkpoint fleece-`);
    expect(d.stderr()).toMatch(said);
    const jobs = (await d.request('GET', `/v1/jobs?vm=${dom.name}`)).body.jobs as { state: string; error?: string }[];
    expect(jobs.at(-1)).toMatchObject({ state: 'failed', error: expect.stringMatching(said) });
    // Nothing of the killed job in libvirt or QEMU: no job, export or block job; only the first backup's checkpoint.
    const after = await held();
    expect({ job: after.job, exports: after.exports, jobs: after.jobs }).toEqual({ job: 'None', exports: [], jobs: [] });
    expect(await checkpoints()).toEqual([full.checkpoint]);
    expect(after.bitmaps).toEqual([full.checkpoint]);
    const listed = (await d.request('GET', `/v1/repository/backups?repo=${encodeURIComponent(repo())}`)).body.backups as Listed[];
    expect(await containers(repo())).toEqual(listed.map((r) => r.backupId).sort());
    expect(await readdir(join(dir, 'state', 'scratch')).catch(() => [])).toEqual([]);
    expect(existsSync(join(dir, 'state', 'journal', `${dom.name}.json`))).toBe(false);
    expect(await readdir(join(dir, 'run'))).toEqual([]);
    expect(await processesNaming(join(dir, 'state'))).toEqual([d.proc.pid]);
    const out = join(dir, 'first-restored.raw');
    expect((await d.request('POST', '/v1/repository/restore', { repo: repo(), backupId: firstId, out })).status).toBe(200);
    expect((await readFile(out)).equals(await readFile(join(dir, 'first.raw')))).toBe(true);

    const next = await backup(d);
    expect({ state: next.state, error: next.error, from: next.incrementalFrom }).toEqual({ state: 'completed', error: undefined, from: full.checkpoint });
    expect((await held()).job).toBe('None');
    fault.held();
  }, 240_000);
});
