// NBD over TLS as fleece configures both ends: one certificate directory (x509) or one keys.psk file (PSK); what a
// reader sets on libnbd; and a libnbd TLS failure turned into a message that says which credential is wrong and how
// to fix it (libnbd only sees "the TLS connection was non-properly terminated" when QEMU refuses a client).
import { X509Certificate, createPrivateKey } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { basename, dirname, isAbsolute, join } from 'node:path';
import type { NbdHandle } from '../../native/nbd-handle.js';
import { NbdError } from '../../native/nbd-error.js';
import { FleeceError, InvalidInputError, type FleeceErrorOptions } from '../util/errors.js';

/**
 * The TLS credentials of NBD connections, the same for QEMU's server and fleece's reader.
 * - x509: `dir` holds `ca-cert.pem` (both ends), `server-cert.pem` + `server-key.pem` (QEMU's `tls-creds-x509`,
 *   endpoint server) and `client-cert.pem` + `client-key.pem` (libnbd's `nbd_set_tls_certificates`). `verifyPeer`
 *   (default true): QEMU requires a client certificate signed by the CA; the reader checks the server's certificate
 *   against the CA and the host name.
 * - psk: `file` is a `keys.psk` (`identity:hexkey` lines, `psktool -u NAME -p FILE`); QEMU's `tls-creds-psk` reads it
 *   from its directory, so the file must be called keys.psk. `username` (default: the file's first identity) is the
 *   identity the reader offers.
 */
export type NbdTls =
  | { type: 'x509'; dir: string; verifyPeer?: boolean }
  | { type: 'psk'; file: string; username?: string };

/** The file names QEMU and libnbd read from an x509 directory. */
export const X509_FILES = {
  ca: 'ca-cert.pem',
  serverCert: 'server-cert.pem',
  serverKey: 'server-key.pem',
  clientCert: 'client-cert.pem',
  clientKey: 'client-key.pem',
} as const;

/** The file name QEMU's tls-creds-psk reads from its directory. */
export const PSK_FILE_NAME = 'keys.psk';

/**
 * The TLS settings of a configuration (daemon config, registry entry, CLI flags) as NbdTls, or undefined when none is
 * given. `where` names the settings in errors (`--tls-dir`, `VM 'vm1'`).
 * @throws InvalidInputError when both a directory and a PSK file are given, or a path is not absolute.
 */
export function nbdTlsFromSettings(settings: { dir?: string; psk?: string; verifyPeer?: boolean; username?: string }, where: string): NbdTls | undefined {
  const { dir, psk } = settings;
  if (dir !== undefined && psk !== undefined) {
    throw new InvalidInputError(`${where}: give either a TLS certificate directory or a PSK file, not both`, {
      hint: 'x509 certificates (a directory with ca-cert.pem …) or a pre-shared key (keys.psk)',
    });
  }
  if (dir !== undefined) {
    if (!isAbsolute(dir)) throw new InvalidInputError(`${where}: TLS directory '${dir}' is not an absolute path`, { hint: 'give an absolute path' });
    return { type: 'x509', dir, ...(settings.verifyPeer !== undefined ? { verifyPeer: settings.verifyPeer } : {}) };
  }
  if (psk !== undefined) {
    if (!isAbsolute(psk)) throw new InvalidInputError(`${where}: PSK file '${psk}' is not an absolute path`, { hint: 'give an absolute path' });
    return { type: 'psk', file: psk, ...(settings.username !== undefined ? { username: settings.username } : {}) };
  }
  return undefined;
}

/** How a TLS connection failed, for callers and tests (the message says the same in words). */
export type NbdTlsFailure =
  /** The server demands TLS and the reader had it off. */
  | 'server-requires-tls'
  /** The reader demands TLS and the server does not offer it (a plaintext server). */
  | 'plaintext-server'
  /** The server's certificate did not verify against the reader's ca-cert.pem (another CA, expired, wrong name). */
  | 'server-certificate-untrusted'
  /** The server ended the handshake and the reader has no client certificate. */
  | 'client-certificate-missing'
  /** The server ended the handshake and the reader's client certificate is expired or not yet valid. */
  | 'client-certificate-expired'
  /** The server ended the handshake on the reader's client certificate (a CA it does not trust, a key mismatch). */
  | 'client-certificate-refused'
  /** The server ended the PSK handshake: wrong key or unknown identity. */
  | 'psk-refused'
  /** A credential file is missing or unreadable before anything was sent. */
  | 'credentials-unreadable'
  /** This libnbd was built without gnutls. */
  | 'tls-unsupported';

/** An NBD connection failed because of TLS; `reason` says which side and which credential. */
export class NbdTlsError extends FleeceError {
  readonly reason: NbdTlsFailure;

