// A real libvirtd for integration tests: one system-mode daemon per jest run, listening only in its own
// fleece-test-libvirt- run directory, started on first use by whichever worker asks first (a mkdir lock), stopped by
// global-teardown; and test domains (TCG, no OS or a tiny real guest) whose disks a test writes through HMP qemu-io.
// Recipe: ../shared/reference/libvirt-harness.md. No jest imports and only Node built-ins here: global-teardown
// loads this file through jest's require hook, where neither the `.js` import mapping nor ESM-only packages work.
//
// The daemon runs in a mount namespace of its own ('private' mode, see Mode) so that it coexists with any other
// libvirtd on the machine; where unshare is refused it falls back to the reference's way ('global' mode).
// The run directory (FLEECE_TEST_LIBVIRT_DIR, set by global-setup; named after the jest parent's pid) holds:
//   libvirtd.conf, libvirtd.log, libvirtd.stderr, libvirtd.pid (written by libvirtd), the sockets (libvirt-sock…),
//   state.json ({ uri, pid, mode } once the daemon answers), error.txt (why the start failed: later callers fail at
//   once), lock/ (held while starting, restarting or stopping; lock/owner holds the holder's pid),
//   <domain>.serial.log, and in 'private' mode root/{etc,run,lib,log}: libvirtd's /etc/libvirt, /run/libvirt,
//   /var/lib/libvirt and /var/log/libvirt (hostPathOf maps a path libvirtd reports to where the test finds it).
import { spawn } from 'node:child_process';
import {
  accessSync,
  closeSync,
  constants,
  existsSync,
  openSync,
  readFileSync,
  readdirSync,
  readlinkSync,
  statSync,
} from 'node:fs';
import { copyFile, mkdir, open, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';

export type LibvirtAvailability = { ok: true } | { ok: false; why: string };

export interface LibvirtHarness {
  /** e.g. `qemu+unix:///system?socket=/tmp/fleece-test-libvirt-1234/libvirt-sock` */
  uri: string;
  /**
   * Runs `virsh -c <uri> ...args` and resolves its stdout, trimmed (default timeout 60 s). Waits first while another
   * process starts or restarts the shared daemon.
   * @throws VirshError (stderr in the message) when virsh exits non-zero or times out.
   */
  virsh(args: string[], options?: { timeoutMs?: number }): Promise<string>;
  /**
   * Restarts the daemon: SIGTERM by its pid file (SIGKILL after 15 s), start again, wait until virsh answers.
   * Running domains keep running (libvirtd reconnects to their monitors). `whileDown` runs (awaited) between the
   * stop and the start: a test of a libvirtd that stays away for a while (the daemon starts again even if it throws).
   * @throws Error with the tail of libvirtd's log when it does not answer again within 60 s.
   */
  restart(options?: { whileDown?: () => Promise<void> }): Promise<void>;
}

export interface TestDiskSpec {
  /** vda, vdb, sda (hd* for IDE) */
  target: string;
  path: string;
  format: 'qcow2' | 'raw';
  /** Default: scsi for sd*, ide for hd*, else virtio. */
  bus?: 'virtio' | 'scsi';
  readonly?: boolean;
  device?: 'disk' | 'cdrom';
}

export interface TestDomainSpec {
  /** must start with `fleece-test-` (the suite's leftover-process check greps for it); give a unique suffix per test */
  name: string;
  disks: TestDiskSpec[];
  /** default 256 */
  memoryMiB?: number;
  /** A real guest: kernel + initrd + cmdline (see ../shared/reference/real-guest.md); its serial goes to `serialLog`. */
  os?: { kernel: string; initrd: string; cmdline: string };
  /** Adds the virtio channel org.qemu.guest_agent.0 (libvirt adds the virtio-serial controller). */
  guestAgent?: boolean;
  /** default true */
  start?: boolean;
}

export interface TestDomain {
  name: string;
  /** the domain XML as defined */
  xml: string;
  /** With `os`: the file the guest's serial console (ttyS0) is written to, in the run directory. */
  serialLog?: string;
  /**
   * Writes `length` bytes of `pattern` at `offset` through the guest device's BlockBackend, as a guest write would
   * (dirty bitmaps and backup jobs see it): HMP `qemu-io -d <qdev path> "write -P …"`.
   * @throws RangeError when `pattern` is not a byte; Error when qemu-io reports a failure (read-only disk, unknown
   * target, I/O error) or no completion in 10 s.
   */
  write(target: string, offset: number, length: number, pattern: number): Promise<void>;
  /**
   * Runs one qemu-io command (`read -P 0x5a 0 1M`, `discard 0 64k`…) on the disk `target` and returns what it printed
   * (qemu-io prints to QEMU's stdout, which libvirt sends to the domain log, libvirtd's /var/log/libvirt/qemu/<name>.log).
   * Calls are serialized.
   * @throws Error when qemu-io reports a failure, including "Pattern verification failed".
   */
  qemuIo(target: string, command: string): Promise<string>;
  /** virsh destroy, then undefine with checkpoint, snapshot and nvram metadata; never throws when already gone. */
  remove(): Promise<void>;
}

/** A virsh command that failed: its arguments, exit status and stderr (or stdout when stderr is empty). */
export class VirshError extends Error {
  override readonly name = 'VirshError';
  constructor(
    readonly args: string[],
    readonly exitCode: number | undefined,
    readonly stderr: string,
    readonly timedOut: boolean,
  ) {
    const status = timedOut ? 'timed out' : `exit ${exitCode ?? '?'}`;
    super(`virsh ${args.join(' ')} failed (${status}): ${stderr}`);
  }
}

/** The environment variable naming the per-run directory (global-setup sets it, so every jest worker shares it). */
export const LIBVIRT_RUN_DIR_ENV = 'FLEECE_TEST_LIBVIRT_DIR';
const RUN_DIR_PREFIX = 'fleece-test-libvirt-';
const DOMAIN_PREFIX = 'fleece-test-';

/** The run directory of the jest run whose parent process is `ownerPid` (created only when libvirtd is first needed). */
export function libvirtRunDir(ownerPid: number): string {
  return join(tmpdir(), `${RUN_DIR_PREFIX}${ownerPid}`);
}

const START_TIMEOUT_MS = 60_000;
/** How long a caller waits for another process's start, restart or stop. */
const LOCK_WAIT_MS = START_TIMEOUT_MS + 30_000;
const STOP_TIMEOUT_MS = 15_000;
const VIRSH_TIMEOUT_MS = 60_000;
const QEMU_IO_TIMEOUT_MS = 10_000;
const LOG_TAIL_LINES = 30;

const QEMU_CONF = '/etc/libvirt/qemu.conf';
const QEMU_CONF_BACKUP = '/etc/libvirt/qemu.conf.fleece-backup';
const DOMAIN_LOG_DIR = '/var/log/libvirt/qemu';
/** Where a domain's QEMU output (and so qemu-io's) goes: the run directory's copy of /var/log/libvirt in 'private' mode. */
function domainLogPath(dir: string, name: string): string {
  const privateLog = join(paths(dir).root, 'log');
  return join(existsSync(privateLog) ? join(privateLog, 'qemu') : DOMAIN_LOG_DIR, `${name}.log`);
}

// ---- availability ----------------------------------------------------------------------------------------------

const REQUIRED_BINARIES: { binary: string; pkg: string }[] = [
  { binary: 'libvirtd', pkg: 'libvirt-daemon' },
  { binary: 'virsh', pkg: 'libvirt-clients' },
  { binary: 'qemu-system-x86_64', pkg: 'qemu-system-x86' },
  { binary: 'qemu-img', pkg: 'qemu-utils' },
  { binary: 'taskset', pkg: 'util-linux' },
];

function findBinary(binary: string): string | undefined {
  const dirs = [...(process.env.PATH ?? '').split(':'), '/usr/local/sbin', '/usr/sbin', '/sbin'].filter((d) => d);
  for (const dir of dirs) {
    const candidate = join(dir, binary);
    try {
      accessSync(candidate, constants.X_OK);
      return candidate;
    } catch {
      // not here
    }
  }
  return undefined;
}

function binary(name: string): string {
  return findBinary(name) ?? name;
}

/** Whether libvirt's QEMU driver module is installed; undefined when this machine keeps the modules elsewhere. */
function hasQemuDriver(): boolean | undefined {
  const dirs = ['/usr/lib64/libvirt/connection-driver', '/usr/lib/libvirt/connection-driver'];
  try {
    for (const entry of readdirSync('/usr/lib')) {
      if (entry.endsWith('-linux-gnu')) dirs.push(`/usr/lib/${entry}/libvirt/connection-driver`);
    }
  } catch {
    // no /usr/lib
  }
  const present = dirs.filter((dir) => existsSync(dir));
  if (present.length === 0) return undefined;
  return present.some((dir) => existsSync(join(dir, 'libvirt_driver_qemu.so')));
}

/** Whether a libvirtd can be run here (root, libvirtd + virsh + qemu-system-x86_64 present), and if not why, naming the package to install. */
export function libvirtAvailability(): LibvirtAvailability {
  if (process.platform !== 'linux') return { ok: false, why: 'libvirt tests need Linux' };
  const uid = process.getuid?.() ?? -1;
  if (uid !== 0) {
    return { ok: false, why: `libvirt tests need root (a system-mode libvirtd that runs QEMU as root); uid is ${uid}` };
  }
  const missing = REQUIRED_BINARIES.filter((r) => findBinary(r.binary) === undefined);
  const packages = missing.map((r) => r.pkg);
  if (hasQemuDriver() === false) packages.push('libvirt-daemon-driver-qemu');
  if (packages.length === 0) return { ok: true };
  const what = [
    ...missing.map((r) => `${r.binary} (package ${r.pkg})`),
    ...(hasQemuDriver() === false ? ["libvirt's QEMU driver (package libvirt-daemon-driver-qemu)"] : []),
  ];
  return {
    ok: false,
    why: `missing ${what.join(', ')}: run scripts/install-system-deps.sh, or as root: apt-get install -y --no-install-recommends ${packages.join(' ')}`,
  };
}

// ---- small process and file helpers ----------------------------------------------------------------------------

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** True while `pid` exists and is not a zombie. */
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

function fileSize(path: string): number {
  try {
    return statSync(path).size;
  } catch {
    return 0;
  }
}

/** The text appended to `path` since byte `from`. */
async function readFrom(path: string, from: number): Promise<string> {
  let handle;
  try {
    handle = await open(path, 'r');
  } catch {
    return '';
  }
  try {
    const size = (await handle.stat()).size;
    if (size <= from) return '';
    const buffer = Buffer.alloc(size - from);
    const { bytesRead } = await handle.read(buffer, 0, buffer.length, from);
    return buffer.subarray(0, bytesRead).toString('utf8');
  } finally {
    await handle.close();
  }
}

interface RunResult {
  /** null when killed by a signal or not started */
  code: number | null;
  stdout: string;
  stderr: string;
  timedOut: boolean;
  /** why it could not be started (ENOENT…) */
  spawnError?: string;
}

/** Runs a command to its end (C locale, no stdin); SIGKILL after `timeoutMs`. Never rejects. */
function run(
  command: string,
  args: string[],
  options: { timeoutMs?: number; stdio?: [number, number] } = {},
): Promise<RunResult> {
  return new Promise((resolve) => {
    const child = spawn(command, args, {
      stdio: ['ignore', options.stdio?.[0] ?? 'pipe', options.stdio?.[1] ?? 'pipe'],
      env: { ...process.env, LC_ALL: 'C' },
    });
    let stdout = '';
    let stderr = '';
    let timedOut = false;
    child.stdout?.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
    child.stderr?.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    const timer =
      options.timeoutMs === undefined
        ? undefined
        : setTimeout(() => {
            timedOut = true;
            child.kill('SIGKILL');
          }, options.timeoutMs);
    let spawnError: string | undefined;
    child.on('error', (error) => (spawnError = error.message));
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr, timedOut, ...(spawnError ? { spawnError } : {}) });
    });
  });
}

