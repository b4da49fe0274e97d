// A small typed client for the fleeced HTTP API over its unix socket (node:http with socketPath, JSON in and out).
import http from 'node:http';
import { stat } from 'node:fs/promises';
import type { CheckpointList, Health, JobInfo, VmEntryBody, VmStatus } from '../app/jobs/api-shapes.js';
import {
  ConflictError,
  FleeceError,
  InvalidInputError,
  NotFoundError,
  describeError,
  type FleeceErrorCode,
} from '../util/errors.js';

export type { CheckpointList, Health, JobInfo, VmEntryBody, VmStatus };

/** The body of POST /v1/vms/:vm/backup-begin. */
export interface BackupBeginBody {
  backupXml?: string;
  checkpointXml?: string;
  reuseExternal?: boolean;
}

/** The body of POST /v1/vms/:vm/checkpoints: the XML, or a name and a description. */
export type CheckpointCreateBody = { xml: string } | { name: string; description?: string };

/** One server-sent event of a job: `state` or `progress`, with the job as it is now. */
export interface JobEvent {
  event: 'state' | 'progress';
  job: JobInfo;
}

/** fleeced could not be reached on its socket (not running, or the socket is stale). */
export class DaemonUnreachableError extends FleeceError {
  readonly socketPath: string;

  constructor(socketPath: string, cause: unknown) {
    super('INTERNAL', `cannot reach fleeced on ${socketPath}: ${describeError(cause)}`, {
      cause,
      hint: 'start fleeced, or remove the stale socket so that fleece works without it',
    });
    this.socketPath = socketPath;
  }
}

const KNOWN_CODES: ReadonlySet<string> = new Set<FleeceErrorCode>([
  'USAGE', 'INVALID_INPUT', 'NOT_FOUND', 'CONFLICT', 'QMP_CONNECT', 'QMP_CLOSED', 'QMP_TIMEOUT', 'QMP_COMMAND',
  'QMP_PROTOCOL', 'QEMU_JOB', 'NBD', 'STORE', 'INTEGRITY', 'ABORTED', 'INTERNAL',
]);

/**
 * The FleeceError for an API error reply: InvalidInputError for 400, NotFoundError for 404, ConflictError for 409,
 * else a FleeceError with the daemon's code (INTERNAL when it is not one of fleece's). The message is the daemon's.
 */
export function errorFromReply(status: number, body: unknown, what: string): FleeceError {
  const error = (body as { error?: { code?: unknown; message?: unknown } } | undefined)?.error;
  const message = typeof error?.message === 'string' ? error.message : `${what}: fleeced answered HTTP ${status}`;
  const code = typeof error?.code === 'string' ? error.code : '';
  if (status === 400 || code === 'INVALID_INPUT') return new InvalidInputError(message);
  if (status === 404 || code === 'NOT_FOUND') return new NotFoundError(message);
  if (status === 409 || code === 'CONFLICT') return new ConflictError(message);
  return new FleeceError(KNOWN_CODES.has(code) ? (code as FleeceErrorCode) : 'INTERNAL', message);
}

interface RawReply {
  status: number;
  text: string;
}

const seg = encodeURIComponent;

/** A client of one fleeced. Every call throws the errors of `errorFromReply`, or DaemonUnreachableError. */
export class DaemonClient {
  readonly socketPath: string;

  constructor(socketPath: string) {
    this.socketPath = socketPath;
  }

