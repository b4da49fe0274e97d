// A real S3 server for tests: one single-node OpenStack Swift (s3api + tempauth) per jest run, on loopback ports of
// its own, in a fleece-test-swift-<jest pid> directory; started on first use by whichever worker asks first (a mkdir
// lock), stopped by global-teardown. Recipe: ../shared/reference/swift-s3.md. No jest imports and only Node
// built-ins here: global-teardown loads this file through jest's require hook (see libvirt.ts).
//
// The run directory holds etc/ (swift.conf, rings, one config per server), node/d1 (the one device), <server>.log,
// state.json ({ endpoint, ports, pids } once Swift answers), error.txt (why the start failed: later callers fail at
// once) and lock/ (held while starting or stopping; lock/owner holds the holder's pid). Every process it starts has
// the run directory in its command line (memcached through its pid file), so scripts/run-tests.mjs finds leftovers.
import { spawn, spawnSync } from 'node:child_process';
import { accessSync, constants, existsSync, openSync, closeSync, readFileSync, statSync } from 'node:fs';
import { mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { request } from 'node:http';
import { createServer } from 'node:net';
import { tmpdir, userInfo } from 'node:os';
import { basename, join } from 'node:path';

export type SwiftAvailability = { ok: true } | { ok: false; why: string };

export interface SwiftHarness {
  /** The S3 endpoint (path-style), e.g. http://127.0.0.1:38123 */
  endpoint: string;
  region: 'us-east-1';
  accessKeyId: string;
  secretAccessKey: string;
  /** tempauth for the native Swift API: GET authUrl with X-Auth-User/X-Auth-Key gives X-Storage-Url, X-Auth-Token. */
  authUrl: string;
  /** The run directory (logs). */
  dir: string;
}

/** A second proxy on the same cluster, for tests that stop "the server" without disturbing the other tests. */
export interface PrivateProxy {
  endpoint: string;
  /** SIGKILLs the proxy (the port refuses connections from then on). */
  stop(): Promise<void>;
  /** Starts it again on the same port; resolves once it answers. */
  start(): Promise<void>;
}

const RUN_DIR_PREFIX = 'fleece-test-swift-';
const SWIFT_DIR_ENV = 'FLEECE_TEST_SWIFT_DIR';
const LIBVIRT_DIR_ENV = 'FLEECE_TEST_LIBVIRT_DIR';
const USER = 'test:tester';
const KEY = 'testing';
const START_TIMEOUT_MS = 60_000;
const LOCK_WAIT_MS = START_TIMEOUT_MS + 30_000;
const SERVERS = ['account', 'container', 'object'] as const;
const BINARIES = ['swift-proxy-server', 'swift-account-server', 'swift-container-server', 'swift-object-server', 'memcached'];
const PACKAGES = 'swift swift-proxy swift-object swift-container swift-account python3-swiftclient memcached';

interface State {
  endpoint: string;
  ports: { proxy: number; account: number; container: number; object: number; memcached: number };
  pids: number[];
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

function findBinary(name: string): string | undefined {
  for (const dir of ['/usr/bin', '/usr/local/bin', '/usr/sbin', ...(process.env.PATH ?? '').split(':')].filter((d) => d)) {
    try {
      accessSync(join(dir, name), constants.X_OK);
      return join(dir, name);
    } catch {
      // not here
    }
  }
  return undefined;
}

/** Whether Swift can run here, and if not why, naming the packages to install. */
export function swiftAvailability(): SwiftAvailability {
  if (process.platform !== 'linux') return { ok: false, why: 'the Swift harness needs Linux' };
  const missing = BINARIES.filter((b) => findBinary(b) === undefined);
  if (missing.length > 0) {
    return { ok: false, why: `missing ${missing.join(', ')}: run scripts/install-system-deps.sh, or as root: apt-get install -y --no-install-recommends ${PACKAGES}` };
  }
  return { ok: true };
}

/** The run directory: named after the jest parent's pid (global-setup's libvirt directory carries it), else ours. */
function runDir(): string {
  let dir = process.env[SWIFT_DIR_ENV];
  if (!dir) {
    const owner = /-(\d+)$/.exec(basename(process.env[LIBVIRT_DIR_ENV] ?? ''))?.[1] ?? String(process.pid);
    dir = join(tmpdir(), `${RUN_DIR_PREFIX}${owner}`);
    process.env[SWIFT_DIR_ENV] = dir;
  }
  return dir;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return false;
  }
}

async function readText(path: string): Promise<string | undefined> {
  try {
    return await readFile(path, 'utf8');
  } catch {
    return undefined;
  }
}

async function writeAtomic(path: string, text: string): Promise<void> {
  const tmp = `${path}.${process.pid}.tmp`;
  await writeFile(tmp, text);
  await rename(tmp, path);
}

// ---- the lock (as libvirt.ts: a directory, its owner's pid inside) -------------------------------------------

function lockHolder(dir: string): number | 'none' | 'stale' {
  const lock = join(dir, 'lock');
  let since: number;
  try {
    since = statSync(lock).mtimeMs;
  } catch {
    return 'none';
  }
  const owner = Number((() => { try { return readFileSync(join(lock, 'owner'), 'utf8').trim(); } catch { return ''; } })());
  if (!Number.isInteger(owner) || owner <= 0) return Date.now() - since > 10_000 ? 'stale' : 0;
  return alive(owner) ? owner : 'stale';
}

async function tryLock(dir: string): Promise<boolean> {
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      await mkdir(join(dir, 'lock'));
      await writeFile(join(dir, 'lock', 'owner'), String(process.pid));
      return true;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
      if (lockHolder(dir) !== 'stale') return false;
      await rm(join(dir, 'lock'), { recursive: true, force: true });
    }
  }
  return false;
}

