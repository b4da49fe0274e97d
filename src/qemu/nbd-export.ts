// QEMU's built-in NBD server and its block exports: start/stop the server, add/remove exports, list them.
import type { QmpExecutor } from '../qmp/client.js';
import type { CallOptions } from '../qmp/events.js';
import { InvalidInputError } from '../util/errors.js';
import { QemuReplyError } from './errors.js';

/** Where the NBD server listens. */
export type NbdServerAddress = { type: 'unix'; path: string } | { type: 'inet'; host: string; port: number };

export interface NbdServerStartOptions {
  addr: NbdServerAddress;
  /** Id of a `tls-creds-x509` or `tls-creds-psk` object already created in QEMU (tlsCredsObjectArguments). */
  tlsCreds?: string;
  /** Id of a `authz` object limiting TLS clients. */
  tlsAuthz?: string;
  maxConnections?: number;
}

function callOptions(options: CallOptions): CallOptions {
  const call: CallOptions = {};
  if (options.signal) call.signal = options.signal;
  if (options.timeoutMs !== undefined) call.timeoutMs = options.timeoutMs;
  return call;
}

/** The arguments of `nbd-server-start` (pure). @throws InvalidInputError on an empty path or a bad port. */
export function nbdServerStartArguments(options: NbdServerStartOptions): Record<string, unknown> {
  const { addr } = options;
  let address: Record<string, unknown>;
  if (addr.type === 'unix') {
    if (!addr.path) throw new InvalidInputError('the NBD server socket path is empty');
    address = { type: 'unix', data: { path: addr.path } };
  } else {
    if (!Number.isInteger(addr.port) || addr.port < 1 || addr.port > 65535) {
      throw new InvalidInputError(`NBD server port ${addr.port} must be an integer from 1 to 65535`);
    }
    address = { type: 'inet', data: { host: addr.host, port: String(addr.port) } };
  }
  const args: Record<string, unknown> = { addr: address };
  if (options.tlsCreds !== undefined) args['tls-creds'] = options.tlsCreds;
  if (options.tlsAuthz !== undefined) args['tls-authz'] = options.tlsAuthz;
  if (options.maxConnections !== undefined) args['max-connections'] = options.maxConnections;
  return args;
}

/**
 * TLS credentials for QEMU's NBD server, as a QOM object. QEMU reads the files from `dir` when the object is added:
 * x509 `ca-cert.pem`, `server-cert.pem`, `server-key.pem` (with `verifyPeer`, clients must show a certificate signed
 * by that CA); psk `keys.psk`.
 */
export type TlsCredsOptions =
  | { type: 'x509'; id: string; dir: string; verifyPeer: boolean }
  | { type: 'psk'; id: string; dir: string };

const QOM_ID = /^[A-Za-z][A-Za-z0-9_.-]*$/;

/**
 * The arguments of `object-add` for server-side TLS credentials (pure; QEMU ≥ 6 takes the properties flat).
 * @throws InvalidInputError on an id QEMU refuses or a relative directory.
 */
export function tlsCredsObjectArguments(options: TlsCredsOptions): Record<string, unknown> {
  if (!QOM_ID.test(options.id)) throw new InvalidInputError(`'${options.id}' is not a QEMU object id`, { hint: 'start with a letter; use letters, digits, - . _' });
  if (!options.dir.startsWith('/')) throw new InvalidInputError(`TLS credentials directory '${options.dir}' is not an absolute path`);
  if (options.type === 'x509') {
    return { 'qom-type': 'tls-creds-x509', id: options.id, dir: options.dir, endpoint: 'server', 'verify-peer': options.verifyPeer };
  }
  return { 'qom-type': 'tls-creds-psk', id: options.id, dir: options.dir, endpoint: 'server' };
}

/** The arguments of `object-del` (pure). */
export function objectDelArguments(id: string): Record<string, unknown> {
  return { id };
}

/**
 * Adds server-side TLS credentials. @throws QmpError naming the file QEMU could not use (a missing server-key.pem,
 * an expired server certificate, "The certificate hasn't got a known issuer"), or a duplicate id.
 */
export async function addTlsCreds(qmp: QmpExecutor, options: TlsCredsOptions, call: CallOptions = {}): Promise<void> {
  await qmp.execute('object-add', tlsCredsObjectArguments(options), callOptions(call));
}