  #raw(method: string, path: string, body: unknown, signal: AbortSignal | undefined): Promise<RawReply> {
    return new Promise((resolve, reject) => {
      const payload = body === undefined ? undefined : JSON.stringify(body);
      const req = http.request(
        {
          socketPath: this.socketPath,
          method,
          path,
          headers: payload === undefined ? {} : { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) },
          ...(signal ? { signal } : {}),
        },
        (res) => {
          let text = '';
          res.setEncoding('utf8');
          res.on('data', (chunk: string) => (text += chunk));
          res.on('end', () => resolve({ status: res.statusCode ?? 0, text }));
          res.on('error', reject);
        },
      );
      req.on('error', (error: NodeJS.ErrnoException) => {
        if (error.name === 'AbortError') reject(error);
        else reject(new DaemonUnreachableError(this.socketPath, error));
      });
      if (payload !== undefined) req.write(payload);
      req.end();
    });
  }

  /** One JSON request; resolves with the parsed body (undefined for 204). */
  async request<T>(method: string, path: string, body?: unknown, options: { signal?: AbortSignal } = {}): Promise<T> {
    const reply = await this.#raw(method, path, body, options.signal);
    let parsed: unknown;
    if (reply.text !== '') {
      try {
        parsed = JSON.parse(reply.text);
      } catch (error) {
        throw new FleeceError('INTERNAL', `${method} ${path}: fleeced answered HTTP ${reply.status} with a body that is not JSON`, { cause: error });
      }
    }
    if (reply.status < 200 || reply.status >= 300) throw errorFromReply(reply.status, parsed, `${method} ${path}`);
    return parsed as T;
  }

  health(options: { signal?: AbortSignal } = {}): Promise<Health> {
    return this.request<Health>('GET', '/v1/health', undefined, options);
  }

  async listVms(): Promise<VmEntryBody[]> {
    return (await this.request<{ vms: VmEntryBody[] }>('GET', '/v1/vms')).vms;
  }

  async addVm(entry: VmEntryBody): Promise<VmEntryBody> {
    return (await this.request<{ vm: VmEntryBody }>('POST', '/v1/vms', entry)).vm;
  }

  async removeVm(vm: string): Promise<void> {
    await this.request('DELETE', `/v1/vms/${seg(vm)}`);
  }

  /** @throws NotFoundError when the daemon does not know the VM. */
  vm(vm: string): Promise<VmStatus> {
    return this.request<VmStatus>('GET', `/v1/vms/${seg(vm)}`);
  }

  checkpoints(vm: string): Promise<CheckpointList> {
    return this.request<CheckpointList>('GET', `/v1/vms/${seg(vm)}/checkpoints`);
  }

  async checkpointTree(vm: string): Promise<string> {
    return (await this.request<{ text: string }>('GET', `/v1/vms/${seg(vm)}/checkpoints/tree`)).text;
  }

  createCheckpoint(vm: string, body: CheckpointCreateBody): Promise<{ name: string; xml: string }> {
    return this.request('POST', `/v1/vms/${seg(vm)}/checkpoints`, body);
  }

  redefineCheckpoint(vm: string, xml: string): Promise<{ name: string }> {
    return this.request('POST', `/v1/vms/${seg(vm)}/checkpoints/redefine`, { xml });
  }

  checkpointXml(vm: string, name: string, options: { size?: boolean } = {}): Promise<{ name: string; xml: string }> {
    return this.request('GET', `/v1/vms/${seg(vm)}/checkpoints/${seg(name)}${options.size ? '?size=true' : ''}`);
  }

  async deleteCheckpoint(vm: string, name: string, options: { metadataOnly?: boolean } = {}): Promise<void> {
    await this.request('DELETE', `/v1/vms/${seg(vm)}/checkpoints/${seg(name)}${options.metadataOnly ? '?metadataOnly=true' : ''}`);
  }

  /** POST /v1/vms/:vm/backups: a repository backup job, with the same options as `fleece backup`. */
  async repositoryBackup(vm: string, body: Record<string, unknown>): Promise<JobInfo> {
    return (await this.request<{ job: JobInfo }>('POST', `/v1/vms/${seg(vm)}/backups`, body)).job;
  }

  async backupBegin(vm: string, body: BackupBeginBody): Promise<JobInfo> {
    return (await this.request<{ job: JobInfo }>('POST', `/v1/vms/${seg(vm)}/backup-begin`, body)).job;
  }

  /** domjobinfo: the VM's active job, or with `completed` its last finished one; null when there is none. */
  async vmJob(vm: string, options: { completed?: boolean } = {}): Promise<JobInfo | null> {
    return (await this.request<{ job: JobInfo | null }>('GET', `/v1/vms/${seg(vm)}/job?completed=${options.completed ? 'true' : 'false'}`)).job;
  }

  /** domjobabort: resolves with the job once it ended. @throws NotFoundError when the VM has no active job. */
  async abortVmJob(vm: string): Promise<JobInfo> {
    return (await this.request<{ job: JobInfo }>('POST', `/v1/vms/${seg(vm)}/job/abort`)).job;
  }

  async backupXml(vm: string): Promise<string> {
    return (await this.request<{ xml: string }>('GET', `/v1/vms/${seg(vm)}/backup-xml`)).xml;
  }

  async jobs(): Promise<JobInfo[]> {
    return (await this.request<{ jobs: JobInfo[] }>('GET', '/v1/jobs')).jobs;
  }

  async job(id: string): Promise<JobInfo> {
    return (await this.request<{ job: JobInfo }>('GET', `/v1/jobs/${seg(id)}`)).job;
  }

  async abortJob(id: string): Promise<JobInfo> {
    return (await this.request<{ job: JobInfo }>('POST', `/v1/jobs/${seg(id)}/abort`)).job;
  }

  async finishJob(id: string): Promise<JobInfo> {
    return (await this.request<{ job: JobInfo }>('POST', `/v1/jobs/${seg(id)}/finish`)).job;
  }

  /**
   * The job's events (SSE) until the daemon ends the stream (the job reached a final state) or `signal` fires.
   * @throws the errors of `errorFromReply` when the job does not exist; DaemonUnreachableError.
   */
  async *jobEvents(id: string, options: { signal?: AbortSignal } = {}): AsyncGenerator<JobEvent> {
    const res = await new Promise<http.IncomingMessage>((resolve, reject) => {
      const req = http.request({ socketPath: this.socketPath, method: 'GET', path: `/v1/jobs/${seg(id)}/events`, ...(options.signal ? { signal: options.signal } : {}) }, resolve);
      req.on('error', (error: NodeJS.ErrnoException) => reject(error.name === 'AbortError' ? error : new DaemonUnreachableError(this.socketPath, error)));
      req.end();
    });
    res.setEncoding('utf8');
    if ((res.statusCode ?? 0) !== 200) {
      let text = '';
      for await (const chunk of res) text += chunk as string;
      let body: unknown;
      try {
        body = JSON.parse(text);
      } catch {
        body = undefined;
      }
      throw errorFromReply(res.statusCode ?? 0, body, `events of job ${id}`);
    }
    let buffer = '';
    for await (const chunk of res) {
      buffer += chunk as string;
      let cut: number;
      while ((cut = buffer.indexOf('\n\n')) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        const event = parseSseBlock(block);
        if (event) yield event;
      }
    }
  }
}

/** One SSE block (`event:` and `data:` lines) as a JobEvent; undefined for comments and other events. */
export function parseSseBlock(block: string): JobEvent | undefined {
  let event = 'message';
  const data: string[] = [];
  for (const line of block.split('\n')) {
    if (line.startsWith('event:')) event = line.slice(6).trim();
    else if (line.startsWith('data:')) data.push(line.slice(5).replace(/^ /, ''));
  }
  if ((event !== 'state' && event !== 'progress') || data.length === 0) return undefined;
  return { event, job: JSON.parse(data.join('\n')) as JobInfo };
}

/**
 * A client of the fleeced answering on `socketPath`, or undefined when no socket is there or nothing answers
 * `GET /v1/health` within `timeoutMs` (a stale socket). Never throws.
 */
export async function detectDaemon(socketPath: string, options: { timeoutMs?: number } = {}): Promise<DaemonClient | undefined> {
  try {
    if (!(await stat(socketPath)).isSocket()) return undefined;
  } catch {
    return undefined;
  }
  const client = new DaemonClient(socketPath);
  try {
    await client.health({ signal: AbortSignal.timeout(options.timeoutMs ?? 3000) });
    return client;
  } catch {
    return undefined;
  }
}
