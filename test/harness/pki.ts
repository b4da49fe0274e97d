// Test certificates and pre-shared keys made with certtool and psktool (gnutls-bin), after libnbd's tests/make-pki.sh:
// a CA, a server certificate for cn=localhost / ip 127.0.0.1, a client certificate, an expired client certificate,
// a second CA, PSK files; laid out in the directories QEMU's tls-creds-* and libnbd read.
import { execa } from 'execa';
import { copyFile, mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';

export interface TestPskFile {
  /** The keys.psk file (`identity:hexkey`). */
  file: string;
  /** Its directory (QEMU's tls-creds-psk dir=). */
  dir: string;
  username: string;
}

export interface TestPki {
  /** Where everything was made. */
  root: string;
  /** One directory with every x509 file (ca-cert.pem, server-*.pem, client-*.pem): what fleece is configured with. */
  x509: string;
  /** QEMU's side only: ca-cert.pem, server-cert.pem, server-key.pem. */
  server: string;
  /** The reader's side only: ca-cert.pem, client-cert.pem, client-key.pem. */
  client: string;
  /** ca-cert.pem and no client certificate. */
  clientWithoutCert: string;
  /** The second CA as ca-cert.pem (the server's certificate does not verify) with a valid client certificate. */
  clientWrongCa: string;
  /** The right CA and a client certificate that expired in 2020. */
  clientExpired: string;
  /** The right CA and a client certificate signed by the second CA (the server does not trust it). */
  clientOtherCa: string;
  /** A PSK file; one with the same identity and another key; one with an identity the first does not know. */
  psk: TestPskFile;
  wrongPsk: TestPskFile;
  otherIdentityPsk: TestPskFile;
  /** A self-signed server certificate (cn=localhost, ip 127.0.0.1) and its key, PEM files (for HTTPS). */
  selfSigned: { cert: string; key: string };
}

async function certtool(args: string[]): Promise<void> {
  await execa('certtool', args, { stdin: 'ignore' });
}

async function privateKey(path: string): Promise<void> {
  await certtool(['--generate-privkey', '--key-type=ecdsa', '--outfile', path]);
}

async function template(dir: string, name: string, lines: string[]): Promise<string> {
  const path = join(dir, `${name}.info`);
  await writeFile(path, `${lines.join('\n')}\n`);
  return path;
}

async function selfSignedCa(dir: string, name: string, cn: string): Promise<{ cert: string; key: string }> {
  const key = join(dir, `${name}-key.pem`);
  const cert = join(dir, `${name}-cert.pem`);
  await privateKey(key);
  const info = await template(dir, name, [`cn = ${cn}`, 'ca', 'cert_signing_key', 'expiration_days = 3650']);
  await certtool(['--generate-self-signed', '--load-privkey', key, '--template', info, '--outfile', cert]);
  return { cert, key };
}

async function signed(dir: string, name: string, ca: { cert: string; key: string }, key: string, lines: string[]): Promise<string> {
  const cert = join(dir, `${name}-cert.pem`);
  const info = await template(dir, name, lines);
  await certtool([
    '--generate-certificate', '--load-ca-certificate', ca.cert, '--load-ca-privkey', ca.key,
    '--load-privkey', key, '--template', info, '--outfile', cert,
  ]);
  return cert;
}

async function layout(dir: string, files: Record<string, string>): Promise<string> {
  await mkdir(dir, { recursive: true, mode: 0o700 });
  for (const [name, source] of Object.entries(files)) await copyFile(source, join(dir, name));
  return dir;
}

async function pskFile(dir: string, username: string): Promise<TestPskFile> {
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const file = join(dir, 'keys.psk');
  await execa('psktool', ['-u', username, '-p', file], { stdin: 'ignore' });
  return { file, dir, username };
}

/** Makes the test PKI under `root` (a fleece-test- directory); about a second. Throws when certtool is missing. */
export async function makeTestPki(root: string): Promise<TestPki> {
  const work = join(root, 'make');
  await mkdir(work, { recursive: true, mode: 0o700 });
  const ca = await selfSignedCa(work, 'ca', 'fleece test CA');
  const other = await selfSignedCa(work, 'ca2', 'fleece other CA');

  const serverKey = join(work, 'server-key.pem');
  await privateKey(serverKey);
  const serverCert = await signed(work, 'server', ca, serverKey, [
    'organization = fleece test', 'cn = localhost', 'dns_name = localhost', 'ip_address = 127.0.0.1',
    'tls_www_server', 'encryption_key', 'signing_key', 'serial = 1', 'expiration_days = 3650',
  ]);
  const clientKey = join(work, 'client-key.pem');
  await privateKey(clientKey);
  const clientLines = ['organization = fleece test', 'cn = fleece-reader', 'tls_www_client', 'encryption_key', 'signing_key'];
  const clientCert = await signed(work, 'client', ca, clientKey, [...clientLines, 'serial = 2', 'expiration_days = 3650']);
  const expiredCert = await signed(work, 'client-expired', ca, clientKey, [
    ...clientLines, 'serial = 3', 'activation_date = "2020-01-01 00:00:00"', 'expiration_date = "2020-02-01 00:00:00"',
  ]);
  const otherCaCert = await signed(work, 'client-other-ca', other, clientKey, [...clientLines, 'serial = 4', 'expiration_days = 3650']);

  const httpsKey = join(work, 'https-key.pem');
  await privateKey(httpsKey);
  const httpsInfo = await template(work, 'https', [
    'cn = localhost', 'dns_name = localhost', 'ip_address = 127.0.0.1', 'tls_www_server', 'encryption_key', 'signing_key', 'expiration_days = 365',
  ]);
  const httpsCert = join(work, 'https-cert.pem');
  await certtool(['--generate-self-signed', '--load-privkey', httpsKey, '--template', httpsInfo, '--outfile', httpsCert]);

  const client = { 'client-cert.pem': clientCert, 'client-key.pem': clientKey };
  return {
    root,
    x509: await layout(join(root, 'x509'), { 'ca-cert.pem': ca.cert, 'server-cert.pem': serverCert, 'server-key.pem': serverKey, ...client }),
    server: await layout(join(root, 'server'), { 'ca-cert.pem': ca.cert, 'server-cert.pem': serverCert, 'server-key.pem': serverKey }),
    client: await layout(join(root, 'client'), { 'ca-cert.pem': ca.cert, ...client }),
    clientWithoutCert: await layout(join(root, 'client-no-cert'), { 'ca-cert.pem': ca.cert }),
    clientWrongCa: await layout(join(root, 'client-wrong-ca'), { 'ca-cert.pem': other.cert, ...client }),
    clientExpired: await layout(join(root, 'client-expired'), { 'ca-cert.pem': ca.cert, 'client-cert.pem': expiredCert, 'client-key.pem': clientKey }),
    clientOtherCa: await layout(join(root, 'client-other-ca'), { 'ca-cert.pem': ca.cert, 'client-cert.pem': otherCaCert, 'client-key.pem': clientKey }),
    psk: await pskFile(join(root, 'psk'), 'fleece'),
    wrongPsk: await pskFile(join(root, 'psk-wrong'), 'fleece'),
    otherIdentityPsk: await pskFile(join(root, 'psk-other'), 'stranger'),
    selfSigned: { cert: httpsCert, key: httpsKey },
  };
}

/** True when certtool and psktool are installed (Debian: gnutls-bin). */
export async function pkiToolsAvailable(): Promise<boolean> {
  const probe = async (tool: string) => (await execa(tool, ['--version'], { reject: false })).exitCode === 0;
  return (await probe('certtool')) && (await probe('psktool'));
}
