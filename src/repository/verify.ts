// Verify: every object of a backup (and its chain) exists, is listed, decodes to its md5; manifests agree; optional deep
// re-hash. Scrub: the same checks (deep) on a random sample of objects across many backups.
import { randomInt } from 'node:crypto';
import { AbortedError, FleeceError, IntegrityError, InvalidInputError, NotFoundError, throwIfAborted } from '../util/errors.js';
import type { Repository, LoadedBackup } from './repository.js';
import type { BackupRecord } from './catalog.js';
import { parseMetadataStream, type ObjectEntry } from './format/manifest.js';
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

// Scrub: a random sample of the objects of many backups, each checked like deep verify (length, md5, and the sha256
// of every whole block against its backup's _sha256file). A damaged object damages every backup that reads it on
// restore: its own and every incremental built on it (their chains include it).

export interface ScrubOptions {
  /** The share of objects to check, in percent: more than 0, at most 100. */
  percent: number;
  /** Only the chains of these backups (default: every backup in the repository). */
  backupIds?: readonly string[];
  /** Seeds the choice (default random); the report gives the seed used, so a run can be repeated. */
  seed?: number;
  workers?: number;
  signal?: AbortSignal;
  /** Called after each object (objects done, objects to check). */
  onProgress?: (done: number, total: number) => void;
}

export interface ScrubProblem {
  /** The backup the damaged object belongs to (null: a manifest so damaged that it does not say). */
  backupId: string | null;
  object: string;
  message: string;
  error: FleeceError;
  /** Every backup whose restore reads it: its own and the incrementals on it, oldest first. */
  affected: string[];
}

export interface ScrubReport {
  ok: boolean;
  percent: number;
  seed: number;
  /** Backups in scope, and those whose sampled objects were checked. */
  backups: number;
  backupsSampled: number;
  objectsTotal: number;
  objectsChecked: number;
  bytesChecked: number;
  problems: ScrubProblem[];
  /** The union of the problems' affected backups, oldest first. */
  damaged: string[];
}

/** A small seeded generator (mulberry32): uniform in [0, 1). */
function random01(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * Checks a random `percent` of the objects of the repository's backups (or of `backupIds`' chains); exactly
 * ceil(total × percent / 100) of them, chosen uniformly (selection sampling, so only the manifests of backups with
 * a chosen object are read). Problems are reported, not thrown, each with the backups it affects. Throws
 * InvalidInputError for a bad percent, NotFoundError for an unknown backup id, StoreError from listing, AbortedError.
 */
export async function scrubRepository(repo: Repository, options: ScrubOptions): Promise<ScrubReport> {
  const { percent } = options;
  if (!(percent > 0 && percent <= 100)) throw new InvalidInputError(`sample ${percent} % is not a percentage`, { hint: 'give more than 0 and at most 100, e.g. --sample 5' });
  const seed = options.seed ?? randomInt(0, 2 ** 32 - 1);
  const { records, problems: scanProblems } = await repo.scan(options.signal);
  const byId = new Map(records.map((r) => [r.backupId, r]));
  const children = new Map<string, string[]>();
  for (const r of records) if (r.parentId !== null) children.set(r.parentId, [...(children.get(r.parentId) ?? []), r.backupId]);
  const order = new Map(records.map((r, i) => [r.backupId, i]));
  const affected = (id: string): string[] => {
    const out = new Set([id]);
    for (const x of out) for (const c of children.get(x) ?? []) out.add(c);
    return [...out].sort((a, b) => (order.get(a) ?? -1) - (order.get(b) ?? -1));
  };

  let scope = records;
  if (options.backupIds !== undefined) {
    const ids = new Set<string>();
    for (const id of options.backupIds) {
      if (!byId.has(id)) throw new NotFoundError(`backup ${id} is not in the repository at ${repo.store.location}`, { hint: 'list the backups to find its id' });
      for (let r = byId.get(id); r && !ids.has(r.backupId); r = r.parentId !== null ? byId.get(r.parentId) : undefined) ids.add(r.backupId);
    }
    scope = records.filter((r) => ids.has(r.backupId));
  }
  const report: ScrubReport = {
    ok: false, percent, seed, backups: scope.length, backupsSampled: 0, objectsTotal: 0, objectsChecked: 0, bytesChecked: 0, problems: [], damaged: [],
  };
  const problem = (backupId: string | null, object: string, error: unknown) => {
    const e = asFleece(error);
    report.problems.push({ backupId, object, message: e.message, error: e, affected: backupId === null ? [] : affected(backupId) });
  };
  if (options.backupIds === undefined) {
    for (const p of scanProblems) {
      const id = /_backup_([A-Za-z0-9][A-Za-z0-9-]{3,})_metadata$/.exec(p.object)?.[1] ?? null;
      problem(id, `${p.container}/${p.object}`, p.error);
    }
  }

  const total = scope.reduce((n, r) => n + r.objects, 0);
  const wanted = Math.min(total, Math.ceil((total * percent) / 100));
  report.objectsTotal = total;
  const rnd = random01(seed);
  let seen = 0;
  let chosen = 0;
  const pool = new WorkerPool(options.workers);
  try {
    for (const record of scope) {
      throwIfAborted(options.signal, 'scrubbing the repository');
      // Knuth's selection sampling: object i of the N is taken with probability (still wanted) / (still to see).
      const picks: number[] = [];
      for (let i = 0; i < record.objects; i++, seen++) {
        if (rnd() * (total - seen) < wanted - chosen) { picks.push(i); chosen += 1; }
      }
      if (picks.length === 0) continue;
      report.backupsSampled += 1;
      await scrubBackup(repo, record, picks, pool, options, report, problem);
    }
  } finally {
    await pool.close();
  }
  const damaged = new Set(report.problems.flatMap((p) => p.affected));
  report.damaged = [...damaged].sort((a, b) => (order.get(a) ?? -1) - (order.get(b) ?? -1));
  report.ok = report.problems.length === 0;
  return report;
}

