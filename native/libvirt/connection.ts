// LibvirtConnection: one libvirt connection owned by one worker thread; every call is serialised there and answered by a Promise.
import { Worker } from 'node:worker_threads';
import { createRequire } from 'node:module';
import { LibvirtError, type LibvirtErrorDetail, type LibvirtLocalFailure } from '../libvirt-error.js';
import {
  DOMAIN_STATES, JOB_TYPES, VIR_ERR_AGENT_UNRESPONSIVE, VIR_ERR_AGENT_UNSYNCED, VIR_ERR_CHECKPOINT_INCONSISTENT,
  VIR_ERR_OPERATION_INVALID, VIR_ERR_OPERATION_TIMEOUT, VIR_UUID_STRING_BUFLEN, VIR_TYPED_PARAM_STRING,
} from './constants.js';
import {
  backupBeginFlags, checkpointCreateFlags, checkpointDeleteFlags, checkpointListFlags, checkpointXmlFlags, domainXmlFlags,
  jobStatsFlags, undefineFlags, type BackupBeginFlags, type CheckpointCreateFlags, type CheckpointDeleteFlags,
  type CheckpointListFlags, type CheckpointXmlFlags, type DomainXmlFlags, type JobStatsFlags, type UndefineFlags,
} from './flags.js';
import { LIBC_PROTOTYPES, LIBVIRT_PROTOTYPES, NATIVE_NOOP_ERROR_HANDLER } from './prototypes.js';
import { decodeTypedParams, jobStatsFrom, TYPED_PARAM_LAYOUT, type JobStats, type RawTypedParams } from './typed-params.js';
import { LIBVIRT_WORKER_SOURCE } from './worker-source.js';

const require = createRequire(import.meta.url);

export type DomainState = (typeof DOMAIN_STATES)[number];

/** virDomainBlockInfo, in bytes. */
export interface BlockInfo { capacity: number; allocation: number; physical: number }

export interface LibvirtOpenOptions {
  /** virConnectOpenReadOnly instead of virConnectOpen. */
  readOnly?: boolean;
  /**
   * Longest wait for the answer to one call, in ms, counted from the call; 0 = no limit. Default 120 000 (libvirt's own
   * state-change lock gives up after 30 s). A call that times out rejects with a LibvirtError (code 68, local
   * 'timeout') while libvirt may still be running it; later calls on the connection wait behind it.
   */
  callTimeoutMs?: number;
  /** Longest wait for virConnectOpen (worker start included), in ms; 0 = no limit. Default: callTimeoutMs. */
  openTimeoutMs?: number;
}

export interface LibvirtCloseOptions {
  /** How long close() waits for pending calls and virConnectClose before it terminates the worker. Default 5000 ms. */
  timeoutMs?: number;
}

export const DEFAULT_CALL_TIMEOUT_MS = 120_000;
export const DEFAULT_CLOSE_TIMEOUT_MS = 5_000;

/** The C function behind each worker op, for errors raised on the main side (timeouts, closed connection). */
const OP_FUNCTION: Record<string, string> = {
  open: 'virConnectOpen', close: 'virConnectClose', alive: 'virConnectIsAlive', version: 'virConnectGetLibVersion',
  listDomains: 'virConnectListAllDomains', defineXml: 'virDomainDefineXML', domainXml: 'virDomainGetXMLDesc',
  domainState: 'virDomainGetState', blockInfo: 'virDomainGetBlockInfo', domainUuid: 'virDomainGetUUIDString', start: 'virDomainCreate',
  destroy: 'virDomainDestroy', undefine: 'virDomainUndefineFlags', backupBegin: 'virDomainBackupBegin',
  backupXml: 'virDomainBackupGetXMLDesc', jobStats: 'virDomainGetJobStats', abortJob: 'virDomainAbortJob',
  fsFreeze: 'virDomainFSFreeze', fsThaw: 'virDomainFSThaw', checkpointCreate: 'virDomainCheckpointCreateXML',
  listCheckpoints: 'virDomainListAllCheckpoints', checkpointXml: 'virDomainCheckpointGetXMLDesc',
  checkpointDelete: 'virDomainCheckpointDelete',
};

interface Pending {
  resolve: (value: unknown) => void;
  reject: (error: Error) => void;
  timer: NodeJS.Timeout | undefined;
  op: string;
  what: string;
}

type WorkerReply =
  | { id: number; ok: true; value: unknown }
  | { id: number; ok: false; error: LibvirtErrorDetail & { operation: string } };

type State = 'open' | 'closing' | 'closed';

