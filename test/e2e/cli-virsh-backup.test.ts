// virsh's backup-begin / domjobinfo / domjobabort / backup-dumpxml as a user runs them: the built CLI as a child
// process, real QEMU, no fleeced running (the CLI starts a private one for the job), nbdcopy as the external reader.
import { afterEach, beforeAll, afterAll, describe, expect, test } from '@jest/globals';
import { execa } from 'execa';
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { CLI } from './helpers.js';
import { useQemuSystem } from '../harness/jest-qemu.js';
import { createDisk } from '../harness/qemu.js';
import { makeTempDir, removeTempDir } from '../harness/temp-dir.js';
import { leftovers, sameContent, sha256File, snapshotRaw } from '../integration/backup/helpers.js';

const root = process.cwd();
const MiB = 1024 * 1024;



const fixture = useQemuSystem(async (dir) => {
  await createDisk(join(dir, 'vda.qcow2'), { size: 32 * MiB });
  return { extraQmpSockets: 1, disks: [{ path: join(dir, 'vda.qcow2'), target: 'vda' }] };
});

let home: string;
let cli: string;
const daemonPids = new Set<number>();

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

async function fleece(...args: string[]): Promise<Run> {
  const result = await execa(process.execPath, [cli, ...args], {
    reject: false,
    stripFinalNewline: false,
    env: {
      FLEECE_STATE_DIR: join(home, 'state'),
      FLEECE_CONFIG_DIR: join(home, 'config'),
      FLEECE_RUN_DIR: join(home, 'run'),
      FLEECE_DAEMON_SOCKET: join(home, 'run', 'fleeced.sock'),
    },
  });
  const run = { code: result.exitCode ?? -1, stdout: String(result.stdout), stderr: String(result.stderr) };
  const pid = /private fleeced \(pid (\d+)/.exec(run.stderr)?.[1];
  if (pid) daemonPids.add(Number(pid));
  return run;
}

async function ok(...args: string[]): Promise<string> {
  const run = await fleece(...args, '--qmp', fixture.qemu.extraQmpPaths[0]!);
  expect({ code: run.code, stderr: run.code === 0 ? '' : run.stderr }).toEqual({ code: 0, stderr: '' });
  return run.stdout;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Waits for the private daemons to exit by themselves (they idle out 5 s after the job). */
async function daemonsGone(timeoutMs = 15_000): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while ([...daemonPids].some(alive)) {
    if (Date.now() > deadline) return false;
    await delay(200);
  }
  return true;
}

beforeAll(async () => {
  home = await makeTempDir('cli-virsh-backup');
  cli = CLI;
});
afterEach(async () => {
  // A failed test must not leave a daemon behind.
  for (const pid of daemonPids) if (alive(pid)) process.kill(pid, 'SIGKILL');
  daemonPids.clear();
  await rm(join(home, 'state'), { recursive: true, force: true });
});
afterAll(async () => {
  await removeTempDir(home);
});

async function fill(): Promise<void> {
  await fixture.qemu.guestWrite('vda', 'write -P 0x11 0 4M');
  await fixture.qemu.guestWrite('vda', 'write -P 0x22 20M 2M');
  await fixture.qemu.guestWrite('vda', 'flush');
}

describe('fleece backup-begin and the job verbs (no fleeced running)', () => {
  test('pull: nbdcopy reads the disk as it was at backup-begin while the guest writes; domjobabort ends it and nothing is left', async () => {
    await mkdir(join(home, 'run'), { recursive: true });
    await fill();
    const reference = join(fixture.dir, 'reference.raw');
    await snapshotRaw(join(fixture.dir, 'vda.qcow2'), reference);
    const socket = join(home, 'run', 'vm1-nbd.sock');
    const xml = join(home, 'pull.xml');
    await writeFile(
      xml,
      `<domainbackup mode='pull'>
  <server transport='unix' socket='${socket}'/>
  <disks>
    <disk name='vda' backup='yes' type='file'>
      <scratch file='${join(fixture.dir, 'scratch-vda.qcow2')}'/>
    </disk>
  </disks>
</domainbackup>
`,
    );
    const begin = await fleece('backup-begin', 'vm1', xml, '--qmp', fixture.qemu.extraQmpPaths[0]!);
    expect({ code: begin.code, stdout: begin.stdout }).toEqual({ code: 0, stdout: 'Backup started\n' });
    expect(begin.stderr).toContain(`nbd+unix:///vda?socket=${socket}`);
    expect(daemonPids.size).toBe(1);

    // The guest overwrites the start of the disk while the export is up.
    await fixture.qemu.guestWrite('vda', 'write -P 0x55 0 1M');
    await fixture.qemu.guestWrite('vda', 'write -P 0x66 20M 64k');
    const out = join(fixture.dir, 'out.raw');
    await execa('nbdcopy', [`nbd+unix:///vda?socket=${socket}`, out]);
    expect(await sha256File(out)).toBe(await sha256File(reference));

    const info = await ok('domjobinfo', 'vm1');
    expect(info).toMatch(/^Job type: {9}Unbounded {3}\nOperation: {8}Backup {6}\nTime elapsed: {5}\d+ +ms\n/);
    expect(info).toContain('File total:       32.000 MiB\n');
    expect(await ok('backup-dumpxml', 'vm1')).toContain(`<server transport='unix' socket='${socket}'/>`);
    // A second backup of the same VM is refused while this one runs.
    const second = await fleece('backup-begin', 'vm1', '--qmp', fixture.qemu.extraQmpPaths[0]!);
    expect(second.code).toBe(1);
    expect(second.stderr).toContain('already running');

    expect((await fleece('domjobabort', 'vm1', '--qmp', fixture.qemu.extraQmpPaths[0]!)).code).toBe(0);
    expect(await leftovers(fixture.qemu.client)).toEqual({ fleeceNodes: [], jobs: [], exports: [], bitmaps: { vda: [] } });
    expect((await execa('nbdinfo', [`nbd+unix:///vda?socket=${socket}`], { reject: false })).exitCode).not.toBe(0);
    expect(existsSync(socket)).toBe(false);
    // QEMU's NBD server is stopped too (stopping it again is refused).
    await expect(fixture.qemu.client.execute('nbd-server-stop')).rejects.toThrow();
    expect(await daemonsGone()).toBe(true);
    expect(existsSync(join(home, 'run', 'fleeced.sock'))).toBe(false);
    // Nor its registry copy (vms.json) nor its log (issue 14, item 9).
    expect(existsSync(join(home, 'run', 'fleeced-private'))).toBe(false);
    expect(existsSync(join(home, 'run', 'fleeced-private.log'))).toBe(false);
    // The job's record outlives the daemon: domjobinfo --completed reads it.
    expect(await ok('domjobinfo', 'vm1', '--completed')).toMatch(/^Job type: {9}Cancelled {3}\nOperation: {8}Backup {6}\n/);
    expect(await ok('domjobinfo', 'vm1')).toBe('Job type:         None        \n');
  }, 120_000);

  test('push: a full backup to a target file equals the disk, creates the checkpoint, and domjobinfo --completed shows it', async () => {
    await fill();
    const reference = join(fixture.dir, 'reference.raw');
    await snapshotRaw(join(fixture.dir, 'vda.qcow2'), reference);
    const target = join(fixture.dir, 'full.qcow2');
    const xml = join(home, 'push.xml');
    await writeFile(
      xml,
      `<domainbackup mode='push'><disks><disk name='vda' backup='yes' type='file'><target file='${target}'/><driver type='qcow2'/></disk></disks></domainbackup>`,
    );
    const cpXml = join(home, 'cp.xml');
    await writeFile(cpXml, '<domaincheckpoint><name>full1</name></domaincheckpoint>');
    const begin = await fleece('backup-begin', 'vm1', xml, cpXml, '--qmp', fixture.qemu.extraQmpPaths[0]!);
    expect({ code: begin.code, stdout: begin.stdout }).toEqual({ code: 0, stdout: 'Backup started\n' });
    // Writes after the start are not in the backup.
    await fixture.qemu.guestWrite('vda', 'write -P 0x77 0 1M');

    let completed = '';
    const deadline = Date.now() + 60_000;
    while (!/^Job type: +Completed/.test(completed)) {
      if (Date.now() > deadline) throw new Error(`the push job did not complete: ${completed}`);
      await delay(200);
      completed = await ok('domjobinfo', 'vm1', '--completed');
      expect(completed).not.toMatch(/Failed|Cancelled/);
    }
    expect(completed).toMatch(/File processed: +\S+ \S+\nFile remaining: +0\.000 B\nFile total: +32\.000 MiB\n/);
    const compare = await sameContent(reference, target);
    expect(compare).toEqual({ same: true, output: expect.any(String) });
    expect(await daemonsGone()).toBe(true);
    expect(await ok('checkpoint-list', 'vm1', '--name')).toBe('full1\n\n');
    expect(await leftovers(fixture.qemu.client)).toEqual({ fleeceNodes: [], jobs: [], exports: [], bitmaps: { vda: ['full1'] } });
  }, 120_000);

  test('bad input exits 2 before anything starts: unknown VM, missing file, malformed XML', async () => {
    const qmp = fixture.qemu.extraQmpPaths[0]!;
    const unknown = await fleece('backup-begin', 'ghostvm');
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toMatch(/VM 'ghostvm' is not registered.*--qmp/);
    const jobOfUnknown = await fleece('domjobinfo', 'ghostvm');
    expect(jobOfUnknown.code).toBe(2);

    const missing = await fleece('backup-begin', 'vm1', join(home, 'nothere.xml'), '--qmp', qmp);
    expect(missing.code).toBe(2);
    expect(missing.stderr).toContain(`cannot read the backup XML file '${join(home, 'nothere.xml')}': no such file`);

    const bad = join(home, 'bad-backup.xml');
    await writeFile(bad, "<domainbackup mode='push'><disks><disk name='vda' backup='yes'><target/></disk></disks></domainbackup>");
    const malformed = await fleece('backup-begin', 'vm1', bad, '--qmp', qmp);
    expect(malformed.code).toBe(2);
    expect(malformed.stderr).toContain(`the backup XML file '${bad}' is not valid`);

    const notXml = join(home, 'not.xml');
    await writeFile(notXml, 'this is not xml <<<');
    const garbage = await fleece('backup-begin', 'vm1', notXml, '--qmp', qmp);
    expect(garbage.code).toBe(2);
    expect(garbage.stderr).toContain(`'${notXml}'`);

    const noJob = await fleece('domjobabort', 'vm1', '--qmp', qmp);
    expect(noJob.code).toBe(1);
    expect(noJob.stderr).toContain("VM 'vm1' has no active backup job");
    // None of these started a daemon or touched QEMU.
    expect(daemonPids.size).toBe(0);
    expect(existsSync(join(home, 'run', 'fleeced.sock'))).toBe(false);
    expect(await leftovers(fixture.qemu.client)).toEqual({ fleeceNodes: [], jobs: [], exports: [], bitmaps: { vda: [] } });
  }, 60_000);
});
