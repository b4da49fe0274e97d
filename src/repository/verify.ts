// Verify: every object of a backup (and its chain) exists, is listed, decodes to its md5; manifests agree; optional deep re-hash.
import { FleeceError, IntegrityError, throwIfAborted } from '../util/errors.js';
import type { Repository, LoadedBackup } from './repository.js';
import { metadataName, sha256FileName } from './format/naming.js';
import { DIGEST_BYTES } from './format/sha256-file.js';
import type { DigestTable } from './digest-table.js';
import { WorkerPool, transferable } from './pipeline/worker-pool.js';

export interface VerifyOptions {
  /** Re-hash every block of every object against the backup's _sha256file. */
  deep?: boolean;
  /** Verify the whole chain up to this backup (default true); false checks this backup alone. */
  chain?: boolean;
  workers?: number;
  signal?: AbortSignal;
  /** Called after each object (objects done, objects total). */
  onProgress?: (done: number, total: number) => void;
}

export interface VerifyProblem {
  backupId: string;
  /** The object (container/name) the problem is about. */
  object: string;
  message: string;
  error: FleeceError;
}

export interface VerifyReport {
  backupId: string;
  ok: boolean;
  backups: string[];
  objectsChecked: number;
  bytesChecked: number;
  problems: VerifyProblem[];
}

function asFleece(error: unknown): FleeceError {
  return error instanceof FleeceError ? error : new FleeceError('INTERNAL', String(error), { cause: error });
}

/** See Repository.verify. Throws only AbortedError and StoreError from listing; everything else is a problem. */
export async function verifyBackup(repo: Repository, backupId: string, options: VerifyOptions = {}): Promise<VerifyReport> {
  const report: VerifyReport = { backupId, ok: false, backups: [], objectsChecked: 0, bytesChecked: 0, problems: [] };
  const problem = (id: string, object: string, error: unknown) => {
    const e = asFleece(error);
    report.problems.push({ backupId: id, object, message: e.message, error: e });
  };
  let chain: LoadedBackup[];
  try {
    chain = options.chain === false ? [await repo.load(backupId)] : await repo.chain(backupId);
  } catch (error) {
    problem(backupId, `backup ${backupId}`, error);
    return report;
  }
  const pool = new WorkerPool(options.workers);
  const tables: DigestTable[] = []; // closed in the end, whatever happens
  try {
    const total = chain.reduce((n, b) => n + b.metadata.objects.length, 0);
    let blockCount: number | undefined;
    for (const { record, metadata } of chain) {
      throwIfAborted(options.signal, `verifying backup ${backupId}`);
      report.backups.push(record.backupId);
      const where = (name: string) => `${record.container}/${name}`;
      // Cinder's check: the container's objects with this prefix are exactly the listed ones.
      const listed = new Set(metadata.objects.map((o) => o.name));
      const present = new Set((await repo.store.list(record.container, record.prefix)).map((o) => o.name));
      present.delete(metadataName(record.prefix));
      const shaName = sha256FileName(record.prefix);
      const hasSha = present.delete(shaName);
      for (const name of present) if (!listed.has(name)) problem(record.backupId, where(name), new IntegrityError(`object ${where(name)} is in the container but not listed in the manifest`, { hint: 'Cinder refuses to restore such a backup; remove the stray object' }));
      // the digests, streamed into a table (memory bounded); only deep verify needs them kept
      let sha: { chunk_size: number; digests: DigestTable } | undefined;
      if (!hasSha) {
        problem(record.backupId, where(shaName), new IntegrityError(`sha256file ${where(shaName)} is missing`));
      } else {
        try {
          const { header, count } = options.deep
            ? await repo.readSha256Table(record, { signal: options.signal }).then((t) => { tables.push(t.table); sha = { chunk_size: t.header.chunk_size, digests: t.table }; return t; })
            : await repo.streamSha256(record, undefined, options.signal);
          const blocks = count;
          const shaHeader = header;
          if (record.shaBlockSize !== undefined && shaHeader.chunk_size !== record.shaBlockSize) throw new IntegrityError(`sha256file ${where(shaName)} has chunk_size ${shaHeader.chunk_size}, the manifest says ${record.shaBlockSize}`);
          if (record.size !== undefined && blocks !== Math.ceil(record.size / shaHeader.chunk_size)) throw new IntegrityError(`sha256file ${where(shaName)} lists ${blocks} blocks, a disk of ${record.size} bytes has ${Math.ceil(record.size / shaHeader.chunk_size)}`);
          if (blockCount !== undefined && record.size === undefined && blocks !== blockCount) throw new IntegrityError(`sha256file ${where(shaName)} lists ${blocks} blocks, its parent ${blockCount}`);
          blockCount = blocks;
        } catch (error) {
          problem(record.backupId, where(shaName), error);
          sha = undefined;
        }
      }
      const limit = pool.size * 2;
      const running = new Set<Promise<void>>();
      for (const entry of metadata.objects) {
        throwIfAborted(options.signal, `verifying backup ${backupId}`);
        const task = (async () => {
          try {
            if (record.size !== undefined && entry.offset + entry.length > record.size) throw new IntegrityError(`object ${where(entry.name)} ends at ${entry.offset + entry.length}, beyond the disk size ${record.size}`);
            const stored = await repo.readObject(record, entry, options.signal);
            const aligned = sha !== undefined && entry.offset % sha.chunk_size === 0;
            const result = await pool.run({
              kind: 'decode', data: stored, compression: entry.compression, length: entry.length, md5: entry.md5,
              ...(options.deep && aligned ? { blockSize: sha!.chunk_size } : {}),
            }, transferable(stored));
            if (result.error) throw new IntegrityError(`object ${where(entry.name)}: ${result.error}`, { expected: entry.md5, found: result.found });
            report.bytesChecked += entry.length;
            if (options.deep && aligned && result.digests) {
              const first = entry.offset / sha!.chunk_size;
              const got = Buffer.from(result.digests.buffer, result.digests.byteOffset, result.digests.byteLength);
              const full = Math.floor(entry.length / sha!.chunk_size) + (entry.offset + entry.length === record.size ? (entry.length % sha!.chunk_size ? 1 : 0) : 0);
              if (first + full > sha!.digests.length) throw new IntegrityError(`object ${where(entry.name)} ends beyond the blocks ${where(shaName)} lists`);
              const wantAll = sha!.digests.read(first, full);
              for (let b = 0; b < full; b++) {
                const want = wantAll.subarray(b * DIGEST_BYTES, (b + 1) * DIGEST_BYTES);
                const have = got.subarray(b * DIGEST_BYTES, (b + 1) * DIGEST_BYTES);
                if (!want.equals(have)) throw new IntegrityError(`object ${where(entry.name)}: block ${first + b} does not match ${where(shaName)}`, { expected: want.toString('hex'), found: have.toString('hex') });
              }
            }
          } catch (error) {
            problem(record.backupId, where(entry.name), error);
          } finally {
            report.objectsChecked += 1;
            options.onProgress?.(report.objectsChecked, total);
          }
        })();
        running.add(task);
        void task.finally(() => running.delete(task));
        if (running.size >= limit) await Promise.race(running);
      }
      await Promise.all(running);
      for (const t of tables.splice(0)) t.close();
    }
  } finally {
    for (const t of tables) t.close();
    await pool.close();
  }
  report.ok = report.problems.length === 0;
  return report;
}
