// NBD over TLS with real peers: qemu-nbd serving with tls-creds-x509 / tls-creds-psk, and a real QEMU pull export
// (object-add + nbd-server-start tls-creds): TLS reads are byte-identical; credentials QEMU refuses (no client
// certificate, a wrong CA, an expired certificate, a wrong PSK) fail with an error that says which; a reader that
// demands TLS refuses a plaintext server; the credentials object is gone afterwards.
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { execa, type ResultPromise } from 'execa';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, open, readFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { cleanupQmpLeftovers } from '../../../src/app/jobs/recover.js';
import { startPullBackup } from '../../../src/backup/pull-backup.js';
import { CheckpointStore } from '../../../src/checkpoint/store.js';
import { NbdSource } from '../../../src/nbd/nbd-source.js';
import { NbdTlsError, type NbdTls, type NbdTlsFailure } from '../../../src/nbd/nbd-tls.js';
import { queryDisks } from '../../../src/qemu/block-graph.js';
import { useQemuSystem } from '../../harness/jest-qemu.js';
import { makeTestPki, type TestPki } from '../../harness/pki.js';
import { createDisk } from '../../harness/qemu.js';
import { makeTempDir, removeTempDir } from '../../harness/temp-dir.js';
import { leftovers } from '../backup/helpers.js';

const MiB = 1024 * 1024;
const SIZE = 8 * MiB;

let dir: string;
let pki: TestPki;
let image: string;
let imageSha: string;

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolve(port));
    });
  });
}

interface TcpNbd {
  uri: string;
  port: number;
  stderr(): string;
  stop(): Promise<void>;
}

/** qemu-nbd on 127.0.0.1 (TLS when `object` is given), resolved once it listens (its pid file is written then). */
async function serveTcp(object?: string): Promise<TcpNbd> {
  const sub = await mkdtemp(join(dir, 'srv-'));
  const port = await freePort();
  const pidFile = join(sub, 'pid');
  const args = ['-f', 'raw', '-r', '-t', '-e', '8', '-b', '127.0.0.1', '-p', String(port), '-x', 'vda', '--pid-file', pidFile];
  if (object) args.push('--object', object, '--tls-creds', 'tls0');
  args.push(image);
  const child: ResultPromise = execa('qemu-nbd', args, { reject: false, stdin: 'ignore', stdout: 'ignore', stderr: 'pipe', cwd: sub });
  let stderr = '';
  child.stderr?.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const stop = async (): Promise<void> => {
    if (child.exitCode === null) child.kill('SIGTERM');
    await child;
  };
  const deadline = Date.now() + 10_000;
  while (!existsSync(pidFile)) {
    if (child.exitCode !== null || Date.now() > deadline) {
      await stop();
      throw new Error(`qemu-nbd did not start: ${stderr}`);
    }
    await delay(20);
  }
  servers.push(stop);
  return { uri: `nbd://127.0.0.1:${port}/vda`, port, stderr: () => stderr, stop };
}

const servers: (() => Promise<void>)[] = [];
const x509Object = (serverDir: string, verifyPeer = true) => `tls-creds-x509,id=tls0,dir=${serverDir},endpoint=server,verify-peer=${verifyPeer ? 'on' : 'off'}`;

async function sha256Of(source: NbdSource): Promise<string> {
  const hash = createHash('sha256');
  for (let offset = 0; offset < source.size; offset += 2 * MiB) hash.update(await source.read(offset, Math.min(2 * MiB, source.size - offset)));
  return hash.digest('hex');
}

async function readAll(uri: string, tls?: NbdTls): Promise<string> {
  const source = await NbdSource.open({ uri }, { connections: 2, ...(tls ? { tls } : {}) });
  try {
    return await sha256Of(source);
  } finally {
    await source.close();
  }
}

/** The NbdTlsError an open fails with (the test fails when it opens, or fails otherwise). */
async function refusal(uri: string, tls?: NbdTls): Promise<NbdTlsError> {
  try {
    const source = await NbdSource.open({ uri }, { connections: 1, ...(tls ? { tls } : {}) });
    await source.close();
  } catch (error) {
    if (error instanceof NbdTlsError) return error;
    throw error;
  }
  throw new Error(`${uri} opened, but a TLS refusal was expected`);
}

function expectReason(error: NbdTlsError, reason: NbdTlsFailure, message: RegExp): void {
  if (process.env.SHOW_TLS_ERRORS) console.log(`${reason}: ${error.message}`);
  expect({ reason: error.reason, code: error.code }).toEqual({ reason, code: 'NBD' });
  expect(error.message).toMatch(message);
}

beforeAll(async () => {
  dir = await makeTempDir('nbd-tls');
  pki = await makeTestPki(join(dir, 'pki'));
  image = join(dir, 'disk.raw');
  const file = await open(image, 'w');
  await file.truncate(SIZE);
  await file.write(randomBytes(3 * MiB), 0, 3 * MiB, MiB);
  await file.close();
  imageSha = createHash('sha256').update(await readFile(image)).digest('hex');
}, 60_000);