function describeFailure(command: string, args: string[], result: RunResult): string {
  const status = result.timedOut ? 'timed out' : result.spawnError ? result.spawnError : `exit ${result.code ?? 'by signal'}`;
  return `${command} ${args.join(' ')} failed (${status}): ${(result.stderr || result.stdout).trim()}`;
}

function tailLines(text: string, lines: number): string {
  return text.trimEnd().split('\n').slice(-lines).join('\n');
}

async function writeAtomic(path: string, text: string): Promise<void> {
  const tmp = `${path}.${process.pid}.tmp`;
  await writeFile(tmp, text);
  await rename(tmp, path);
}

function xmlEscape(text: string): string {
  return text.replace(/[&<>'"]/g, (c) => `&${{ '&': 'amp', '<': 'lt', '>': 'gt', "'": 'apos', '"': 'quot' }[c]};`);
}

function errorText(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

// ---- the run directory and its lock ----------------------------------------------------------------------------

function runDir(): string {
  let dir = process.env[LIBVIRT_RUN_DIR_ENV];
  if (!dir) {
    // Used outside jest (a script): this process owns the run; it must call stopSharedLibvirt() itself.
    dir = libvirtRunDir(process.pid);
    process.env[LIBVIRT_RUN_DIR_ENV] = dir;
  }
  return dir;
}

const paths = (dir: string) => ({
  conf: join(dir, 'libvirtd.conf'),
  log: join(dir, 'libvirtd.log'),
  stderr: join(dir, 'libvirtd.stderr'),
  pid: join(dir, 'libvirtd.pid'),
  socket: join(dir, 'libvirt-sock'),
  state: join(dir, 'state.json'),
  error: join(dir, 'error.txt'),
  lock: join(dir, 'lock'),
  lockOwner: join(dir, 'lock', 'owner'),
  /** In 'private' mode, bound over PRIVATE_DIRS' targets inside libvirtd's mount namespace. */
  root: join(dir, 'root'),
});

/**
 * 'private': libvirtd runs in its own mount namespace with run-dir copies of /etc/libvirt, /run/libvirt,
 * /var/lib/libvirt and /var/log/libvirt (its own qemu.conf, domain definitions, driver locks, domain logs), so it
 * coexists with any other libvirtd and leaves nothing behind. 'global': where unshare is not allowed, the reference's
 * way: the real directories, /etc/libvirt/qemu.conf edited, and no other system libvirtd may run.
 */
type Mode = 'private' | 'global';

/** Bound in 'private' mode: [directory under root/, the system directory it replaces]. /var/cache/libvirt stays shared (warm starts). */
const PRIVATE_DIRS: [string, string][] = [
  ['etc', '/etc/libvirt'],
  ['run', '/run/libvirt'],
  ['lib', '/var/lib/libvirt'],
  ['log', '/var/log/libvirt'],
];

interface DaemonState {
  uri: string;
  pid: number;
  mode: Mode;
}

async function readState(dir: string): Promise<DaemonState | undefined> {
  const text = await readText(paths(dir).state);
  if (text === undefined) return undefined;
  try {
    return JSON.parse(text) as DaemonState;
  } catch {
    return undefined;
  }
}

function readPidFile(dir: string): number | undefined {
  try {
    const pid = Number(readFileSync(paths(dir).pid, 'utf8').trim());
    return Number.isInteger(pid) && pid > 0 ? pid : undefined;
  } catch {
    return undefined;
  }
}

/**
 * The pid holding the lock (0: being taken right now, owner not yet written), 'none', or 'stale' (its holder died, or
 * it has had no owner file for 10 s).
 */
function lockHolder(dir: string): number | 'none' | 'stale' {
  const p = paths(dir);
  let since: number;
  try {
    since = statSync(p.lock).mtimeMs;
  } catch {
    return 'none';
  }
  let owner: number | undefined;
  try {
    owner = Number(readFileSync(p.lockOwner, 'utf8').trim());
  } catch {
    owner = undefined;
  }
  if (owner === undefined || !Number.isInteger(owner) || owner <= 0) {
    return Date.now() - since > 10_000 ? 'stale' : 0;
  }
  return alive(owner) ? owner : 'stale';
}

/** Takes the lock if it is free (or stale); false when another live process holds it. */
async function tryLock(dir: string): Promise<boolean> {
  const p = paths(dir);
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      await mkdir(p.lock);
      await writeFile(p.lockOwner, String(process.pid));
      return true;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
      if (lockHolder(dir) !== 'stale') return false;
      await rm(p.lock, { recursive: true, force: true });
    }
  }
  return false;
}

async function unlock(dir: string): Promise<void> {
  await rm(paths(dir).lock, { recursive: true, force: true });
}

/** Waits until no other live process holds the lock (our own process holding it counts as free). */
async function waitForUnlocked(dir: string, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const holder = lockHolder(dir);
    if (holder === 'none' || holder === 'stale' || holder === process.pid) return;
    if (Date.now() > deadline) {
      throw new Error(`the shared libvirtd in ${dir} stayed locked by pid ${holder} for ${timeoutMs} ms`);
    }
    await sleep(100);
  }
}

