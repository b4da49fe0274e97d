// backup-begin with <server transport='tcp' … tls='yes'/>, as a user runs it: the built CLI (a private fleeced for
// the job), real QEMU, the TLS credentials given by --tls-dir / --tls-psk or the VM's registry entry. The export
// reads byte-identically over TLS (fleece's reader and nbdinfo), plaintext is refused, domjobabort removes the
// credentials object from QEMU, and TLS without credentials is bad input.
import { afterAll, afterEach, beforeAll, describe, expect, test } from '@jest/globals';
import { execa } from 'execa';
import { createHash } from 'node:crypto';
import { mkdir, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { NbdSource } from '../../src/nbd/nbd-source.js';
import { NbdTlsError, type NbdTls } from '../../src/nbd/nbd-tls.js';
import { CLI } from './helpers.js';
import { useQemuSystem } from '../harness/jest-qemu.js';
import { makeTestPki, type TestPki } from '../harness/pki.js';
import { createDisk } from '../harness/qemu.js';
import { makeTempDir, removeTempDir } from '../harness/temp-dir.js';
import { leftovers, sha256File, snapshotRaw } from '../integration/backup/helpers.js';

const MiB = 1024 * 1024;

const fixture = useQemuSystem(async (dir) => {
  await createDisk(join(dir, 'vda.qcow2'), { size: 16 * MiB });
  return { extraQmpSockets: 1, disks: [{ path: join(dir, 'vda.qcow2'), target: 'vda' }] };
});

let home: string;
let pki: TestPki;
const daemonPids = new Set<number>();

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

async function fleece(...args: string[]): Promise<Run> {
  const result = await execa(process.execPath, [CLI, ...args], {
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

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

async function daemonsGone(timeoutMs = 15_000): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while ([...daemonPids].some(alive)) {
    if (Date.now() > deadline) return false;
    await delay(200);
  }
  return true;
}

async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

async function pullXml(port: number, tls: string): Promise<string> {
  const xml = join(home, `pull-${port}.xml`);
  await writeFile(
    xml,
    `<domainbackup mode='pull'>
  <server transport='tcp' name='127.0.0.1' port='${port}'${tls}/>
  <disks>
    <disk name='vda' backup='yes' type='file'>
      <scratch file='${join(fixture.dir, `scratch-${port}.qcow2`)}'/>
    </disk>
  </disks>
</domainbackup>
`,
  );
  return xml;
}

async function readSha(uri: string, tls?: NbdTls): Promise<string> {
  const source = await NbdSource.open({ uri }, { connections: 2, ...(tls ? { tls } : {}) });
  try {
    const hash = createHash('sha256');
    for (let offset = 0; offset < source.size; offset += 4 * MiB) hash.update(await source.read(offset, Math.min(4 * MiB, source.size - offset)));
    return hash.digest('hex');
  } finally {
    await source.close();
  }
}

async function tlsReason(uri: string, tls?: NbdTls): Promise<string> {
  try {
    await (await NbdSource.open({ uri }, { connections: 1, ...(tls ? { tls } : {}) })).close();
    return 'opened';
  } catch (error) {
    return error instanceof NbdTlsError ? error.reason : String(error);
  }
}

async function tlsObjects(): Promise<string[]> {
  const objects = await fixture.qemu.client.execute<{ name: string; type: string }[]>('qom-list', { path: '/objects' });
  return objects.filter((o) => o.type.includes('tls-creds')).map((o) => o.name);
}

beforeAll(async () => {
  home = await makeTempDir('cli-virsh-tls');
  pki = await makeTestPki(join(home, 'pki'));
}, 60_000);
afterEach(async () => {
  for (const pid of daemonPids) if (alive(pid)) process.kill(pid, 'SIGKILL');
  daemonPids.clear();
  await rm(join(home, 'state'), { recursive: true, force: true });
  await rm(join(home, 'config'), { recursive: true, force: true });
});
afterAll(async () => {
  await removeTempDir(home);
});

describe("fleece backup-begin with <server transport='tcp' tls='yes'>", () => {
  test('--tls-dir: the export reads byte-identically over TLS, plaintext is refused, domjobabort leaves nothing', async () => {
    await mkdir(join(home, 'run'), { recursive: true });
    const qmp = fixture.qemu.extraQmpPaths[0]!;
    await fixture.qemu.guestWrite('vda', 'write -P 0x3c 0 3M');
    await fixture.qemu.guestWrite('vda', 'flush');
    const reference = join(fixture.dir, 'reference.raw');
    await snapshotRaw(join(fixture.dir, 'vda.qcow2'), reference);
    const port = await freePort();
    const begin = await fleece('backup-begin', 'vm1', await pullXml(port, " tls='yes'"), '--qmp', qmp, '--tls-dir', pki.x509);
    expect({ code: begin.code, stdout: begin.stdout, stderr: begin.code === 0 ? '' : begin.stderr }).toEqual({ code: 0, stdout: 'Backup started\n', stderr: '' });
    const uri = `nbds://127.0.0.1:${port}/vda`;
    expect(begin.stderr).toContain(`disk vda: ${uri} (context base:allocation)`);

    await fixture.qemu.guestWrite('vda', 'write -P 0x77 0 1M');
    expect(await readSha(uri, { type: 'x509', dir: pki.client })).toBe(await sha256File(reference));
    // An external reader (libnbd's nbdinfo) with the client certificates reads it too; without TLS, or without a
    // client certificate, QEMU refuses.
    const size = await execa('nbdinfo', ['--size', `${uri}?tls-certificates=${pki.client}`]);
    expect(size.stdout.trim()).toBe(String(16 * MiB));
    expect(await tlsReason(`nbd://127.0.0.1:${port}/vda`)).toBe('server-requires-tls');
    expect(await tlsReason(uri, { type: 'x509', dir: pki.clientWithoutCert })).toBe('client-certificate-missing');
    expect(await tlsObjects()).toHaveLength(1);
    const dump = await fleece('backup-dumpxml', 'vm1', '--qmp', qmp);
    expect(dump.stdout).toContain(`<server transport='tcp' name='127.0.0.1' port='${port}' tls='yes'/>`);

    expect((await fleece('domjobabort', 'vm1', '--qmp', qmp)).code).toBe(0);
    expect(await tlsObjects()).toEqual([]);
    expect(await leftovers(fixture.qemu.client)).toEqual({ fleeceNodes: [], jobs: [], exports: [], bitmaps: { vda: [] } });
    await expect(fixture.qemu.client.execute('nbd-server-stop')).rejects.toThrow();
    expect(await daemonsGone()).toBe(true);
  }, 120_000);

  test('a VM registered with --tls-psk gets TLS on tcp without tls=; TLS with no credentials is bad input (exit 2)', async () => {
    await mkdir(join(home, 'run'), { recursive: true });
    const qmp = fixture.qemu.extraQmpPaths[0]!;
    const noCreds = await fleece('backup-begin', 'vm1', await pullXml(await freePort(), " tls='yes'"), '--qmp', qmp);
    expect({ code: noCreds.code, stderr: noCreds.stderr }).toMatchObject({ code: 2 });
    expect(noCreds.stderr).toMatch(/NBD over TLS .* needs TLS credentials and none are configured.*--tls-dir/);
    const both = await fleece('backup-begin', 'vm1', await pullXml(await freePort(), ''), '--qmp', qmp, '--tls-dir', pki.x509, '--tls-psk', pki.psk.file);
    expect(both.code).toBe(2);
    expect(both.stderr).toMatch(/not both/);
    expect(await daemonsGone()).toBe(true);

    expect((await fleece('vm', 'add', 'vm1', '--qmp', qmp, '--tls-psk', pki.psk.file)).code).toBe(0);
    const port = await freePort();
    const begin = await fleece('backup-begin', 'vm1', await pullXml(port, ''));
    expect(begin.code).toBe(0);
    const uri = `nbds://127.0.0.1:${port}/vda`;
    expect(begin.stderr).toContain(uri);
    expect(await readSha(uri, { type: 'psk', file: pki.psk.file })).toMatch(/^[0-9a-f]{64}$/);
    expect(await tlsReason(uri, { type: 'psk', file: pki.wrongPsk.file })).toBe('psk-refused');
    expect(await tlsReason(`nbd://127.0.0.1:${port}/vda`)).toBe('server-requires-tls');
    expect((await fleece('domjobabort', 'vm1')).code).toBe(0);
    expect(await tlsObjects()).toEqual([]);
    expect(await daemonsGone()).toBe(true);
  }, 120_000);
});