/** Checks the objects at `picks` (indices into the manifest's list) of one backup. Problems go to `problem`. */
async function scrubBackup(
  repo: Repository, record: BackupRecord, picks: number[], pool: WorkerPool, options: ScrubOptions, report: ScrubReport,
  problem: (backupId: string | null, object: string, error: unknown) => void,
): Promise<void> {
  const where = (name: string) => `${record.container}/${name}`;
  const metaName = metadataName(record.prefix);
  let objects: ObjectEntry[];
  try {
    objects = (await parseMetadataStream(repo.store.getStream(record.container, metaName, { signal: options.signal }), where(metaName))).objects;
  } catch (error) {
    if (error instanceof AbortedError) throw error;
    problem(record.backupId, where(metaName), error);
    return;
  }
  const entries = picks.filter((i) => i < objects.length).map((i) => objects[i]!);
  // The digests of the blocks the chosen objects cover, streamed out of the _sha256file (never whole in memory).
  const shaName = sha256FileName(record.prefix);
  let bs: number | undefined;
  const ranges: { entry: ObjectEntry; first: number; count: number; digests: Buffer; filled: number }[] = [];
  try {
    bs = record.shaBlockSize ?? (await repo.streamSha256(record, undefined, options.signal)).header.chunk_size;
    for (const entry of entries) {
      if (entry.offset % bs !== 0) continue; // a Cinder object not aligned to sha blocks: md5 only
      const whole = Math.floor(entry.length / bs) + (record.size !== undefined && entry.offset + entry.length === record.size && entry.length % bs ? 1 : 0);
      if (whole > 0) ranges.push({ entry, first: entry.offset / bs, count: whole, digests: Buffer.alloc(whole * DIGEST_BYTES), filled: 0 });
    }
    ranges.sort((a, b) => a.first - b.first);
    let p = 0;
    const { header } = await repo.streamSha256(record, (first, digests) => {
      const n = digests.length / DIGEST_BYTES;
      while (p < ranges.length && ranges[p]!.first + ranges[p]!.count <= first) p++;
      for (let j = p; j < ranges.length && ranges[j]!.first < first + n; j++) {
        const r = ranges[j]!;
        const from = Math.max(first, r.first);
        const to = Math.min(first + n, r.first + r.count);
        if (to <= from) continue;
        digests.copy(r.digests, (from - r.first) * DIGEST_BYTES, (from - first) * DIGEST_BYTES, (to - first) * DIGEST_BYTES);
        r.filled += to - from;
      }
    }, options.signal);
    if (header.chunk_size !== bs) throw new IntegrityError(`sha256file ${where(shaName)} has chunk_size ${header.chunk_size}, the manifest says ${bs}`);
  } catch (error) {
    if (error instanceof AbortedError) throw error;
    problem(record.backupId, where(shaName), error);
    ranges.length = 0; // md5 only
  }
  const byEntry = new Map(ranges.map((r) => [r.entry, r]));
  const limit = pool.size * 2;
  const running = new Set<Promise<void>>();
  for (const entry of entries) {
    throwIfAborted(options.signal, 'scrubbing the repository');
    const task = (async () => {
      try {
        const range = byEntry.get(entry);
        if (range && range.filled !== range.count) throw new IntegrityError(`object ${where(entry.name)} covers blocks ${where(shaName)} does not list`);
        const stored = await repo.readObject(record, entry, options.signal);
        const result = await pool.run({
          kind: 'decode', data: stored, compression: entry.compression, length: entry.length, md5: entry.md5, ...(range ? { blockSize: bs! } : {}),
        }, transferable(stored));
        if (result.error) throw new IntegrityError(`object ${where(entry.name)}: ${result.error}`, { expected: entry.md5, found: result.found });
        if (range && result.digests) {
          const got = Buffer.from(result.digests.buffer, result.digests.byteOffset, result.digests.byteLength);
          for (let b = 0; b < range.count; b++) {
            const want = range.digests.subarray(b * DIGEST_BYTES, (b + 1) * DIGEST_BYTES);
            const have = got.subarray(b * DIGEST_BYTES, (b + 1) * DIGEST_BYTES);
            if (!want.equals(have)) throw new IntegrityError(`object ${where(entry.name)}: block ${range.first + b} does not match ${where(shaName)}`, { expected: want.toString('hex'), found: have.toString('hex') });
          }
        }
        report.bytesChecked += entry.length;
      } catch (error) {
        if (error instanceof AbortedError) throw error;
        problem(record.backupId, where(entry.name), error);
      } finally {
        report.objectsChecked += 1;
        options.onProgress?.(report.objectsChecked, Math.ceil((report.objectsTotal * options.percent) / 100));
      }
    })();
    running.add(task);
    void task.finally(() => running.delete(task)).catch(() => undefined);
    if (running.size >= limit) await Promise.race(running);
  }
  await Promise.all(running);
}