/** What the worker gets (LIBVIRT_WORKER_SOURCE): koffi's path, the prototypes, the no-op handler's symbol, struct layouts. */
export function libvirtWorkerData(options: { silenceErrors?: boolean } = {}) {
  return {
    koffiPath: require.resolve('koffi'),
    prototypes: [...LIBVIRT_PROTOTYPES],
    libcPrototypes: [...LIBC_PROTOTYPES],
    noopHandler: options.silenceErrors === false ? null : NATIVE_NOOP_ERROR_HANDLER,
    layout: {
      ...TYPED_PARAM_LAYOUT, uuidBuflen: VIR_UUID_STRING_BUFLEN, stringType: VIR_TYPED_PARAM_STRING,
      operationInvalid: VIR_ERR_OPERATION_INVALID, jobTypes: [...JOB_TYPES],
    },
  };
}

const delay = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms).unref());

/**
 * A connection to libvirt (virConnectOpen) owned by a dedicated worker thread. libvirt keeps its last error per thread
 * and any call can block for tens of seconds (a domain's state-change lock), so every call runs on that thread, one
 * at a time in call order, and the main thread only awaits. The worker keeps the process alive only while calls are
 * pending; close() ends it (terminating it if a call hangs). Domain calls take the domain's name.
 */
export class LibvirtConnection {
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;
  private state: State = 'open';
  private closing: Promise<void> | undefined;
  private workerGone = false;

  private constructor(readonly uri: string, private readonly worker: Worker, private readonly callTimeoutMs: number) {
    worker.on('message', (reply: WorkerReply) => this.onReply(reply));
    worker.on('error', (error) => this.onWorkerGone(`the libvirt worker failed: ${error.message}`));
    worker.on('exit', (code) => this.onWorkerGone(`the libvirt worker exited (code ${code})`));
    worker.unref();
  }

  /**
   * virConnectOpen(uri) (or virConnectOpenReadOnly) on a new worker thread. `uri` is e.g. `qemu:///system` or
   * `qemu+unix:///system?socket=/path/libvirt-sock`.
   * @throws LibvirtError naming the URI, with a hint to check that libvirtd runs (local 'unavailable' when
   *   libvirt.so.0 cannot be loaded).
   */
  static async open(uri: string, options: LibvirtOpenOptions = {}): Promise<LibvirtConnection> {
    const workerData = libvirtWorkerData();
    const worker = new Worker(LIBVIRT_WORKER_SOURCE, { eval: true, workerData });
    const callTimeoutMs = options.callTimeoutMs ?? DEFAULT_CALL_TIMEOUT_MS;
    const connection = new LibvirtConnection(uri, worker, callTimeoutMs);
    try {
      await connection.send('open', [uri, options.readOnly === true], `libvirt at ${uri}`, options.openTimeoutMs ?? callTimeoutMs);
    } catch (error) {
      await connection.terminate(1000);
      if (!(error instanceof LibvirtError)) throw error;
      const hint = error.local === 'unavailable'
        ? 'install it with: apt-get install -y libvirt0'
        : `is libvirtd running and is its socket reachable? Check with: virsh -c '${uri}' version`;
      throw new LibvirtError(error.operation, error.detail, { what: `cannot connect to libvirt at ${uri}`, hint });
    }
    return connection;
  }

  /** Whether close() has been called (or the worker is gone). */
  get closed(): boolean {
    return this.state !== 'open';
  }

  /**
   * Waits for pending calls, frees the cached domains, virConnectClose, and ends the worker; after `timeoutMs` it
   * terminates the worker regardless (a hung call is abandoned; its thread ends when libvirt returns). Never throws.
   */
  close(options: LibvirtCloseOptions = {}): Promise<void> {
    this.closing ??= this.shutdown(options.timeoutMs ?? DEFAULT_CLOSE_TIMEOUT_MS);
    return this.closing;
  }

  private async shutdown(timeoutMs: number): Promise<void> {
    this.state = 'closing';
    if (!this.workerGone) {
      const closed = this.send('close', [], `libvirt at ${this.uri}`, 0).catch(() => undefined);
      await Promise.race([closed, delay(timeoutMs)]);
    }
    this.state = 'closed';
    this.rejectAll('closed', `the connection to libvirt at ${this.uri} was closed`);
    await this.terminate(Math.min(timeoutMs, 1000));
  }

  /** Terminates the worker, waiting at most graceMs for it (a thread inside a libvirt call ends only when it returns). */
  private async terminate(graceMs: number): Promise<void> {
    this.state = 'closed';
    this.worker.unref();
    if (this.workerGone) return;
    const done = this.worker.terminate().then(() => undefined, () => undefined);
    await Promise.race([done, delay(graceMs)]);
  }

  /** virConnectIsAlive. */
  alive(): Promise<boolean> {
    return this.call('alive', [], `libvirt at ${this.uri}`);
  }