async function withLock<T>(dir: string, timeoutMs: number, fn: () => Promise<T>): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  while (!(await tryLock(dir))) {
    if (Date.now() > deadline) {
      throw new Error(`could not lock the shared libvirtd in ${dir} within ${timeoutMs} ms (held by pid ${lockHolder(dir)})`);
    }
    await sleep(100);
  }
  try {
    return await fn();
  } finally {
    await unlock(dir);
  }
}

// ---- one-time system setup -------------------------------------------------------------------------------------

/** libvirt's backup_tls_x509_cert_dir (ca-cert.pem, server-cert.pem, server-key.pem): shared by every test libvirtd. */
export const LIBVIRT_BACKUP_TLS_DIR = '/var/tmp/fleece-libvirt-backup-tls';

/** What a root libvirtd needs in /etc/libvirt/qemu.conf (the only qemu.conf it reads) on a machine without systemd. */
const QEMU_CONF_SETTINGS: [key: string, value: string][] = [
  ['stdio_handler', '"file"'], // QEMU's output to /var/log/libvirt/qemu/<name>.log directly: no virtlogd
  ['user', '"root"'],
  ['group', '"root"'],
  ['security_driver', '"none"'],
  ['namespaces', '[ ]'],
  // backups with <server transport='tcp' tls='yes'>: QEMU's server certificates (a test copies them in)
  ['backup_tls_x509_cert_dir', `"${LIBVIRT_BACKUP_TLS_DIR}"`],
];
const QEMU_CONF_MARKER = '# fleece test harness (test/harness/libvirt.ts):';

