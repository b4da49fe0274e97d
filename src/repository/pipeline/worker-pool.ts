// A small pool of worker threads that hash, compress and decompress objects off the main thread.
import { Worker } from 'node:worker_threads';
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { availableParallelism } from 'node:os';
import { fileURLToPath } from 'node:url';
import { FleeceError } from '../../util/errors.js';
import { getLogger } from '../../util/logger.js';
import type { Compression } from '../format/manifest.js';
import { WORKER_SOURCE } from './worker-source.js';

const require = createRequire(import.meta.url);
const log = getLogger('repository.workers');

/**
 * The multi-buffer md5 glue (native/md5-multi/md5-multi.cjs) the workers require, or null when it cannot run here
 * (then they use node:crypto; said once at debug). Found by path, not imported: the repository layer imports no
 * native module, and a worker's eval'd source can only require files anyway. From src/ or dist/src/ alike.
 */
let md5Multi: string | null | undefined;
function md5MultiPath(): string | null {
  if (md5Multi !== undefined) return md5Multi;
  md5Multi = null;
  // Opt-in for now: a jest worker once died with SIGABRT while pools with the library loaded came and went (likely
  // koffi in short-lived worker threads). Until that is understood the workers use node:crypto unless asked.
  if (!process.env.FLEECE_MD5_MULTI) {
    log.debug({ why: 'off unless FLEECE_MD5_MULTI=auto (or avx2, avx512vl)' }, 'multi-buffer md5 off: node:crypto');
    return md5Multi;
  }
  const path = ['../../../native/md5-multi/md5-multi.cjs', '../../../../native/md5-multi/md5-multi.cjs']
    .map((p) => fileURLToPath(new URL(p, import.meta.url))).find((p) => existsSync(p));
  let why = 'native/md5-multi/md5-multi.cjs not found';
  if (path) {
    try {
      const availability = (require(path) as { available(): { available: boolean; why?: string; kernel?: string } }).available();
      if (availability.available) {
        md5Multi = path;
        log.debug({ kernel: availability.kernel }, 'md5 of objects queued together: multi-buffer');
        return md5Multi;
      }
      why = availability.why ?? 'not available';
    } catch (error) {
      why = `cannot load ${path}: ${error instanceof Error ? error.message : String(error)}`;
    }
  }
  log.debug({ why }, 'multi-buffer md5 off: node:crypto');
  return md5Multi;
}

export interface EncodeTask {
  kind: 'encode';
  /** The segment; only its first `length` bytes are encoded, so a partly filled buffer can still be transferred whole. */
  data: Uint8Array;
  length?: number;
  blockSize: number;
  baseline: Uint8Array;
  codec: Compression;
  level: number;
  maxObjectBytes: number;
}
export interface EncodedObject { block: number; length: number; md5: string; compression: Compression; data: Uint8Array }
/** `input`: the task's data handed back (when it was transferred whole) so that its memory can be reused. */
export interface EncodeResult { digests: Uint8Array; objects: EncodedObject[]; input?: Uint8Array }

export interface DecodeTask { kind: 'decode'; data: Uint8Array; compression: Compression; length: number; md5: string; blockSize?: number }
export interface DecodeResult { data?: Uint8Array; digests?: Uint8Array | null; error?: string; found?: string }

export interface HashTask { kind: 'hash'; data: Uint8Array; blockSize: number }
/** A hash task's reply when its data was transferred whole: the digests and the data's buffer handed back. */
export interface HashResult { digests: Uint8Array; input: Uint8Array }

/** The digests of a hash task's reply, and the buffer handed back if any. */
export function hashReply(reply: Uint8Array | HashResult): HashResult | { digests: Uint8Array; input?: undefined } {
  return reply instanceof Uint8Array ? { digests: reply } : reply;
}

type Task = EncodeTask | DecodeTask | HashTask;
interface Pending { resolve: (v: unknown) => void; reject: (e: Error) => void }

/** The default pool size: one worker per core (the main thread mostly waits on I/O). */
export function defaultWorkerCount(): number {
  return Math.max(1, Math.min(8, availableParallelism()));
}

function workerData(): Record<string, unknown> {
  return {
    zstdPath: require.resolve('zstd-napi'), zstdBindingPath: require.resolve('zstd-napi/binding'), bunzipPath: require.resolve('seek-bzip'),
    md5MultiPath: md5MultiPath(),
  };
}

/** Workers started ahead of need (prestartWorkers), not yet taken by a pool; unref'd so that they keep nothing alive. */
const warm: { worker: Worker; failed: boolean }[] = [];