  /** libvirt's and the hypervisor's versions as libvirt encodes them (major * 1 000 000 + minor * 1000 + micro). */
  version(): Promise<{ libvirt: number; hypervisor: number }> {
    return this.call('version', [], `libvirt at ${this.uri}`);
  }

  /** virConnectListAllDomains: the names of all domains, active and inactive. */
  listDomains(): Promise<string[]> {
    return this.call('listDomains', [0], `libvirt at ${this.uri}`);
  }

  /** virDomainDefineXML; returns the defined domain's name. */
  defineXml(xml: string): Promise<string> {
    return this.call('defineXml', [xml], `libvirt at ${this.uri}`);
  }

  /** virDomainGetXMLDesc. */
  domainXml(domain: string, flags?: DomainXmlFlags): Promise<string> {
    return this.call('domainXml', [domain, domainXmlFlags(flags)], domainWhat(domain));
  }

  /** virDomainGetState: the state and its reason (virDomain<State>Reason, a number). */
  async domainState(domain: string): Promise<{ state: DomainState; reason: number }> {
    const { state, reason } = await this.call<{ state: number; reason: number }>('domainState', [domain], domainWhat(domain));
    return { state: DOMAIN_STATES[state] ?? 'nostate', reason };
  }

  /** virDomainGetUUIDString. */
  domainUuid(domain: string): Promise<string> {
    return this.call('domainUuid', [domain], domainWhat(domain));
  }

  /**
   * virDomainGetBlockInfo for one disk (target `vda` or source path): capacity = the guest-visible size, allocation =
   * host bytes in use, physical = the host file's size; in bytes.
   */
  blockInfo(domain: string, disk: string): Promise<BlockInfo> {
    return this.call('blockInfo', [domain, disk], `disk '${disk}' of domain '${domain}'`);
  }

  /** virDomainCreate: starts a defined domain. */
  async start(domain: string): Promise<void> {
    await this.call('start', [domain], domainWhat(domain));
  }

  /** virDomainDestroy: stops a running domain at once. */
  async destroy(domain: string): Promise<void> {
    await this.call('destroy', [domain], domainWhat(domain));
  }

  /** virDomainUndefineFlags. `checkpointsMetadata` drops libvirt's checkpoint XML (the bitmaps stay in the images). */
  async undefine(domain: string, flags?: UndefineFlags): Promise<void> {
    await this.call('undefine', [domain, undefineFlags(flags)], domainWhat(domain));
  }

  /**
   * virDomainBackupBegin (push or pull, with a checkpoint XML or null). A pull backup runs until abortJob().
   * @throws LibvirtError code 55 (VIR_ERR_OPERATION_INVALID), local 'busy', at once when the domain already runs a job
   *   (virDomainGetJobStats is asked first: libvirt itself would wait 30 s for that job's lock, then fail with 68).
   */
  async backupBegin(domain: string, backupXml: string, checkpointXml: string | null, flags?: BackupBeginFlags): Promise<void> {
    await this.call('backupBegin', [domain, backupXml, checkpointXml, backupBeginFlags(flags)], domainWhat(domain));
  }

  /** virDomainBackupGetXMLDesc: the running backup's XML (export names, NBD server, scratch files). */
  backupXml(domain: string): Promise<string> {
    return this.call('backupXml', [domain], domainWhat(domain));
  }

  /** virDomainGetJobStats, typed parameters decoded by type. */
  async jobStats(domain: string, flags?: JobStatsFlags): Promise<JobStats> {
    const { type, params } = await this.call<{ type: number; params: RawTypedParams }>('jobStats', [domain, jobStatsFlags(flags)], domainWhat(domain));
    return jobStatsFrom(type, decodeTypedParams(params));
  }

  /** virDomainAbortJob: ends the running job (a pull backup: libvirt removes the export and its scratch files). */
  async abortJob(domain: string): Promise<void> {
    await this.call('abortJob', [domain], domainWhat(domain));
  }

  /** virDomainCheckpointCreateXML; returns the checkpoint's name. */
  checkpointCreate(domain: string, xml: string, flags?: CheckpointCreateFlags): Promise<string> {
    return this.call('checkpointCreate', [domain, xml, checkpointCreateFlags(flags)], domainWhat(domain));
  }

  /** virDomainListAllCheckpoints: the checkpoint names (`topological`: parents before children). */
  listCheckpoints(domain: string, flags?: CheckpointListFlags): Promise<string[]> {
    return this.call('listCheckpoints', [domain, checkpointListFlags(flags)], domainWhat(domain));
  }