/** `text` with every QEMU_CONF_SETTINGS key set once, in a marked block at the end; idempotent. */
export function withQemuConfSettings(text: string): string {
  const keys = new Set(QEMU_CONF_SETTINGS.map(([key]) => key));
  const kept: string[] = [];
  let skippingList = false;
  for (const line of text.split('\n')) {
    if (skippingList) {
      if (line.includes(']')) skippingList = false;
      continue;
    }
    if (line.startsWith(QEMU_CONF_MARKER)) continue;
    const match = /^\s*([a-z0-9_]+)\s*=\s*(.*)$/.exec(line);
    if (match && keys.has(match[1]!)) {
      const value = match[2]!;
      skippingList = value.trimStart().startsWith('[') && !value.includes(']');
      continue;
    }
    kept.push(line);
  }
  while (kept.length > 0 && kept[kept.length - 1]!.trim() === '') kept.pop();
  const block = [
    `${QEMU_CONF_MARKER} a root libvirtd without virtlogd, sVirt or mount namespaces`,
    ...QEMU_CONF_SETTINGS.map(([key, value]) => `${key} = ${value}`),
  ];
  return [...kept, ...(kept.length > 0 ? [''] : []), ...block, ''].join('\n');
}

async function succeeds(command: string, args: string[]): Promise<boolean> {
  return (await run(command, args)).code === 0;
}

async function mustRun(command: string, args: string[], timeoutMs = 60_000): Promise<string> {
  const result = await run(binary(command), args, { timeoutMs });
  if (result.code !== 0 || result.timedOut) throw new Error(describeFailure(command, args, result));
  return result.stdout;
}

/**
 * The account the QEMU driver resolves at start-up (in every mode: it is looked up through NSS), and the qemu.conf
 * keys: in 'private' mode a qemu.conf of our own, in 'global' mode /etc/libvirt/qemu.conf edited in place (backed up
 * once). Idempotent.
 */
async function prepareSystem(dir: string, mode: Mode): Promise<void> {
  await mkdir(LIBVIRT_BACKUP_TLS_DIR, { recursive: true, mode: 0o700 }); // libvirtd refuses to start without it
  if (!(await succeeds('getent', ['group', 'libvirt-qemu']))) {
    await mustRun('groupadd', ['-r', 'libvirt-qemu']);
  }
  if (!(await succeeds('getent', ['passwd', 'libvirt-qemu']))) {
    await mustRun('useradd', ['-r', '-g', 'libvirt-qemu', '-d', '/var/lib/libvirt', '-s', '/usr/sbin/nologin', 'libvirt-qemu']);
  }
  if (mode === 'private') {
    for (const [sub, target] of PRIVATE_DIRS) {
      await mkdir(join(paths(dir).root, sub), { recursive: true });
      await mkdir(target, { recursive: true }); // the mount point
    }
    await writeFile(join(paths(dir).root, 'etc', 'qemu.conf'), withQemuConfSettings(''));
    return;
  }
  const current = await readText(QEMU_CONF);
  const wanted = withQemuConfSettings(current ?? '');
  if (current === wanted) return;
  if (current !== undefined && !existsSync(QEMU_CONF_BACKUP)) await copyFile(QEMU_CONF, QEMU_CONF_BACKUP);
  await mkdir(dirname(QEMU_CONF), { recursive: true });
  await writeAtomic(QEMU_CONF, wanted);
}

// ---- the daemon ------------------------------------------------------------------------------------------------

function uriFor(dir: string): string {
  return `qemu+unix:///system?socket=${paths(dir).socket}`;
}

function firstAllowedCpu(): number {
  try {
    const status = readFileSync('/proc/self/status', 'utf8');
    const list = /^Cpus_allowed_list:\s*(\d+)/m.exec(status);
    if (list) return Number(list[1]);
  } catch {
    // not Linux /proc
  }
  return 0;
}

function libvirtdConf(dir: string): string {
  const p = paths(dir);
  return [
    '# fleece test harness: a libvirtd that listens only in this directory',
    `unix_sock_dir = "${dir}"`,
    // auth none: only root may connect (the packaged default, 0777, would hand a root libvirtd to every local user)
    'unix_sock_rw_perms = "0700"',
    'unix_sock_ro_perms = "0700"',
    'auth_unix_rw = "none"',
    'auth_unix_ro = "none"',
    `log_outputs = "3:file:${p.log}"`,
    '',
  ].join('\n');
}

/** Runs virsh once; never waits for the lock. */
async function runVirsh(uri: string, args: string[], timeoutMs = VIRSH_TIMEOUT_MS): Promise<string> {
  const result = await run(binary('virsh'), ['-c', uri, ...args], { timeoutMs });
  if (result.code !== 0 || result.timedOut) {
    const detail = (result.stderr || result.stdout || result.spawnError || '').trim();
    throw new VirshError(args, result.code ?? undefined, detail, result.timedOut);
  }
  return result.stdout.trim();
}