async function withLock<T>(dir: string, timeoutMs: number, fn: () => Promise<T>): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  while (!(await tryLock(dir))) {
    if (Date.now() > deadline) throw new Error(`could not lock the shared Swift in ${dir} within ${timeoutMs} ms (held by pid ${lockHolder(dir)})`);
    await sleep(100);
  }
  try {
    return await fn();
  } finally {
    await rm(join(dir, 'lock'), { recursive: true, force: true });
  }
}

// ---- starting ----------------------------------------------------------------------------------------------------

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const port = (server.address() as { port: number }).port;
      server.close(() => resolve(port));
    });
  });
}

/** One HTTP request to 127.0.0.1; resolves status, headers and body; rejects on connection errors or after 5 s. */
function http(port: number, method: string, path: string, headers: Record<string, string> = {}): Promise<{ status: number; headers: Record<string, string | string[] | undefined>; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, method, path, headers, timeout: 5000 }, (res) => {
      let body = '';
      res.on('data', (c: Buffer) => (body += c.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
    });
    req.on('timeout', () => req.destroy(new Error('timed out')));
    req.on('error', reject);
    req.end();
  });
}

function serverConf(dir: string, kind: string, port: number): string {
  return [
    '[DEFAULT]',
    `swift_dir = ${join(dir, 'etc')}`,
    `devices = ${join(dir, 'node')}`,
    'mount_check = false',
    'bind_ip = 127.0.0.1',
    `bind_port = ${port}`,
    'workers = 0',
    `user = ${userInfo().username}`,
    'log_level = WARNING',
    '[pipeline:main]',
    `pipeline = ${kind}-server`,
    `[app:${kind}-server]`,
    `use = egg:swift#${kind}`,
    '',
  ].join('\n');
}

function proxyConf(dir: string, port: number, memcached: number): string {
  const filters = ['catch_errors', 'gatekeeper', 'healthcheck', 'listing_formats', 'copy', 'slo', 'dlo'];
  return [
    '[DEFAULT]',
    'bind_ip = 127.0.0.1',
    `bind_port = ${port}`,
    `swift_dir = ${join(dir, 'etc')}`,
    'workers = 0',
    `user = ${userInfo().username}`,
    'log_level = WARNING',
    '[pipeline:main]',
    'pipeline = catch_errors gatekeeper healthcheck proxy-logging cache listing_formats s3api tempauth copy slo dlo proxy-logging proxy-server',
    '[app:proxy-server]',
    'use = egg:swift#proxy',
    'account_autocreate = true',
    '[filter:s3api]',
    'use = egg:swift#s3api',
    'location = us-east-1',
    '[filter:tempauth]',
    'use = egg:swift#tempauth',
    `user_test_tester = ${KEY} .admin`,
    '[filter:cache]',
    'use = egg:swift#memcache',
    `memcache_servers = 127.0.0.1:${memcached}`,
    '[filter:proxy-logging]',
    'use = egg:swift#proxy_logging',
    ...filters.flatMap((f) => [`[filter:${f}]`, `use = egg:swift#${f}`]),
    '',
  ].join('\n');
}

/** Rings for the three servers in one python run (swift-ring-builder would take nine, ~0.5 s each). */
const RING_SCRIPT = `
import sys, os
from swift.common.ring import RingBuilder
etc = sys.argv[1]
for name, port in zip(('account', 'container', 'object'), sys.argv[2:5]):
    b = RingBuilder(10, 1, 1)
    b.add_dev({'id': 0, 'region': 1, 'zone': 1, 'ip': '127.0.0.1', 'port': int(port), 'device': 'd1', 'weight': 100, 'meta': ''})
    b.rebalance()
    b.get_ring().save(os.path.join(etc, name + '.ring.gz'))
`;