  /** virDomainCheckpointLookupByName + virDomainCheckpointGetXMLDesc (`size`: current bitmap sizes, needs a running domain). */
  checkpointXml(domain: string, checkpoint: string, flags?: CheckpointXmlFlags): Promise<string> {
    return this.call('checkpointXml', [domain, checkpoint, checkpointXmlFlags(flags)], checkpointWhat(domain, checkpoint));
  }

  /** virDomainCheckpointLookupByName + virDomainCheckpointDelete. */
  async checkpointDelete(domain: string, checkpoint: string, flags?: CheckpointDeleteFlags): Promise<void> {
    await this.call('checkpointDelete', [domain, checkpoint, checkpointDeleteFlags(flags)], checkpointWhat(domain, checkpoint));
  }

  /** virDomainFSFreeze through the guest agent (all file systems when none are named); returns how many were frozen. */
  fsFreeze(domain: string, mountpoints: string[] = []): Promise<number> {
    return this.call('fsFreeze', [domain, mountpoints], domainWhat(domain));
  }

  /** virDomainFSThaw; returns how many file systems were thawed. */
  fsThaw(domain: string, mountpoints: string[] = []): Promise<number> {
    return this.call('fsThaw', [domain, mountpoints], domainWhat(domain));
  }

  private call<T>(op: string, args: unknown[], what: string): Promise<T> {
    if (this.state !== 'open') {
      return Promise.reject(localError(op, 'closed', `the connection to libvirt at ${this.uri} is closed`, what));
    }
    return this.send<T>(op, args, what, this.callTimeoutMs);
  }

  private send<T>(op: string, args: unknown[], what: string, timeoutMs: number): Promise<T> {
    if (this.workerGone) return Promise.reject(localError(op, 'worker', 'the libvirt worker is gone', what));
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined;
      if (timeoutMs > 0) {
        timer = setTimeout(() => {
          if (!this.pending.delete(id)) return;
          this.updateRef();
          reject(localError(op, 'timeout', `no answer within ${timeoutMs} ms; the call may still be running in libvirt, and later calls on this connection wait for it`, what));
        }, timeoutMs);
        timer.unref();
      }
      this.pending.set(id, { resolve: resolve as (value: unknown) => void, reject, timer, op, what });
      this.updateRef();
      this.worker.postMessage({ id, op, args });
    });
  }

  private onReply(reply: WorkerReply): void {
    const p = this.pending.get(reply.id);
    if (!p) return;
    this.pending.delete(reply.id);
    clearTimeout(p.timer);
    this.updateRef();
    if (reply.ok) p.resolve(reply.value);
    else p.reject(new LibvirtError(reply.error.operation, reply.error, { what: p.what, hint: hintFor(reply.error) }));
  }

  private onWorkerGone(why: string): void {
    if (this.workerGone) return;
    this.workerGone = true;
    if (this.state === 'open') this.state = 'closed';
    this.rejectAll('worker', why);
  }

  private rejectAll(local: LibvirtLocalFailure, message: string): void {
    for (const [id, p] of this.pending) {
      this.pending.delete(id);
      clearTimeout(p.timer);
      p.reject(localError(p.op, local, message, p.what));
    }
    this.updateRef();
  }

  /** The worker keeps the process alive only while a call waits for it. */
  private updateRef(): void {
    if (this.workerGone) return;
    if (this.pending.size > 0) this.worker.ref();
    else this.worker.unref();
  }
}

function domainWhat(domain: string): string {
  return `domain '${domain}'`;
}

function checkpointWhat(domain: string, checkpoint: string): string {
  return `checkpoint '${checkpoint}' of domain '${domain}'`;
}

function localError(op: string, local: LibvirtLocalFailure, message: string, what: string): LibvirtError {
  const code = local === 'timeout' ? VIR_ERR_OPERATION_TIMEOUT : -1;
  return new LibvirtError(OP_FUNCTION[op] ?? op, { code, domain: -1, message, local }, { what });
}

function hintFor(error: LibvirtErrorDetail & { operation: string }): string | undefined {
  if (error.code === VIR_ERR_OPERATION_TIMEOUT && /state change lock/.test(error.message)) {
    return 'another job holds the domain: check it with jobStats() (virsh domjobinfo) before starting one';
  }
  if (error.code === VIR_ERR_AGENT_UNRESPONSIVE || error.code === VIR_ERR_AGENT_UNSYNCED) {
    return 'is qemu-guest-agent running in the guest, on an org.qemu.guest_agent.0 channel?';
  }
  if (error.code === VIR_ERR_CHECKPOINT_INCONSISTENT) {
    return 'the checkpoint\'s bitmap is missing or broken: delete the checkpoint and take a full backup of the disk';
  }
  return undefined;
}