/**
 * Starts `size` workers now, for the next WorkerPool to take: a worker needs a thread, its isolate and the codec
 * libraries before its first task (tens of ms each, more on a busy host), which a backup can overlap with taking
 * its point in time (issue 11: the incremental's fixed cost). Workers nobody takes stay idle, unref'd. Never throws.
 */
export function prestartWorkers(size = defaultWorkerCount()): void {
  try {
    const data = workerData();
    while (warm.length < size) {
      const entry = { worker: new Worker(WORKER_SOURCE, { eval: true, workerData: data }), failed: false };
      entry.worker.unref();
      entry.worker.once('error', (error) => {
        entry.failed = true;
        log.debug({ err: error }, 'a prestarted repository worker failed; a pool starts its own');
      });
      entry.worker.once('exit', () => { entry.failed = true; });
      warm.push(entry);
    }
  } catch (error) {
    log.debug({ err: error }, 'repository workers could not be prestarted');
  }
}

/** A prestarted worker that is still fine (ref'd again: it is the pool's now), or undefined. */
function takeWarm(): Worker | undefined {
  for (let entry = warm.shift(); entry; entry = warm.shift()) {
    entry.worker.removeAllListeners('error').removeAllListeners('exit');
    if (!entry.failed) {
      entry.worker.ref();
      return entry.worker;
    }
    void entry.worker.terminate();
  }
  return undefined;
}

/** Runs tasks on N workers, least-loaded first. close() terminates them; pending tasks then reject. */
export class WorkerPool {
  private readonly workers: Worker[] = [];
  private readonly load: number[] = [];
  private readonly pending = new Map<number, Pending & { worker: number }>();
  private nextId = 1;
  private closed = false;

  constructor(readonly size = defaultWorkerCount()) {
    let data: Record<string, unknown> | undefined;
    for (let i = 0; i < size; i++) {
      const worker = takeWarm() ?? new Worker(WORKER_SOURCE, { eval: true, workerData: (data ??= workerData()) });
      worker.on('message', (msg: { id: number; ok: boolean; result?: unknown; error?: string }) => {
        const p = this.pending.get(msg.id);
        if (!p) return;
        this.pending.delete(msg.id);
        this.load[i]! -= 1;
        if (msg.ok) p.resolve(msg.result);
        else p.reject(new FleeceError('INTERNAL', `repository worker failed: ${msg.error}`));
      });
      worker.on('error', (error) => this.failWorker(i, error));
      worker.on('exit', (code) => this.failWorker(i, new Error(`worker exited with code ${code}`)));
      this.workers.push(worker);
      this.load.push(0);
    }
  }

  private failWorker(index: number, error: Error): void {
    for (const [id, p] of this.pending) {
      if (p.worker !== index) continue;
      this.pending.delete(id);
      p.reject(new FleeceError('INTERNAL', `repository worker ${index} stopped: ${error.message}`, { cause: error }));
    }
  }

  run(task: EncodeTask, transfer?: ArrayBuffer[]): Promise<EncodeResult>;
  run(task: DecodeTask, transfer?: ArrayBuffer[]): Promise<DecodeResult>;
  run(task: HashTask, transfer?: ArrayBuffer[]): Promise<Uint8Array | HashResult>;
  /** Queues a task on the least-loaded worker. Rejects with FleeceError('INTERNAL') when the worker fails or the pool closes. */
  run(task: Task, transfer: ArrayBuffer[] = []): Promise<unknown> {
    if (this.closed) return Promise.reject(new FleeceError('INTERNAL', 'the repository worker pool is closed'));
    let index = 0;
    for (let i = 1; i < this.load.length; i++) if (this.load[i]! < this.load[index]!) index = i;
    const id = this.nextId++;
    this.load[index]! += 1;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject, worker: index });
      this.workers[index]!.postMessage({ id, task }, transfer);
    });
  }

  /** Terminates every worker; pending tasks reject. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await Promise.all(this.workers.map((w) => w.terminate()));
    for (const [id, p] of this.pending) {
      this.pending.delete(id);
      p.reject(new FleeceError('INTERNAL', 'the repository worker pool was closed'));
    }
  }
}

/** The ArrayBuffer of a view when transferring it whole is safe (it owns the buffer), else nothing. */
export function transferable(view: Uint8Array): ArrayBuffer[] {
  const buffer = view.buffer;
  if (buffer instanceof ArrayBuffer && view.byteOffset === 0 && view.byteLength === buffer.byteLength) return [buffer];
  return [];
}