afterAll(async () => {
  for (const stop of servers) await stop().catch(() => undefined);
  await removeTempDir(dir);
});

describe('NBD over TLS against qemu-nbd', () => {
  test('x509: a TLS read is byte-identical, over several connections', async () => {
    const server = await serveTcp(x509Object(pki.server));
    expect(await readAll(server.uri, { type: 'x509', dir: pki.client })).toBe(imageSha);
    // One directory holding both ends' files is what fleece is configured with; nbds:// asks for TLS as well.
    expect(await readAll(server.uri.replace('nbd://', 'nbds://'), { type: 'x509', dir: pki.x509 })).toBe(imageSha);
    await server.stop();
  });

  test('x509: QEMU refuses a reader without a client certificate, with an expired one, or one of another CA; the error says which', async () => {
    const server = await serveTcp(x509Object(pki.server, true));
    expectReason(await refusal(server.uri, { type: 'x509', dir: pki.clientWithoutCert }), 'client-certificate-missing', /wants a client certificate.*client-cert\.pem/);
    expectReason(await refusal(server.uri, { type: 'x509', dir: pki.clientExpired }), 'client-certificate-expired', /client-cert\.pem: it expired on .*2020/);
    expectReason(await refusal(server.uri, { type: 'x509', dir: pki.clientOtherCa }), 'client-certificate-refused', /does not trust the CA that signed it/);
    await server.stop();
    // QEMU's side of the same story (its stderr is complete once it exited).
    expect(server.stderr()).toMatch(/Verify failed|not trusted/);
    // Without verify-peer QEMU asks for no client certificate.
    const open = await serveTcp(x509Object(pki.server, false));
    expect(await readAll(open.uri, { type: 'x509', dir: pki.clientWithoutCert })).toBe(imageSha);
    await open.stop();
  });

  test('x509: the reader refuses a server whose certificate its CA did not sign (a wrong CA), unless told not to verify', async () => {
    const server = await serveTcp(x509Object(pki.server, false));
    expectReason(await refusal(server.uri, { type: 'x509', dir: pki.clientWrongCa }), 'server-certificate-untrusted', /did not verify against .*client-wrong-ca\/ca-cert\.pem/);
    expect(await readAll(server.uri, { type: 'x509', dir: pki.clientWrongCa, verifyPeer: false })).toBe(imageSha);
    await server.stop();
  });

  test('psk: the right key reads byte-identically; a wrong key or an unknown identity is refused, naming the identity and the file', async () => {
    const server = await serveTcp(`tls-creds-psk,id=tls0,dir=${pki.psk.dir},endpoint=server`);
    expect(await readAll(server.uri, { type: 'psk', file: pki.psk.file })).toBe(imageSha);
    expectReason(await refusal(server.uri, { type: 'psk', file: pki.wrongPsk.file }), 'psk-refused', /pre-shared key of identity 'fleece' from .*psk-wrong\/keys\.psk/);
    expectReason(await refusal(server.uri, { type: 'psk', file: pki.otherIdentityPsk.file }), 'psk-refused', /identity 'stranger'.*knows no such identity/);
    // An identity the reader's own file lacks fails before the server is asked.
    expectReason(await refusal(server.uri, { type: 'psk', file: pki.psk.file, username: 'nobody' }), 'credentials-unreadable', /holds no key for identity 'nobody'/);
    await server.stop();
  });

  test('a reader that demands TLS refuses a plaintext server; a plaintext reader is told the server wants TLS', async () => {
    const plain = await serveTcp();
    expectReason(await refusal(plain.uri, { type: 'x509', dir: pki.client }), 'plaintext-server', /does not offer TLS.*nothing was read in plaintext/);
    expectReason(await refusal(plain.uri, { type: 'psk', file: pki.psk.file }), 'plaintext-server', /does not offer TLS/);
    await plain.stop();
    const tls = await serveTcp(x509Object(pki.server));
    expectReason(await refusal(tls.uri), 'server-requires-tls', /requires TLS and this reader has TLS off.*--tls-dir/);
    await tls.stop();
  });

  test('missing credentials are refused before connecting', async () => {
    await expect(NbdSource.open({ uri: 'nbd://127.0.0.1:1/vda' }, { tls: { type: 'x509', dir: join(dir, 'nowhere') } })).rejects.toThrow(
      /CA certificate .*nowhere\/ca-cert\.pem/,
    );
    await expect(NbdSource.open({ uri: 'nbd://127.0.0.1:1/vda' }, { tls: { type: 'psk', file: join(dir, 'none.psk') } })).rejects.toThrow(
      /cannot read the TLS PSK file .*psktool/,
    );
  });
});

