// fleeced's TCP API over HTTPS as a process: a self-signed certificate, TLS 1.2 or newer, 401 without the bearer
// token and 200 with it, plain HTTP refused on that port and at start (unless explicitly allowed on loopback), and the
// unix socket still mode 0600.
import { afterAll, afterEach, beforeAll, describe, expect, test } from '@jest/globals';
import { readFileSync } from 'node:fs';
import { stat, writeFile } from 'node:fs/promises';
import http from 'node:http';
import https from 'node:https';
import { createServer } from 'node:net';
import { join } from 'node:path';
import type { TLSSocket } from 'node:tls';
import { makeTestPki, type TestPki } from '../harness/pki.js';
import { makeTempDir, removeTempDir } from '../harness/temp-dir.js';
import { daemonDirs, runDaemonExpectingFailure, startDaemonProcess, type DaemonProcess } from '../integration/daemon/daemon-process.js';

const TOKEN = 'a-long-secret-token-0123456789abcdef';

let dir: string;
let pki: TestPki;
let tokenFile: string;
let daemon: DaemonProcess | undefined;

async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

interface Reply {
  status: number;
  body: unknown;
  protocol: string | null;
}

function httpsGet(port: number, path: string, headers: Record<string, string> = {}, tls: https.RequestOptions = {}): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = https.request(
      { host: '127.0.0.1', port, path, method: 'GET', headers, ca: readFileSync(pki.selfSigned.cert), servername: 'localhost', ...tls },
      (res) => {
        let text = '';
        const protocol = (res.socket as TLSSocket).getProtocol();
        res.setEncoding('utf8');
        res.on('data', (chunk: string) => (text += chunk));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body: text ? JSON.parse(text) : undefined, protocol }));
      },
    );
    req.on('error', reject);
    req.end();
  });
}

/** A plain HTTP request; resolves with the status, or with the error's code when no HTTP reply came. */
function plainGet(port: number, path: string, headers: Record<string, string> = {}): Promise<{ status?: number; error?: string }> {
  return new Promise((resolve) => {
    const req = http.request({ host: '127.0.0.1', port, path, method: 'GET', headers, timeout: 5000 }, (res) => {
      res.resume();
      res.on('end', () => resolve({ status: res.statusCode ?? 0 }));
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', (error: NodeJS.ErrnoException) => resolve({ error: error.code ?? error.message }));
    req.end();
  });
}

beforeAll(async () => {
  dir = await makeTempDir('fleeced-https');
  pki = await makeTestPki(join(dir, 'pki'));
  tokenFile = join(dir, 'token');
  await writeFile(tokenFile, `${TOKEN}\n`, { mode: 0o600 });
}, 60_000);

afterEach(async () => {
  await daemon?.stop();
  daemon = undefined;
});

afterAll(async () => {
  await removeTempDir(dir);
});

describe('fleeced over HTTPS', () => {
  test('a self-signed certificate: 401 without the token, 200 with it, TLS 1.2+; plaintext refused on that port; the socket is 0600', async () => {
    const port = await freePort();
    const dirs = daemonDirs(join(dir, 'a'));
    daemon = await startDaemonProcess(dirs, ['--tcp', `127.0.0.1:${port}`, '--token-file', tokenFile, '--tls-cert', pki.selfSigned.cert, '--tls-key', pki.selfSigned.key]);

    const anonymous = await httpsGet(port, '/v1/health');
    expect(anonymous.status).toBe(401);
    expect(anonymous.body).toMatchObject({ error: { code: 'UNAUTHORIZED' } });
    expect((await httpsGet(port, '/v1/health', { authorization: `Bearer ${TOKEN}x` })).status).toBe(401);
    expect((await httpsGet(port, '/v1/health', { authorization: `Bearer ${TOKEN.slice(1)}` })).status).toBe(401);
    const authorized = await httpsGet(port, '/v1/health', { authorization: `Bearer ${TOKEN}` });
    expect(authorized.status).toBe(200);
    expect(authorized.body).toMatchObject({ pid: daemon.proc.pid });
    expect(['TLSv1.2', 'TLSv1.3']).toContain(authorized.protocol);

    // A client that will not go above TLS 1.1 gets no connection; one that does not trust the certificate neither.
    await expect(httpsGet(port, '/v1/health', {}, { maxVersion: 'TLSv1.1', minVersion: 'TLSv1' })).rejects.toThrow();
    await expect(httpsGet(port, '/v1/health', {}, { ca: readFileSync(join(pki.root, 'make', 'ca2-cert.pem')) })).rejects.toThrow(/self.signed|certificate/);

    // Plain HTTP on the HTTPS port: no HTTP reply at all, with or without the token.
    const plain = await plainGet(port, '/v1/health', { authorization: `Bearer ${TOKEN}` });
    expect(plain.status).toBeUndefined();
    expect(plain.error).toBeDefined();

    // The unix socket needs no token; its mode is the access control.
    expect((await stat(dirs.socket)).mode & 0o777).toBe(0o600);
    expect((await daemon.request('GET', '/v1/health')).status).toBe(200);
    expect(daemon.stderr()).toMatch(/"https":true/);
  });

  test('TCP without a certificate refuses to start, unless plain HTTP is allowed on a loopback address', async () => {
    const port = await freePort();
    const dirs = daemonDirs(join(dir, 'b'));
    const refused = await runDaemonExpectingFailure(dirs, ['--tcp', `127.0.0.1:${port}`, '--token-file', tokenFile]);
    expect(refused.exitCode).toBe(2);
    expect(refused.stderr).toMatch(/needs HTTPS.*--tls-cert/);
    const remote = await runDaemonExpectingFailure(dirs, ['--tcp', `0.0.0.0:${port}`, '--token-file', tokenFile, '--allow-plain-loopback']);
    expect(remote.stderr).toMatch(/not a loopback address/);
    const halfTls = await runDaemonExpectingFailure(dirs, ['--tcp', `127.0.0.1:${port}`, '--token-file', tokenFile, '--tls-cert', pki.selfSigned.cert]);
    expect(halfTls.stderr).toMatch(/tlsCert and tlsKey go together/);
    const unreadable = await runDaemonExpectingFailure(dirs, ['--tcp', `127.0.0.1:${port}`, '--token-file', tokenFile, '--tls-cert', join(dir, 'none.pem'), '--tls-key', pki.selfSigned.key]);
    expect(unreadable.stderr).toMatch(/cannot read the HTTPS certificate .*none\.pem/);

    daemon = await startDaemonProcess(dirs, ['--tcp', `127.0.0.1:${port}`, '--token-file', tokenFile, '--allow-plain-loopback']);
    expect((await plainGet(port, '/v1/health')).status).toBe(401);
    expect((await plainGet(port, '/v1/health', { authorization: `Bearer ${TOKEN}` })).status).toBe(200);
    expect((await stat(dirs.socket)).mode & 0o777).toBe(0o600);
  });
});