/** SIGTERM, wait up to 15 s, SIGKILL, wait up to 5 s. */
async function killDaemon(pid: number): Promise<void> {
  if (!alive(pid)) return;
  const signal = (sig: NodeJS.Signals): void => {
    try {
      process.kill(pid, sig);
    } catch {
      // already gone
    }
  };
  signal('SIGTERM');
  const deadline = Date.now() + STOP_TIMEOUT_MS;
  while (alive(pid) && Date.now() < deadline) await sleep(50);
  if (!alive(pid)) return;
  signal('SIGKILL');
  const killDeadline = Date.now() + 5_000;
  while (alive(pid) && Date.now() < killDeadline) await sleep(50);
  if (alive(pid)) throw new Error(`libvirtd (pid ${pid}) did not exit after SIGKILL`);
}

let privateModeAllowed: boolean | undefined;

/**
 * 'private' when this process may make a mount namespace (root with CAP_SYS_ADMIN, unshare present), unless
 * FLEECE_TEST_LIBVIRT_MODE=global asks for the reference's way.
 */
async function chooseMode(): Promise<Mode> {
  if (process.env.FLEECE_TEST_LIBVIRT_MODE === 'global') return 'global';
  privateModeAllowed ??= (await run(binary('unshare'), ['-m', '--propagation', 'private', 'true'], { timeoutMs: 10_000 }))
    .code === 0;
  return privateModeAllowed ? 'private' : 'global';
}

/** The command that starts libvirtd (daemonizing) in `mode`. */
function launchCommand(dir: string, mode: Mode): { command: string; args: string[] } {
  const p = paths(dir);
  // Pinned to one CPU: this VM's vCPUs report different CPUID data, which makes libvirt re-probe QEMU (8 s) every start.
  const daemon = [binary('taskset'), '-c', String(firstAllowedCpu()), binary('libvirtd'), '-d', '-f', p.conf, '-p', p.pid];
  if (mode === 'global') return { command: daemon[0]!, args: daemon.slice(1) };
  // sh's positional parameters carry the paths, so no quoting is needed: $1..$4 the bind sources, then the daemon.
  const binds = PRIVATE_DIRS.map(([, target], i) => `mount --bind "$${i + 1}" ${target}`).join(' && ');
  const script = `${binds} && shift ${PRIVATE_DIRS.length} && exec "$@"`;
  const sources = PRIVATE_DIRS.map(([sub]) => join(p.root, sub));
  return {
    command: binary('unshare'),
    args: ['-m', '--propagation', 'private', binary('sh'), '-c', script, 'sh', ...sources, ...daemon],
  };
}

function mountNamespace(pid: number | 'self'): string | undefined {
  try {
    return readlinkSync(`/proc/${pid}/ns/mnt`);
  } catch {
    return undefined;
  }
}

function libvirtdProcesses(): { pid: number; argv: string[] }[] {
  const found: { pid: number; argv: string[] }[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      if (readFileSync(`/proc/${entry}/comm`, 'utf8').trim() !== 'libvirtd') continue;
      const argv = readFileSync(`/proc/${entry}/cmdline`, 'utf8').split('\0').filter((a) => a);
      if (alive(Number(entry))) found.push({ pid: Number(entry), argv });
    } catch {
      // exited meanwhile
    }
  }
  return found;
}

/**
 * Stops a harness libvirtd left by a jest run that died (its run directory names a dead pid) or by this run (its
 * state lost), with its fleece-test- domains. In 'global' mode also refuses when another libvirtd runs in our mount
 * namespace: those share /run/libvirt, and each driver locks /run/libvirt/<driver>/driver.pid.
 */
async function stopStaleDaemons(dir: string, mode: Mode): Promise<void> {
  const ours = mountNamespace('self');
  for (const { pid, argv } of libvirtdProcesses()) {
    const conf = argv.includes('-f') ? (argv[argv.indexOf('-f') + 1] ?? '') : '';
    const match = new RegExp(`/${RUN_DIR_PREFIX}(\\d+)/libvirtd\\.conf$`).exec(conf);
    const itsDir = match ? dirname(conf) : undefined;
    if (itsDir !== undefined && (itsDir === dir || !alive(Number(match![1])))) {
      await removeTestDomains(uriFor(itsDir));
      await killDaemon(pid);
      if (itsDir !== dir) await rm(itsDir, { recursive: true, force: true });
      continue;
    }
    if (mode === 'global' && mountNamespace(pid) === ours) {
      throw new Error(
        `another libvirtd is running (pid ${pid}: ${argv.join(' ')}); without a mount namespace of its own a ` +
          'system-mode libvirtd shares /run/libvirt with it (each driver locks /run/libvirt/<driver>/driver.pid): ' +
          'stop it, or wait for the jest run that owns it to end',
      );
    }
  }
}

/** Starts libvirtd on the run directory's sockets and waits until `virsh version` answers; returns its pid. */
async function startDaemon(dir: string): Promise<DaemonState> {
  const p = paths(dir);
  const mode = await chooseMode();
  await prepareSystem(dir, mode);
  await stopStaleDaemons(dir, mode);
  await writeFile(p.conf, libvirtdConf(dir));
  await rm(p.pid, { force: true });
  const uri = uriFor(dir);
  const logStart = fileSize(p.log);
  const stderrStart = fileSize(p.stderr);
  const failure = async (why: string, pid?: number): Promise<Error> => {
    if (pid !== undefined) await killDaemon(pid).catch(() => undefined);
    const log = tailLines(await readFrom(p.log, logStart), LOG_TAIL_LINES);
    const stderr = tailLines(await readFrom(p.stderr, stderrStart), LOG_TAIL_LINES);
    return new Error(
      `libvirtd did not start: ${why}\n--- ${p.log} (tail) ---\n${log || '(empty)'}` +
        (stderr ? `\n--- ${p.stderr} ---\n${stderr}` : ''),
    );
  };

  // -d daemonizes: libvirtd forks, the parent exits once the daemon is set up. Its output goes to a file, not a
  // pipe: the daemon must not hold a pipe of ours open.
  const { command, args } = launchCommand(dir, mode);
  const output = openSync(p.stderr, 'a');
  let launched: RunResult;
  try {
    launched = await run(command, args, { timeoutMs: START_TIMEOUT_MS, stdio: [output, output] });
  } finally {
    closeSync(output);
  }
  if (launched.code !== 0) throw await failure(describeFailure(command, args, launched));

  const deadline = Date.now() + START_TIMEOUT_MS;
  let pid: number | undefined;
  let lastError = '';
  while (Date.now() < deadline) {
    pid ??= readPidFile(dir);
    try {
      await runVirsh(uri, ['version'], 10_000);
      pid ??= readPidFile(dir);
      if (pid !== undefined) return { uri, pid, mode };
      lastError = `virsh answered but ${p.pid} is missing`;
    } catch (error) {
      lastError = errorText(error);
    }
    if (pid !== undefined && !alive(pid)) throw await failure(`it exited (pid ${pid}); last virsh error: ${lastError}`);
    const log = await readFrom(p.log, logStart);
    if (/Driver state initialization failed|Failed to acquire pid file/.test(log)) {
      throw await failure('its drivers failed to initialize', pid);
    }
    await sleep(100);
  }
  throw await failure(`virsh -c ${uri} version did not answer within ${START_TIMEOUT_MS} ms (last: ${lastError})`, pid);
}