  constructor(reason: NbdTlsFailure, message: string, options: FleeceErrorOptions = {}) {
    super('NBD', message, options);
    this.reason = reason;
  }
}

/**
 * The first identity of a keys.psk file (what the reader offers unless told otherwise).
 * @throws NbdTlsError ('credentials-unreadable') when the file is unreadable or holds no `identity:hexkey` line.
 */
export function pskIdentity(file: string): string {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (error) {
    throw new NbdTlsError('credentials-unreadable', `cannot read the TLS PSK file ${file}: ${(error as Error).message}`, {
      cause: error,
      hint: `make one with \`psktool -u fleece -p ${file}\` and give the same file to both ends`,
    });
  }
  const line = text.split('\n').map((l) => l.trim()).find((l) => l !== '' && !l.startsWith('#'));
  const match = line ? /^([^:]+):[0-9a-fA-F]+$/.exec(line) : null;
  if (!match) {
    throw new NbdTlsError('credentials-unreadable', `the TLS PSK file ${file} holds no 'identity:hexkey' line`, {
      hint: `make it with \`psktool -u fleece -p ${file}\``,
    });
  }
  return match[1]!;
}

/**
 * The directory QEMU's tls-creds-psk reads (it opens `<dir>/keys.psk`).
 * @throws InvalidInputError when the file is not called keys.psk.
 */
export function pskDirectory(file: string): string {
  if (basename(file) !== PSK_FILE_NAME) {
    throw new InvalidInputError(`TLS PSK file ${file}: QEMU reads the pre-shared keys from a file called ${PSK_FILE_NAME}`, {
      hint: `rename it to ${join(dirname(file), PSK_FILE_NAME)} (or put it in a directory of its own under that name)`,
    });
  }
  return dirname(file);
}

/**
 * Checks what can be checked before connecting: the CA certificate the reader verifies the server with, the PSK
 * file and its identity. @throws NbdTlsError ('credentials-unreadable')
 */
export function checkReaderCredentials(tls: NbdTls): void {
  if (tls.type === 'psk') {
    pskIdentity(tls.file);
    return;
  }
  if (tls.verifyPeer === false) return;
  const ca = join(tls.dir, X509_FILES.ca);
  try {
    new X509Certificate(readFileSync(ca));
  } catch (error) {
    throw new NbdTlsError('credentials-unreadable', `cannot use the CA certificate ${ca} to verify the NBD server: ${(error as Error).message}`, {
      cause: error,
      hint: `put the CA that signed the server's certificate there as ${X509_FILES.ca} (PEM)`,
    });
  }
}

/** Sets the TLS credentials on an unconnected handle; TLS is then required. @throws NbdError, NbdTlsError */
export function applyReaderTls(handle: NbdHandle, tls: NbdTls): void {
  if (!handle.supportsTls()) {
    throw new NbdTlsError('tls-unsupported', 'this libnbd was built without TLS support', { hint: "install Debian's libnbd0 (built with gnutls)" });
  }
  handle.setTls('require');
  if (tls.type === 'x509') {
    handle.setTlsCertificates(tls.dir);
    handle.setTlsVerifyPeer(tls.verifyPeer ?? true);
  } else {
    handle.setTlsPskFile(tls.file);
    handle.setTlsUsername(tls.username ?? pskIdentity(tls.file));
  }
}

function readCertificate(path: string): X509Certificate | undefined {
  try {
    return new X509Certificate(readFileSync(path));
  } catch {
    return undefined;
  }
}