/** Deletes a QOM object (`object-del`). @throws QmpError (no such object; still in use by a running NBD server). */
export async function objectDel(qmp: QmpExecutor, id: string, call: CallOptions = {}): Promise<void> {
  await qmp.execute('object-del', objectDelArguments(id), callOptions(call));
}

/** Starts QEMU's NBD server. @throws QmpError (already running, address in use). */
export async function nbdServerStart(
  qmp: QmpExecutor,
  options: NbdServerStartOptions,
  call: CallOptions = {},
): Promise<void> {
  await qmp.execute('nbd-server-start', nbdServerStartArguments(options), callOptions(call));
}

/** Stops the NBD server; its exports are deleted (BLOCK_EXPORT_DELETED each). @throws QmpError when not running. */
export async function nbdServerStop(qmp: QmpExecutor, call: CallOptions = {}): Promise<void> {
  await qmp.execute('nbd-server-stop', undefined, callOptions(call));
}

export interface BlockExportAddOptions {
  id: string;
  node: string;
  /** The NBD export name clients ask for (libvirt: the disk target). */
  name: string;
  writable: boolean;
  /** Bitmaps published as `qemu:dirty-bitmap:<name>` meta contexts. */
  bitmaps?: string[];
  description?: string;
  /** Publish `qemu:allocation-depth`. */
  allocationDepth?: boolean;
}

/** The arguments of `block-export-add` for NBD, keys in libvirt's order (pure). */
export function blockExportAddArguments(options: BlockExportAddOptions): Record<string, unknown> {
  const args: Record<string, unknown> = {
    type: 'nbd',
    id: options.id,
    'node-name': options.node,
    writable: options.writable,
    name: options.name,
  };
  if (options.description !== undefined) args.description = options.description;
  if (options.bitmaps !== undefined && options.bitmaps.length > 0) args.bitmaps = [...options.bitmaps];
  if (options.allocationDepth !== undefined) args['allocation-depth'] = options.allocationDepth;
  return args;
}

/** Adds an NBD export (the server must be started). @throws QmpError (duplicate id/name, unknown node/bitmap). */
export async function blockExportAdd(
  qmp: QmpExecutor,
  options: BlockExportAddOptions,
  call: CallOptions = {},
): Promise<void> {
  await qmp.execute('block-export-add', blockExportAddArguments(options), callOptions(call));
}

/**
 * Removes an export and waits for its `BLOCK_EXPORT_DELETED` (clients disconnected): default `mode: 'hard'`
 * drops connected clients; 'safe' fails while clients are connected.
 * @throws QmpError (no such export; 'safe' with clients); QmpTimeoutError when the event does not come in time
 *   (default 30 s); AbortedError; QmpClosedError.
 */
export async function blockExportDel(
  qmp: QmpExecutor,
  id: string,
  options: CallOptions & { mode?: 'safe' | 'hard' } = {},
): Promise<void> {
  const listener = qmp.listen('BLOCK_EXPORT_DELETED');
  try {
    await qmp.execute('block-export-del', { id, mode: options.mode ?? 'hard' }, callOptions(options));
    await listener.next((e) => e.data.id === id, { timeoutMs: options.timeoutMs ?? 30_000, ...(options.signal ? { signal: options.signal } : {}) });
  } finally {
    listener.close();
  }
}

export interface BlockExportInfo {
  id: string;
  type: string;
  nodeName: string;
  shuttingDown: boolean;
}

/** `query-block-exports`, parsed. @throws QemuReplyError on an odd reply; the QMP call's errors. */
export async function queryBlockExports(qmp: QmpExecutor, call: CallOptions = {}): Promise<BlockExportInfo[]> {
  const reply = await qmp.execute<unknown>('query-block-exports', undefined, callOptions(call));
  if (!Array.isArray(reply)) throw new QemuReplyError('query-block-exports', 'expected an array of exports');
  return reply.map((raw: unknown, index) => {
    const r = raw as Record<string, unknown>;
    if (typeof r !== 'object' || r === null || typeof r.id !== 'string' || typeof r['node-name'] !== 'string') {
      throw new QemuReplyError('query-block-exports', `export #${index} lacks id or node-name`);
    }
    return {
      id: r.id,
      type: typeof r.type === 'string' ? r.type : 'nbd',
      nodeName: r['node-name'],
      shuttingDown: r['shutting-down'] === true,
    };
  });
}