async function listTestDomains(uri: string): Promise<string[]> {
  const names = await runVirsh(uri, ['list', '--all', '--name'], 30_000);
  return names.split('\n').map((n) => n.trim()).filter((n) => n.startsWith(DOMAIN_PREFIX));
}

const NOT_RUNNING = /domain is not running/i;
const GONE = /failed to get domain|Domain not found|no domain with matching/i;

async function destroyAndUndefine(run: (args: string[]) => Promise<string>, name: string): Promise<void> {
  try {
    await run(['destroy', name]);
  } catch (error) {
    if (!NOT_RUNNING.test(errorText(error)) && !GONE.test(errorText(error))) throw error;
  }
  try {
    await run(['undefine', name, '--checkpoints-metadata', '--snapshots-metadata', '--nvram']);
  } catch (error) {
    if (!GONE.test(errorText(error))) throw error;
  }
}

/** Destroys and undefines every fleece-test- domain; reports failures on stderr instead of throwing. */
async function removeTestDomains(uri: string): Promise<void> {
  let names: string[];
  try {
    names = await listTestDomains(uri);
  } catch (error) {
    console.warn(`libvirt harness: could not list leftover domains: ${errorText(error)}`);
    return;
  }
  const dir = socketDir(uri);
  for (const name of names) {
    try {
      await destroyAndUndefine((args) => runVirsh(uri, args, 30_000), name);
      if (dir) await rm(domainLogPath(dir, name), { force: true });
    } catch (error) {
      console.warn(`libvirt harness: could not remove leftover domain ${name}: ${errorText(error)}`);
    }
  }
}

function harnessFor(dir: string, uri: string): LibvirtHarness {
  return {
    uri,
    virsh: async (args, options) => {
      await waitForUnlocked(dir, LOCK_WAIT_MS);
      return runVirsh(uri, args, options?.timeoutMs);
    },
    restart: (options) =>
      withLock(dir, LOCK_WAIT_MS, async () => {
        const pid = readPidFile(dir) ?? (await readState(dir))?.pid;
        if (pid !== undefined) await killDaemon(pid);
        await rm(paths(dir).state, { force: true });
        try {
          await options?.whileDown?.();
        } finally {
          await writeAtomic(paths(dir).state, JSON.stringify(await startDaemon(dir)));
        }
      }),
  };
}

/**
 * The libvirtd shared by all test files of this jest run: started on first use (by whichever worker takes the lock
 * first; the others wait for it), reused after, started again if it died; stopped by stopSharedLibvirt() from
 * global-teardown. A harness libvirtd left by a jest run that died is stopped first, with its fleece-test- domains
 * (in 'global' mode also any fleece-test- domain defined in the shared /etc/libvirt/qemu).
 * Give the calling hook a timeout of 90 s or more (a cold start takes about 8 s, a warm one 0.2 s).
 * @throws Error when libvirt is not available here (the reason), or the daemon did not start (the tail of its log;
 * every later call in this run then fails at once with the same message).
 */
export async function sharedLibvirt(): Promise<LibvirtHarness> {
  const availability = libvirtAvailability();
  if (!availability.ok) throw new Error(`no libvirtd can run here: ${availability.why}`);
  const dir = runDir();
  const p = paths(dir);
  await mkdir(dir, { recursive: true, mode: 0o755 });
  const deadline = Date.now() + LOCK_WAIT_MS;
  for (;;) {
    const failed = await readText(p.error);
    if (failed !== undefined) throw new Error(failed);
    const holder = lockHolder(dir);
    if (holder === 'none') {
      const state = await readState(dir);
      if (state && alive(state.pid)) return harnessFor(dir, state.uri);
    }
    if (await tryLock(dir)) {
      try {
        const state = await readState(dir);
        if (state && alive(state.pid)) return harnessFor(dir, state.uri);
        const firstStart = !existsSync(p.log);
        let started: DaemonState;
        try {
          started = await startDaemon(dir);
        } catch (error) {
          await writeFile(p.error, errorText(error));
          throw error;
        }
        // Leftovers of an earlier run (only the shared directories of 'global' mode can hold any).
        if (firstStart && started.mode === 'global') await removeTestDomains(started.uri);
        await writeAtomic(p.state, JSON.stringify(started));
        return harnessFor(dir, started.uri);
      } finally {
        await unlock(dir);
      }
    }
    if (Date.now() > deadline) {
      throw new Error(`waited ${LOCK_WAIT_MS} ms for pid ${lockHolder(dir)} to start the shared libvirtd in ${dir}`);
    }
    await sleep(100);
  }
}

/**
 * A libvirtd of the caller's own, for a test that restarts it: restarting the shared one would break the calls
 * other test files have in flight. Needs 'private' mode (a mount namespace of its own: two system-mode daemons
 * cannot share /run/libvirt); in 'global' mode this is the shared daemon and stop() does nothing.
 * The caller must call stop() (afterAll); the suite's leftover check catches a daemon it forgot.
 */