/** Starts `binary args` detached, its output to `<dir>/<log>`; returns its pid. */
function launch(dir: string, binary: string, args: string[], log: string): number {
  const out = openSync(join(dir, log), 'a');
  try {
    const child = spawn(findBinary(binary) ?? binary, args, { detached: true, stdio: ['ignore', out, out], cwd: dir });
    child.unref();
    if (child.pid === undefined) throw new Error(`could not start ${binary}`);
    return child.pid;
  } finally {
    closeSync(out);
  }
}

async function authToken(port: number): Promise<{ token: string; storageUrl: string }> {
  const res = await http(port, 'GET', '/auth/v1.0', { 'X-Auth-User': USER, 'X-Auth-Key': KEY });
  const token = res.headers['x-auth-token'];
  const storageUrl = res.headers['x-storage-url'];
  if (res.status >= 300 || typeof token !== 'string' || typeof storageUrl !== 'string') throw new Error(`tempauth answered ${res.status}`);
  return { token, storageUrl };
}

/** Waits until the proxy, tempauth and the backend servers answer (a container PUT goes through all of them). */
async function waitReady(port: number, pids: number[], dir: string): Promise<void> {
  const deadline = Date.now() + START_TIMEOUT_MS;
  let last = '';
  while (Date.now() < deadline) {
    const dead = pids.filter((p) => !alive(p));
    if (dead.length > 0) throw new Error(`a Swift process exited (pids ${dead.join(', ')}); see the logs in ${dir}`);
    try {
      const { token, storageUrl } = await authToken(port);
      const path = `${new URL(storageUrl).pathname}/fleece-ready`;
      const put = await http(port, 'PUT', path, { 'X-Auth-Token': token });
      if (put.status >= 200 && put.status < 300) return;
      last = `container PUT answered ${put.status}`;
    } catch (error) {
      last = (error as Error).message;
    }
    await sleep(100);
  }
  throw new Error(`Swift did not answer within ${START_TIMEOUT_MS} ms (last: ${last}); see the logs in ${dir}`);
}

async function startSwift(dir: string): Promise<State> {
  await rm(join(dir, 'etc'), { recursive: true, force: true });
  await rm(join(dir, 'node'), { recursive: true, force: true });
  await mkdir(join(dir, 'etc'), { recursive: true });
  await mkdir(join(dir, 'node', 'd1'), { recursive: true });
  const ports = { proxy: await freePort(), account: await freePort(), container: await freePort(), object: await freePort(), memcached: await freePort() };
  const etc = join(dir, 'etc');
  await writeFile(join(etc, 'swift.conf'), [
    '[swift-hash]', 'swift_hash_path_prefix = fleece-test', 'swift_hash_path_suffix = fleece-test',
    '[storage-policy:0]', 'name = gold', 'default = yes', '',
  ].join('\n'));
  const rings = spawnSync('/usr/bin/python3', ['-c', RING_SCRIPT, etc, String(ports.account), String(ports.container), String(ports.object)], { encoding: 'utf8' });
  if (rings.status !== 0) throw new Error(`building the Swift rings failed: ${rings.stderr || rings.error?.message}`);
  for (const kind of SERVERS) await writeFile(join(etc, `${kind}-server.conf`), serverConf(dir, kind, ports[kind]));
  await writeFile(join(etc, 'proxy-server.conf'), proxyConf(dir, ports.proxy, ports.memcached));
  const pids: number[] = [];
  const memcacheUser = spawnSync('id', ['-u', 'memcache']).status === 0 ? 'memcache' : userInfo().username;
  // -P puts the run directory in memcached's command line too (the leftover check greps for it).
  pids.push(launch(dir, 'memcached', ['-u', memcacheUser, '-l', '127.0.0.1', '-p', String(ports.memcached), '-U', '0', '-P', join(dir, 'memcached.pid')], 'memcached.log'));
  for (const kind of SERVERS) pids.push(launch(dir, `swift-${kind}-server`, [join(etc, `${kind}-server.conf`)], `${kind}.log`));
  pids.push(launch(dir, 'swift-proxy-server', [join(etc, 'proxy-server.conf')], 'proxy.log'));
  try {
    await waitReady(ports.proxy, pids, dir);
  } catch (error) {
    await killAll(pids);
    throw error;
  }
  return { endpoint: `http://127.0.0.1:${ports.proxy}`, ports, pids };
}

async function killAll(pids: number[]): Promise<void> {
  for (const pid of pids) {
    try { process.kill(pid, 'SIGTERM'); } catch { /* gone */ }
  }
  const deadline = Date.now() + 5000;
  while (pids.some(alive) && Date.now() < deadline) await sleep(50);
  for (const pid of pids.filter(alive)) {
    try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
  }
}