/** Why the server may have refused the reader's client certificate, from the files in `dir`. */
function clientCertificateProblem(dir: string): { reason: NbdTlsFailure; text: string; hint: string } {
  const certPath = join(dir, X509_FILES.clientCert);
  const keyPath = join(dir, X509_FILES.clientKey);
  const cert = readCertificate(certPath);
  let key;
  try {
    key = createPrivateKey(readFileSync(keyPath));
  } catch {
    key = undefined;
  }
  if (!cert || !key) {
    const missing = [!cert ? X509_FILES.clientCert : undefined, !key ? X509_FILES.clientKey : undefined].filter(Boolean).join(' and ');
    return {
      reason: 'client-certificate-missing',
      text: `the server wants a client certificate (verify-peer) and ${dir} has no usable ${missing}`,
      hint: `make a client certificate signed by the server's CA (certtool with tls_www_client) and put it in ${dir} as ${X509_FILES.clientCert} and ${X509_FILES.clientKey}, or turn verify-peer off on the server`,
    };
  }
  const now = Date.now();
  const from = Date.parse(cert.validFrom);
  const to = Date.parse(cert.validTo);
  if (now > to || now < from) {
    const when = now > to ? `expired on ${cert.validTo}` : `is not valid before ${cert.validFrom}`;
    return {
      reason: 'client-certificate-expired',
      text: `the server refused the client certificate ${certPath}: it ${when}`,
      hint: `issue a new client certificate and replace ${certPath}`,
    };
  }
  if (!cert.checkPrivateKey(key)) {
    return {
      reason: 'client-certificate-refused',
      text: `${keyPath} is not the key of ${certPath}`,
      hint: 'put the key the client certificate was made for beside it',
    };
  }
  const ca = readCertificate(join(dir, X509_FILES.ca));
  const ownCa = ca !== undefined && cert.checkIssued(ca) && cert.verify(ca.publicKey);
  const issuer = cert.issuer.replace(/\n/g, ', ');
  return {
    reason: 'client-certificate-refused',
    text: `the server refused the client certificate ${certPath} (issuer ${issuer}): it does not trust the CA that signed it${ownCa ? '' : ` (nor is it signed by ${join(dir, X509_FILES.ca)})`}, or it expects a pre-shared key`,
    hint: "sign the client certificate with the CA in the server's ca-cert.pem, or see the server's log (QEMU: 'Verify failed', 'not trusted')",
  };
}

/**
 * Turns a failed connect into an NbdTlsError when TLS was the cause, naming the credential and the fix; any other
 * error is returned as it is. `tls` is what the reader used (undefined: TLS off), `host` the server's host (for the
 * certificate name check), `what` the export.
 */
export function explainTlsFailure(error: unknown, tls: NbdTls | undefined, what: string, host?: string): unknown {
  if (!(error instanceof NbdError)) return error;
  const text = error.libnbdMessage;
  const detail = `(libnbd: ${text})`;
  const fail = (reason: NbdTlsFailure, message: string, hint: string) =>
    new NbdTlsError(reason, `${what}: ${message} ${detail}`, { cause: error, hint });

  if (/server requires TLS/i.test(text)) {
    return fail('server-requires-tls', 'the NBD server requires TLS and this reader has TLS off', 'give the reader the TLS credentials of the server (--tls-dir DIR for x509 certificates, --tls-psk FILE for a pre-shared key)');
  }
  if (/server refused TLS|oldstyle.*TLS|does not support TLS/i.test(text)) {
    return fail('plaintext-server', 'the NBD server does not offer TLS (a plaintext server) and TLS is required: nothing was read in plaintext', "start the server with TLS (<server tls='yes'>, qemu-nbd --tls-creds), or connect to the TLS server you meant");
  }
  if (/support for TLS|not compiled with TLS|TLS is not supported/i.test(text)) {
    return fail('tls-unsupported', 'this libnbd has no TLS support', 'install a libnbd built with gnutls (Debian: libnbd0)');
  }
  if (!tls) return error;
  if (tls.type === 'psk' && /not found in PSK file/i.test(text)) {
    return fail('credentials-unreadable', `the PSK file ${tls.file} holds no key for identity '${tls.username ?? '?'}'`, `add one with \`psktool -u ${tls.username ?? 'NAME'} -p ${tls.file}\` (on both ends), or leave the identity out to use the file's first`);
  }
  if (/certificate verification|not trusted|certificate.*(expired|revoked)|unexpected hostname|does not match/i.test(text)) {
    const ca = tls.type === 'x509' ? join(tls.dir, X509_FILES.ca) : 'the CA';
    return fail(
      'server-certificate-untrusted',
      `the server's certificate did not verify against ${ca}: it is signed by another CA, has expired, or does not name ${host ?? 'the host'}`,
      `put the CA that signed the server's certificate in ${ca}, renew the server certificate, or make it name ${host ?? 'the host'} (cn / ip_address / dns_name)`,
    );
  }
  if (/gnutls|TLS|handshake|non-properly terminated|pull function|Connection reset|Insufficient credentials|illegal parameter/i.test(text)) {
    if (tls.type === 'psk') {
      let identity = tls.username;
      try {
        identity ??= pskIdentity(tls.file);
      } catch {
        identity = '?';
      }
      return fail(
        'psk-refused',
        `the server refused the pre-shared key of identity '${identity}' from ${tls.file}: the key differs from the server's keys.psk, the server knows no such identity, or it uses x509 certificates`,
        "give both ends the same keys.psk (psktool -u NAME -p keys.psk), or see the server's log",
      );
    }
    const problem = clientCertificateProblem(tls.dir);
    return fail(problem.reason, `the TLS handshake failed: ${problem.text}`, problem.hint);
  }
  return error;
}
