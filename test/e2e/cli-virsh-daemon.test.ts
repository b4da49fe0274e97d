// With a fleeced answering on the socket, every virsh verb goes through it (it owns the QMP socket): the built CLI
// as a child process, a real fleeced and real QEMU.
import { afterEach, afterAll, beforeAll, beforeEach, describe, expect, test } from '@jest/globals';
import { execa, type ResultPromise } from 'execa';
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { DaemonClient, detectDaemon } from '../../src/cli/daemon-client.js';
import { CLI } from './helpers.js';
import { useQemuSystem } from '../harness/jest-qemu.js';
import { createDisk } from '../harness/qemu.js';
import { makeTempDir, removeTempDir } from '../harness/temp-dir.js';
import { leftovers } from '../integration/backup/helpers.js';

const root = process.cwd();
const MiB = 1024 * 1024;


const daemonMain = join(root, 'dist/src/daemon/main.js');

const fixture = useQemuSystem(async (dir) => {
  await createDisk(join(dir, 'vda.qcow2'), { size: 16 * MiB });
  return { extraQmpSockets: 1, disks: [{ path: join(dir, 'vda.qcow2'), target: 'vda' }] };
});

let home: string;
let cli: string;
let daemon: ResultPromise | undefined;
let client: DaemonClient;
const socket = () => join(home, 'run', 'fleeced.sock');

async function fleece(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const result = await execa(process.execPath, [cli, ...args], {
    reject: false,
    stripFinalNewline: false,
    env: {
      FLEECE_STATE_DIR: join(home, 'state'),
      FLEECE_CONFIG_DIR: join(home, 'config'),
      FLEECE_RUN_DIR: join(home, 'run'),
      FLEECE_DAEMON_SOCKET: socket(),
    },
  });
  return { code: result.exitCode ?? -1, stdout: String(result.stdout), stderr: String(result.stderr) };
}

async function ok(...args: string[]): Promise<string> {
  const run = await fleece(...args);
  expect({ code: run.code, stderr: run.stderr }).toEqual({ code: 0, stderr: '' });
  return run.stdout;
}

beforeAll(async () => {
  home = await makeTempDir('cli-virsh-daemon');
  cli = CLI;
});
afterAll(async () => {
  await removeTempDir(home);
});
beforeEach(async () => {
  // Each test has its own QEMU (another QMP path): start from an empty registry and state.
  for (const sub of ['config', 'state']) await rm(join(home, sub), { recursive: true, force: true });
  await mkdir(join(home, 'run'), { recursive: true });
  daemon = execa(process.execPath, [
    daemonMain, '--socket', socket(), '--state-dir', join(home, 'state'), '--config-dir', join(home, 'config'),
    '--run-dir', join(home, 'run'), '--log-level', 'warn',
  ], { reject: false, stdin: 'ignore', stdout: 'ignore', stderr: 'pipe' });
  const deadline = Date.now() + 20_000;
  for (;;) {
    const found = await detectDaemon(socket(), { timeoutMs: 500 });
    if (found) {
      client = found;
      break;
    }
    if (daemon.exitCode !== null && daemon.exitCode !== undefined) throw new Error('fleeced exited at start');
    if (Date.now() > deadline) throw new Error('fleeced did not answer');
    await delay(50);
  }
});
afterEach(async () => {
  if (daemon) {
    daemon.kill('SIGTERM');
    const timer = setTimeout(() => daemon?.kill('SIGKILL'), 10_000);
    await daemon;
    clearTimeout(timer);
    daemon = undefined;
  }
});

describe('fleece virsh verbs through a running fleeced', () => {
  test('checkpoint verbs register the --qmp VM with the daemon and run through it', async () => {
    const qmp = fixture.qemu.extraQmpPaths[0]!;
    expect(await ok('checkpoint-create-as', 'vm1', 'cp1', 'base', '--qmp', qmp)).toBe('Domain checkpoint cp1 created\n');
    expect(await client.listVms()).toEqual([{ name: 'vm1', qmp }]);
    // Registered now: no --qmp needed any more.
    await ok('checkpoint-create-as', 'vm1', 'cp2');
    await ok('checkpoint-create-as', 'vm1', 'cp3');
    expect(await ok('checkpoint-list', 'vm1', '--tree')).toBe('cp1\n  |\n  +- cp2\n      |\n      +- cp3\n        \n\n');
    expect(await ok('checkpoint-dumpxml', 'vm1', 'cp1', '--no-domain')).toMatch(/^<domaincheckpoint>\n  <name>cp1<\/name>\n  <description>base<\/description>\n  <creationTime>\d+<\/creationTime>\n/);
    await fixture.qemu.guestWrite('vda', 'write -P 0x33 1M 64k');
    expect(await ok('checkpoint-dumpxml', 'vm1', 'cp3', '--size')).toContain("bitmap='cp3' size='65536'");
    expect(await ok('checkpoint-delete', 'vm1', 'cp2')).toBe('Domain checkpoint cp2 deleted\n\n');
    expect(await ok('checkpoint-list', 'vm1', '--tree')).toBe('cp1\n  |\n  +- cp3\n    \n\n');
    expect((await client.checkpoints('vm1')).checkpoints.map((c) => [c.name, c.parent])).toEqual([['cp1', null], ['cp3', 'cp1']]);
    // A --qmp that contradicts the daemon's registration is bad input.
    const other = await fleece('checkpoint-list', 'vm1', '--qmp', fixture.qemu.qmpPath);
    expect(other.code).toBe(2);
    expect(other.stderr).toContain(`registered with fleeced (${socket()}) with QMP socket ${qmp}`);
    const unknown = await fleece('checkpoint-list', 'vm9');
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toMatch(/VM 'vm9' is not registered with fleeced.*--qmp/);
  }, 60_000);

  test('backup-begin (default full pull), domjobinfo, domjobabort through the running daemon, which keeps running', async () => {
    const qmp = fixture.qemu.extraQmpPaths[0]!;
    await fixture.qemu.guestWrite('vda', 'write -P 0x11 0 2M');
    const begin = await fleece('backup-begin', 'vm1', '--qmp', qmp, '--json');
    expect(begin.code).toBe(0);
    const { job } = JSON.parse(begin.stdout) as { job: { id: string; kind: string; state: string; disks: { disk: string; export?: { uri: string } }[] } };
    expect(begin.stderr).not.toContain('private fleeced');
    expect(job).toMatchObject({ kind: 'pull', state: 'ready' });
    const uri = job.disks.find((d) => d.disk === 'vda')?.export?.uri;
    expect(uri).toMatch(/^nbd\+unix:\/\/\/vda\?socket=/);
    const size = await execa('nbdinfo', ['--size', uri!]);
    expect(size.stdout.trim()).toBe(String(16 * MiB));
    expect(await ok('domjobinfo', 'vm1')).toMatch(/^Job type: {9}Unbounded {3}\nOperation: {8}Backup/);
    expect(await ok('backup-dumpxml', 'vm1')).toContain("<domainbackup mode='pull'>");
    expect((await fleece('domjobabort', 'vm1')).code).toBe(0);
    expect(await ok('domjobinfo', 'vm1')).toBe('Job type:         None        \n');
    expect(await ok('domjobinfo', 'vm1', '--completed')).toMatch(/^Job type: {9}Cancelled/);
    expect(await leftovers(fixture.qemu.client)).toEqual({ fleeceNodes: [], jobs: [], exports: [], bitmaps: { vda: [] } });
    // The shared daemon is still there.
    expect((await client.health()).pid).toBe(daemon?.pid);
  }, 60_000);
});