describe('NBD over TLS from a real QEMU pull export', () => {
  const fixture = useQemuSystem(async (qemuDir) => {
    await createDisk(join(qemuDir, 'vda.qcow2'), { size: SIZE });
    return { disks: [{ path: join(qemuDir, 'vda.qcow2'), target: 'vda' }] };
  });

  async function tlsObjects(): Promise<string[]> {
    const objects = await fixture.qemu.client.execute<{ name: string; type: string }[]>('qom-list', { path: '/objects' });
    return objects.filter((o) => o.type.includes('tls-creds')).map((o) => o.name);
  }

  test.each([
    ['x509', (p: TestPki): NbdTls => ({ type: 'x509', dir: p.x509 })],
    ['psk', (p: TestPki): NbdTls => ({ type: 'psk', file: p.psk.file })],
  ])('%s: the export reads byte-identically over TLS, plaintext is refused, and finish removes the credentials object', async (_kind, tlsOf) => {
    const { qemu } = fixture;
    await qemu.guestWrite('vda', 'write -P 0x5c 1M 2M');
    await qemu.guestWrite('vda', 'flush');
    const vda = (await queryDisks(qemu.client)).find((d) => d.target === 'vda')!;
    const tls = tlsOf(pki);
    const port = await freePort();
    const session = await startPullBackup({
      vm: 'vm1',
      qmp: qemu.client,
      disks: [{ disk: vda }],
      scratchDir: join(fixture.dir, 'scratch'),
      server: { type: 'tcp', host: '127.0.0.1', port },
      tls,
    });
    const [exp] = session.exports;
    expect(exp).toMatchObject({ uri: `nbds://127.0.0.1:${port}/vda`, tls });
    expect(await tlsObjects()).toHaveLength(1);
    const expected = createHash('sha256');
    const pattern = Buffer.alloc(SIZE);
    pattern.fill(0x5c, MiB, 3 * MiB);
    expected.update(pattern);
    // The guest overwrites after the point in time; the TLS export still shows the old data.
    await qemu.guestWrite('vda', 'write -P 0x11 1M 64k');
    expect(await readAll(exp.uri, exp.tls)).toBe(expected.digest('hex'));
    expectReason(await refusal(exp.uri.replace('nbds://', 'nbd://')), 'server-requires-tls', /requires TLS/);
    if (tls.type === 'x509') {
      expectReason(await refusal(exp.uri, { type: 'x509', dir: pki.clientWithoutCert }), 'client-certificate-missing', /client-cert\.pem/);
    } else {
      expectReason(await refusal(exp.uri, { type: 'psk', file: pki.wrongPsk.file }), 'psk-refused', /keys\.psk/);
    }
    await session.finish();
    expect(await tlsObjects()).toEqual([]);
    expect(await leftovers(qemu.client)).toMatchObject({ fleeceNodes: [], jobs: [], exports: [] });
  });

  test('a job whose fleece died: the cleanup after it (daemon restart, journal) removes the TLS object as well', async () => {
    const { qemu } = fixture;
    const vda = (await queryDisks(qemu.client)).find((d) => d.target === 'vda')!;
    const session = await startPullBackup({
      vm: 'vm1',
      qmp: qemu.client,
      disks: [{ disk: vda }],
      scratchDir: join(fixture.dir, 'scratch'),
      server: { type: 'tcp', host: '127.0.0.1', port: await freePort() },
      tls: { type: 'x509', dir: pki.x509 },
      tag: 'dead01',
    });
    expect(await tlsObjects()).toEqual(['fl-dead01-tls']);
    // As if the process had been killed here: nothing of the session's own teardown runs.
    const report = await cleanupQmpLeftovers('vm1', { tag: 'dead01', nbdServer: true }, qemu.client, new CheckpointStore(join(fixture.dir, 'state')));
    expect(report.failures).toEqual([]);
    expect(report.cleaned).toContain('TLS credentials fl-dead01-tls');
    expect(await tlsObjects()).toEqual([]);
    expect(await leftovers(qemu.client)).toMatchObject({ fleeceNodes: [], jobs: [], exports: [] });
    await session.abort().catch(() => undefined);
  });

  test('credentials QEMU cannot load fail the start with the directory named, and nothing stays', async () => {
    const { qemu } = fixture;
    const vda = (await queryDisks(qemu.client)).find((d) => d.target === 'vda')!;
    await expect(
      startPullBackup({
        vm: 'vm1',
        qmp: qemu.client,
        disks: [{ disk: vda }],
        scratchDir: join(fixture.dir, 'scratch'),
        server: { type: 'tcp', host: '127.0.0.1', port: await freePort() },
        tls: { type: 'x509', dir: pki.client },
      }),
    ).rejects.toThrow(/QEMU cannot use the NBD TLS credentials in .*\/client: .*server-cert\.pem/);
    expect(await tlsObjects()).toEqual([]);
    expect(await leftovers(qemu.client)).toMatchObject({ fleeceNodes: [], jobs: [], exports: [] });
    await expect(
      startPullBackup({
        vm: 'vm1',
        qmp: qemu.client,
        disks: [{ disk: vda }],
        scratchDir: join(fixture.dir, 'scratch'),
        server: { type: 'tcp', host: '127.0.0.1', port: await freePort() },
        tls: { type: 'psk', file: join(pki.root, 'psk', 'other-name.psk') },
      }),
    ).rejects.toThrow(/QEMU reads the pre-shared keys from a file called keys\.psk/);
  });
});