export async function dedicatedLibvirt(label: string): Promise<LibvirtHarness & { stop(): Promise<void> }> {
  const availability = libvirtAvailability();
  if (!availability.ok) throw new Error(`no libvirtd can run here: ${availability.why}`);
  if ((await chooseMode()) !== 'private') return { ...(await sharedLibvirt()), stop: async () => undefined };
  const dir = `${runDir()}-${label}-${process.pid}`;
  await mkdir(dir, { recursive: true, mode: 0o755 });
  const started = await startDaemon(dir);
  await writeAtomic(paths(dir).state, JSON.stringify(started));
  return {
    ...harnessFor(dir, started.uri),
    stop: async () => {
      await removeTestDomains(started.uri);
      const pid = readPidFile(dir) ?? (await readState(dir))?.pid ?? started.pid;
      await killDaemon(pid);
      await rm(dir, { recursive: true, force: true });
    },
  };
}

/**
 * Destroys and undefines any fleece-test- domain, stops the shared libvirtd and removes the run directory; does
 * nothing when this run never started one. Reports problems on stderr; throws only when libvirtd survives SIGKILL.
 */
export async function stopSharedLibvirt(): Promise<void> {
  const dir = process.env[LIBVIRT_RUN_DIR_ENV];
  if (!dir || !existsSync(dir)) return;
  const stop = async (): Promise<void> => {
    const state = await readState(dir);
    const pid = readPidFile(dir) ?? state?.pid;
    if (pid === undefined || !alive(pid)) return;
    await removeTestDomains(state?.uri ?? uriFor(dir));
    await killDaemon(pid);
  };
  try {
    await withLock(dir, 30_000, stop).catch(async (error: unknown) => {
      if (!/could not lock/.test(errorText(error))) throw error;
      console.warn(`libvirt harness: ${errorText(error)}; stopping it anyway`);
      await stop();
    });
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

// ---- test domains ----------------------------------------------------------------------------------------------

type Bus = 'virtio' | 'scsi' | 'ide';

function busOf(disk: TestDiskSpec): Bus {
  if (disk.bus) return disk.bus;
  if (disk.target.startsWith('sd')) return 'scsi';
  if (disk.target.startsWith('hd')) return 'ide';
  return 'virtio';
}

/** 'none' (O_DIRECT, as production VMs run) where the file system allows it; 'writeback' where it refuses (tmpfs). */
async function cacheModeFor(path: string): Promise<'none' | 'writeback'> {
  try {
    const handle = await open(path, constants.O_RDONLY | constants.O_DIRECT);
    await handle.close();
    return 'none';
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EINVAL' ? 'writeback' : 'none';
  }
}

/** The directory of the uri's socket parameter: the run directory, for a uri the harness made. */
function socketDir(uri: string): string | undefined {
  try {
    const socket = new URL(uri).searchParams.get('socket');
    if (socket) return dirname(socket);
  } catch {
    // not a URL we made
  }
  return undefined;
}

/** The run directory (where the harness keeps serial logs). */
function harnessDir(h: LibvirtHarness): string {
  return socketDir(h.uri) ?? tmpdir();
}

/**
 * Where the test process finds a path libvirtd reports (a channel socket, a default scratch file, checkpoint
 * metadata): in 'private' mode /etc/libvirt, /run/libvirt, /var/lib/libvirt and /var/log/libvirt are the run
 * directory's copies; every other path is the same for both.
 */
export function hostPathOf(h: LibvirtHarness, daemonPath: string): string {
  const root = paths(harnessDir(h)).root;
  if (!existsSync(root)) return daemonPath;
  for (const [sub, target] of PRIVATE_DIRS) {
    if (daemonPath === target || daemonPath.startsWith(`${target}/`)) return join(root, sub, daemonPath.slice(target.length));
  }
  return daemonPath;
}

/** The domain XML for `spec` (pure); `caches[i]` is disk i's cache mode. */
export function testDomainXml(spec: TestDomainSpec, caches: string[], serialLog?: string): string {
  const e = xmlEscape;
  const disks = spec.disks.map((disk, i) => {
    const lines = [
      `    <disk type='file' device='${disk.device ?? 'disk'}'>`,
      `      <driver name='qemu' type='${disk.format}' cache='${caches[i] ?? 'none'}'/>`,
      `      <source file='${e(disk.path)}'/>`,
      `      <target dev='${e(disk.target)}' bus='${busOf(disk)}'/>`,
      ...(disk.readonly ? ['      <readonly/>'] : []),
      '    </disk>',
    ];
    return lines.join('\n');
  });
  const os = spec.os
    ? [
        `    <kernel>${e(spec.os.kernel)}</kernel>`,
        `    <initrd>${e(spec.os.initrd)}</initrd>`,
        `    <cmdline>${e(spec.os.cmdline)}</cmdline>`,
      ]
    : [];
  const serial = serialLog
    ? [`    <serial type='file'>`, `      <source path='${e(serialLog)}'/>`, '    </serial>']
    : ["    <serial type='null'/>"];
  return [
    "<domain type='qemu'>",
    `  <name>${e(spec.name)}</name>`,
    `  <memory unit='MiB'>${spec.memoryMiB ?? 256}</memory>`,
    '  <vcpu>1</vcpu>',
    '  <os>',
    "    <type arch='x86_64' machine='pc'>hvm</type>",
    ...os,
    '  </os>',
    '  <devices>',
    ...disks,
    ...(spec.disks.some((d) => busOf(d) === 'scsi') ? ["    <controller type='scsi' model='virtio-scsi'/>"] : []),
    "    <controller type='usb' model='none'/>",
    ...serial,
    ...(spec.guestAgent
      ? ["    <channel type='unix'>", "      <target type='virtio' name='org.qemu.guest_agent.0'/>", '    </channel>']
      : []),
    "    <memballoon model='none'/>",
    '  </devices>',
    '</domain>',
    '',
  ].join('\n');
}

/** The qdev path qemu-io -d takes for each disk of the live XML: virtio-blk's BlockBackend is on its virtio-backend child. */
export function qdevPaths(liveXml: string): Map<string, string> {
  const result = new Map<string, string>();
  for (const [disk] of liveXml.matchAll(/<disk\b[\s\S]*?<\/disk>/g)) {
    const target = /<target\s[^>]*dev='([^']+)'[^>]*bus='([^']+)'/.exec(disk);
    const alias = /<alias\s+name='([^']+)'/.exec(disk);
    if (!target || !alias) continue;
    const path = `/machine/peripheral/${alias[1]}`;
    result.set(target[1]!, target[2] === 'virtio' ? `${path}/virtio-backend` : path);
  }
  return result;
}