function harnessOf(dir: string, state: State): SwiftHarness {
  return {
    endpoint: state.endpoint, region: 'us-east-1', accessKeyId: USER, secretAccessKey: KEY,
    authUrl: `http://127.0.0.1:${state.ports.proxy}/auth/v1.0`, dir,
  };
}

async function readState(dir: string): Promise<State | undefined> {
  const text = await readText(join(dir, 'state.json'));
  if (text === undefined) return undefined;
  try {
    return JSON.parse(text) as State;
  } catch {
    return undefined;
  }
}

/**
 * The run's shared Swift, started if nobody has yet (about 3 s). Throws Error when Swift is not installed (see
 * swiftAvailability), or when it does not start (the reason is kept: later callers fail at once with it).
 */
export async function sharedSwift(): Promise<SwiftHarness> {
  const availability = swiftAvailability();
  if (!availability.ok) throw new Error(availability.why);
  const dir = runDir();
  await mkdir(dir, { recursive: true });
  const deadline = Date.now() + LOCK_WAIT_MS;
  for (;;) {
    const failed = await readText(join(dir, 'error.txt'));
    if (failed !== undefined) throw new Error(`the shared Swift could not start earlier: ${failed}`);
    const state = await readState(dir);
    if (state && state.pids.every(alive)) return harnessOf(dir, state);
    if (await tryLock(dir)) {
      try {
        const again = await readState(dir);
        if (again && again.pids.every(alive)) return harnessOf(dir, again);
        if (again) await killAll(again.pids); // some process died: start afresh
        let started: State;
        try {
          started = await startSwift(dir);
        } catch (error) {
          await writeFile(join(dir, 'error.txt'), (error as Error).message);
          throw error;
        }
        await writeAtomic(join(dir, 'state.json'), JSON.stringify(started));
        return harnessOf(dir, started);
      } finally {
        await rm(join(dir, 'lock'), { recursive: true, force: true });
      }
    }
    if (Date.now() > deadline) throw new Error(`waited ${LOCK_WAIT_MS} ms for pid ${lockHolder(dir)} to start the shared Swift in ${dir}`);
    await sleep(100);
  }
}

/** Creates a bucket (a Swift container, through the native API and tempauth); an existing one is fine. */
export async function createBucket(h: SwiftHarness, bucket: string): Promise<void> {
  const port = Number(new URL(h.endpoint).port);
  const { token, storageUrl } = await authToken(port);
  const res = await http(port, 'PUT', `${new URL(storageUrl).pathname}/${encodeURIComponent(bucket)}`, { 'X-Auth-Token': token });
  if (res.status < 200 || res.status >= 300) throw new Error(`creating bucket ${bucket} answered ${res.status}: ${res.body}`);
}

/**
 * Starts one more proxy server on the shared cluster (its own port, same rings, memcached and accounts): a test may
 * stop and start it at will. Stop it with stop() before the test ends (teardown SIGKILLs leftovers anyway).
 */
export async function privateProxy(h: SwiftHarness): Promise<PrivateProxy> {
  const dir = h.dir;
  const state = (await readState(dir))!;
  const port = await freePort();
  const conf = join(dir, 'etc', `proxy-${port}.conf`);
  await writeFile(conf, proxyConf(dir, port, state.ports.memcached));
  let pid: number | undefined;
  const start = async () => {
    pid = launch(dir, 'swift-proxy-server', [conf], `proxy-${port}.log`);
    await withLock(dir, LOCK_WAIT_MS, async () => {
      const s = (await readState(dir))!;
      await writeAtomic(join(dir, 'state.json'), JSON.stringify({ ...s, extra: [...((s as { extra?: number[] }).extra ?? []), pid] }));
    });
    const deadline = Date.now() + START_TIMEOUT_MS;
    for (;;) {
      try {
        if ((await http(port, 'GET', '/healthcheck')).status === 200) return;
      } catch {
        // not yet
      }
      if (!alive(pid) || Date.now() > deadline) throw new Error(`the private proxy on port ${port} did not start; see ${join(dir, `proxy-${port}.log`)}`);
      await sleep(50);
    }
  };
  await start();
  return {
    endpoint: `http://127.0.0.1:${port}`,
    start,
    stop: async () => {
      if (pid === undefined) return;
      const was = pid;
      pid = undefined;
      try { process.kill(was, 'SIGKILL'); } catch { /* gone */ }
      while (alive(was)) await sleep(20);
    },
  };
}

/** Stops the shared Swift and removes its run directory; does nothing when this run never started one. */
export async function stopSharedSwift(): Promise<void> {
  const dir = process.env[SWIFT_DIR_ENV] ?? runDir();
  if (!existsSync(dir)) return;
  try {
    await withLock(dir, 30_000, async () => {
      const state = await readState(dir) as (State & { extra?: number[] }) | undefined;
      if (state) await killAll([...state.pids, ...(state.extra ?? [])]);
    });
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