/** qemu-io commands whose completion prints a summary line ("... ops/sec)") or a "failed" line. */
const REPORTING_COMMANDS = new Set(['read', 'write', 'readv', 'writev', 'discard', 'aio_read', 'aio_write']);
const QEMU_IO_ERROR = /failed|not found|error|invalid|cannot|permission denied|read-only/i;
const QEMU_IO_DONE = /ops\/sec\)\s*$|failed[^\n]*\n/m;

/**
 * Defines (and by default starts) a test domain from `spec`: `<domain type='qemu'>`, machine pc, 1 vCPU, no NIC, no
 * graphics, no USB, no balloon; disks with cache='none', or 'writeback' where the image's file system refuses O_DIRECT.
 * @throws Error when the name lacks the fleece-test- prefix; VirshError when define or start fails (a domain that
 * was defined but did not start is undefined again).
 */
export async function defineTestDomain(h: LibvirtHarness, spec: TestDomainSpec): Promise<TestDomain> {
  if (!spec.name.startsWith(DOMAIN_PREFIX)) throw new Error(`test domain names must start with ${DOMAIN_PREFIX}: ${spec.name}`);
  const targets = spec.disks.map((d) => d.target);
  if (new Set(targets).size !== targets.length) throw new Error(`duplicate disk targets in ${targets.join(', ')}`);
  const dir = harnessDir(h);
  const serialLog = spec.os ? join(dir, `${spec.name}.serial.log`) : undefined;
  const caches = await Promise.all(spec.disks.map((d) => cacheModeFor(d.path)));
  const xml = testDomainXml(spec, caches, serialLog);
  const xmlPath = join(dir, `${spec.name}.xml`);
  await writeFile(xmlPath, xml);
  try {
    await h.virsh(['define', xmlPath]);
  } finally {
    await rm(xmlPath, { force: true });
  }

  const name = spec.name;
  const logPath = domainLogPath(dir, name);
  let qdev: Map<string, string> | undefined;
  let queue: Promise<unknown> = Promise.resolve();

  const qemuIoNow = async (target: string, command: string): Promise<string> => {
    if (command.includes('"')) throw new Error(`qemu-io command must not contain a double quote: ${command}`);
    qdev ??= qdevPaths(await h.virsh(['dumpxml', name]));
    const device = qdev.get(target);
    if (!device) {
      qdev = undefined; // not running yet, or a wrong target: look again next time
      throw new Error(`${name} has no disk ${target} in its live XML (is it running?)`);
    }
    const mark = fileSize(logPath);
    const reply = await h.virsh(['qemu-monitor-command', name, '--hmp', `qemu-io -d ${device} "${command}"`]);
    const reports = REPORTING_COMMANDS.has(command.trim().split(/\s+/)[0] ?? '');
    let out = '';
    let completed = false;
    if (reply === '') {
      // qemu-io prints to QEMU's stdout, i.e. the domain log, a moment after the HMP reply: wait for the summary.
      const deadline = Date.now() + (reports ? QEMU_IO_TIMEOUT_MS : 100);
      for (;;) {
        out = await readFrom(logPath, mark);
        completed = QEMU_IO_DONE.test(out);
        if (completed || Date.now() > deadline) break;
        await sleep(10);
      }
    }
    const problems = [reply, ...out.split('\n')].filter((line) => line.trim() !== '' && QEMU_IO_ERROR.test(line));
    if (problems.length > 0 || (reports && !completed && reply === '')) {
      const why = problems.join('; ') || `no completion in ${logPath} within ${QEMU_IO_TIMEOUT_MS} ms`;
      throw new Error(`qemu-io "${command}" on ${name} ${target} (${device}) failed: ${why}`);
    }
    return out || reply;
  };

  const domain: TestDomain = {
    name,
    xml,
    ...(serialLog ? { serialLog } : {}),
    qemuIo: (target, command) => {
      const run = queue.then(() => qemuIoNow(target, command));
      queue = run.catch(() => undefined);
      return run;
    },
    write: async (target, offset, length, pattern) => {
      if (!Number.isInteger(pattern) || pattern < 0 || pattern > 0xff) throw new RangeError(`pattern ${pattern} is not a byte`);
      const byte = `0x${pattern.toString(16).padStart(2, '0')}`;
      await domain.qemuIo(target, `write -P ${byte} ${offset} ${length}`);
    },
    remove: async () => {
      await destroyAndUndefine((args) => h.virsh(args), name);
      qdev = undefined;
      await rm(logPath, { force: true });
    },
  };

  if (spec.start ?? true) {
    try {
      await h.virsh(['start', name]);
    } catch (error) {
      await domain.remove().catch(() => undefined);
      throw error;
    }
  }
  return domain;
}

/**
 * `qemu-img create -q -f <format> <path> <size>` (size in bytes).
 * @throws Error with qemu-img's stderr when it fails.
 */
export async function createImage(path: string, format: 'qcow2' | 'raw', size: number): Promise<void> {
  await mustRun('qemu-img', ['create', '-q', '-f', format, path, String(size)]);
}

/** The run directory this process uses for the shared libvirtd (its log is `libvirtd.log` there). */
export function sharedLibvirtRunDir(): string {
  return runDir();
}
