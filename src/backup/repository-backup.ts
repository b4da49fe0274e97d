// A backup of a VM into a repository, for every control plane: the level chosen per disk, one point in time of all
// disks (the control plane's begin), each disk read over NBD into the repository, one repository backup per disk
// grouped as one VM backup; the new checkpoint is kept only once every disk is durable.
//
// Order (so that the checkpoint chain can never point at a backup that does not exist):
//   inspect → choose the level per disk → begin (checkpoint + point in time, guest frozen around it if asked) →
//   per disk: extents → read → writer.write → writer.finish() (its _metadata is the commit point) → finish().
// Any failure or abort: writers abort (no _metadata), abort() (exports, jobs, scratch, the new checkpoint gone),
// backups of other disks already committed are deleted again; the previous chain stays usable.
import { randomUUID } from 'node:crypto';
import { setTimeout as delay } from 'node:timers/promises';
import { allocatedExtents, dirtyExtents } from '../nbd/context-extents.js';
import { NbdSource } from '../nbd/nbd-source.js';
import { readExtents } from '../nbd/read-extents.js';
import {
  DEFAULT_SHA_BLOCK_SIZE,
  alignRangesToBlocks,
  openRepository,
  prestartWorkers,
  type BackupRecord,
  type BackupWriter,
  type Compression,
  type Repository,
} from '../repository/index.js';
import { AbortedError, InvalidInputError, describeError, throwIfAborted } from '../util/errors.js';
import { getLogger } from '../util/logger.js';
import { testPausePoint } from '../util/test-pause.js';
import { CheckpointBitmapInvalidError, type ControlPlane, type DiskExport, type PointInTime, type QuiesceMode, type SourceDisk } from './control/control-plane.js';
import type { CheckpointCheck } from '../checkpoint/manager.js';
import { chooseBackupLevel, fallBackToCompare, type DiskLevel, type LevelDecision, type RequestedLevel } from './level.js';
import {
  DEFAULT_VERIFY_BITMAP_PERCENT, checkVerifyPercent, cleanBlockRuns, compareHashed, hashSample, runsToRanges, sampleBlocks, systemRandom,
  type HashedSample, type Random,
} from './bitmap-sample.js';
import { SourceLostError } from './errors.js';
import type { BackupJournal, JournalEffect } from './journal.js';
import { volumeIdFor } from './volume-id.js';

const log = getLogger('backup.repository');

export interface RepositoryBackupOptions {
  /** The VM, under its control plane (QMP, libvirt, offline). */
  plane: ControlPlane;
  /** The repository: a directory (created when missing) or an opened Repository. */
  repo: string | Repository;
  /** Default 'auto'. */
  level?: RequestedLevel;
  /** Disk targets to back up; default every disk the control plane can back up. */
  disks?: readonly string[];
  /** Default zstd. */
  compression?: Compression;
  /** Disks read at once (default 1). */
  parallel?: number;
  /** NBD connections per disk (default 2; 1 when the export does not allow multi-conn). */
  connections?: number;
  /** Bytes per second over all disks; default unlimited. */
  bandwidth?: number;
  /**
   * Discard what was read from the scratch export (a writable export, NBD trim). Default false: measured on QEMU 7.2
   * with this fleecing graph (scratch overlay exported), it frees no scratch space, since copy-before-write copies
   * a trimmed cluster again on the next guest write to it (docs/cli.md).
   */
  trim?: boolean;
  /** Freeze the guest's file systems while the point in time is taken. Default 'no'. */
  quiesce?: QuiesceMode | boolean;
  /** The new checkpoint's name; default `fleece-<UTC time>`. */
  checkpointName?: string;
  /** Every effect of the backup is journaled here first (so that a killed process is cleaned up after). */
  journal?: BackupJournal;
  /**
   * Percent of the blocks a dirty bitmap calls clean that an incremental reads and compares with the parent's
   * sha256s (bitmap-sample.ts); any difference makes that disk a compare incremental. 0 trusts the bitmap. Default
   * DEFAULT_VERIFY_BITMAP_PERCENT.
   */
  verifyBitmap?: number;
  /** Chooses the sampled blocks (tests: seededRandom); default seeded from the system's random source. */
  random?: Random;
}

/** Progress: the disk that moved, its bytes, and the totals over all disks. */
export interface RepositoryBackupProgress {
  disk: string;
  bytesDone: number;
  bytesTotal: number;
  totalDone: number;
  totalBytes: number;
}

export type RepositoryBackupEvent =
  | { type: 'level'; level: 'full' | 'incremental'; reason: string; incrementalFrom: string | null; disks: DiskLevel[] }
  | { type: 'started'; checkpoint: string | null; groupId: string; disks: { disk: string; bytesTotal: number }[] }
  | { type: 'disk-done'; disk: string; backupId: string; bytesRead: number; bytesStored: number }
  | { type: 'warning'; message: string };

export interface RepositoryBackupHooks {
  signal?: AbortSignal;
  onProgress?: (progress: RepositoryBackupProgress) => void;
  onEvent?: (event: RepositoryBackupEvent) => void;
}

export interface DiskBackupSummary {
  disk: string;
  /** compare: everything read, what differs by sha256 from the parent stored (no bitmap, or a bitmap proved wrong). */
  level: 'full' | 'incremental' | 'compare';
  reason: string;
  /** The sample of clean blocks hashed against the parent (disks that started as bitmap incrementals). */
  bitmapCheck?: BitmapCheckSummary;
  backupId: string;
  parentId: string | null;
  bytesRead: number;
  bytesStored: number;
  objects: number;
  size: number;
}

export interface BitmapCheckSummary {
  /** The checkpoint whose bitmap was checked. */
  checkpoint: string;
  percent: number;
  blocks: number;
  bytes: number;
  /** Time spent on the check (the parent's sha256s and the sampled reads). */
  durationMs: number;
  /** Where the first clean block that differs from the parent starts (the disk then fell back to compare). */
  mismatchOffset?: number;
}

/** What `fleece backup --json` prints. */
export interface RepositoryBackupSummary {
  vm: string;
  /** Which control plane took the point in time. */
  controlPlane: ControlPlane['kind'];
  level: 'full' | 'incremental';
  reason: string;
  /** The checkpoint this backup ends at (null when no disk can hold a bitmap). */
  checkpoint: string | null;
  incrementalFrom: string | null;
  groupId: string;
  disks: DiskBackupSummary[];
  /** Disks the control plane could not back up, with why. */
  skipped: { disk: string; reason: string }[];
  /** What the user should know (not quiesced, disks skipped, cleanup after an earlier interrupted backup …). */
  warnings: string[];
  durationMs: number;
  bytesRead: number;
  bytesStored: number;
}

/** Spreads reads over time so the total stays under `bytesPerSecond` (shared by every disk). */
class RateLimiter {
  #due = 0;
  constructor(private readonly bytesPerSecond: number) {}

  async take(bytes: number, signal?: AbortSignal): Promise<void> {
    const now = performance.now();
    this.#due = Math.max(this.#due, now) + (bytes / this.bytesPerSecond) * 1000;
    const wait = this.#due - now;
    if (wait > 1) {
      try {
        await delay(wait, undefined, signal ? { signal } : {});
      } catch (error) {
        throw new AbortedError('the backup was aborted', { cause: error });
      }
    }
  }
}

/** The checks with one checkpoint's bitmap on one disk marked inconsistent, with the hypervisor's words. */
function markBitmapInvalid(checks: readonly CheckpointCheck[], error: CheckpointBitmapInvalidError): CheckpointCheck[] {
  return checks.map((c) => {
    if (c.name !== error.checkpoint) return c;
    const disks = c.disks.map((d) => (d.disk === error.disk ? { ...d, state: 'inconsistent' as const, detail: error.detail } : d));
    return { ...c, disks, valid: disks.every((d) => d.state === 'ok') };
  });
}

/**
 * Reads a random sample of the blocks the bitmap calls clean (outside `dirty`) and hashes them, for compareHashed
 * against the sha256s the parent's _sha256file holds (every backup's _sha256file lists every block). Needs nothing of
 * the parent, so it runs while the writer loads them. At most 16 requests of 256 KiB in flight (4 MiB).
 * Throws NbdError, AbortedError.
 */
async function readSample(
  source: NbdSource, blockSize: number, dirty: readonly { offset: number; length: number }[], size: number,
  percent: number, random: Random, limiter: RateLimiter | undefined, signal: AbortSignal,
): Promise<HashedSample> {
  const ranges = runsToRanges(sampleBlocks(cleanBlockRuns(dirty, size, blockSize), percent, random), blockSize, size);
  const maxRequest = Math.max(blockSize, 256 * 1024 - (256 * 1024) % blockSize);
  const pieces = async function* () {
    for await (const piece of readExtents(source, ranges, { maxRequest, concurrency: 16, signal })) {
      if (limiter) await limiter.take(piece.length, signal);
      yield piece;
    }
  };
  return hashSample(pieces(), blockSize);
}

/** What a compare backup reads: the allocated extents, or the whole disk when the export has no base:allocation. */
async function wholeDiskExtents(source: NbdSource, size: number, signal: AbortSignal): Promise<DiskPlan['extents']> {
  if (!source.contexts.includes('base:allocation')) return [{ offset: 0, length: size, zero: false }];
  const extents: DiskPlan['extents'] = [];
  for await (const e of allocatedExtents(source, { signal })) extents.push({ offset: e.offset, length: e.length, zero: e.zero });
  return extents;
}

/**
 * An incremental whose bitmaps mark at most this much is hashed by one worker: a second one would cost more CPU to
 * boot than it saves (a bitmap found wrong then makes a compare backup on that one worker).
 */
const SMALL_INCREMENTAL_BYTES = 16 * 1024 * 1024;

function smallIncremental(plan: DiskPlan): boolean {
  return plan.level.level === 'incremental' && plan.bytesTotal <= SMALL_INCREMENTAL_BYTES;
}

/** A checkpoint name from the clock: `fleece-20250102T030405.678Z`. */
export function defaultCheckpointName(now = new Date()): string {
  return `fleece-${now.toISOString().replace(/[-:]/g, '')}`;
}

/** Runs `work` over `items` with at most `limit` at once; the first failure stops starting new ones and is thrown. */
async function runLimited<T>(items: readonly T[], limit: number, work: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  let failed = false;
  const errors: unknown[] = [];
  const lane = async () => {
    while (!failed && next < items.length) {
      const item = items[next++]!;
      try {
        await work(item);
      } catch (error) {
        failed = true;
        errors.push(error);
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, lane));
  if (errors.length > 0) throw errors[0];
}

function selectDisks(vm: string, all: SourceDisk[], wanted: readonly string[] | undefined, skipped: readonly { target: string; reason: string }[]): SourceDisk[] {
  if (all.length === 0) {
    const why = skipped.length > 0 ? ` (${skipped.map((d) => `${d.target}: ${d.reason}`).join('; ')})` : '';
    throw new InvalidInputError(`VM '${vm}' has no disk to back up${why}`, { hint: 'attach a disk (virtio-blk, scsi-hd …) to the VM' });
  }
  if (!wanted || wanted.length === 0) return all;
  return [...new Set(wanted)].map((target) => {
    const disk = all.find((d) => d.target === target);
    const skip = skipped.find((d) => d.target === target);
    if (!disk && skip) throw new InvalidInputError(`disk '${target}' of VM '${vm}' cannot be backed up: ${skip.reason}`);
    if (!disk) {
      throw new InvalidInputError(`VM '${vm}' has no disk '${target}'`, {
        hint: `use --disk with one of: ${all.map((d) => d.target).join(', ')}`,
      });
    }
    return disk;
  });
}

interface DiskPlan {
  disk: SourceDisk;
  level: DiskLevel;
  bitmapCheck?: BitmapCheckSummary;
  /** An incremental's dirty ranges, aligned to sha blocks: the rest is what the bitmap calls clean. */
  dirty?: { offset: number; length: number }[];
  exp: DiskExport;
  parent?: BackupRecord;
  source?: NbdSource;
  /** Extents to read (data), ascending; zero extents are handed to the writer without reading. */
  extents: { offset: number; length: number; zero: boolean }[];
  bytesTotal: number;
  bytesDone: number;
}

/**
 * Backs up a VM into a repository through its control plane (see the module comment for the order of events).
 * @throws InvalidInputError (unknown disk, bad options), ConflictError (another backup of the VM is running, a
 *   forced incremental that cannot be done), the control plane's errors (QmpError, BackupJobError, LibvirtError,
 *   GuestAgentError with --quiesce), NbdError, StoreError, AbortedError (signal). On every error nothing of the
 *   attempt stays: no new checkpoint, no hypervisor leftovers, no _metadata for it.
 */
export async function backupVmToRepository(options: RepositoryBackupOptions, hooks: RepositoryBackupHooks = {}): Promise<RepositoryBackupSummary> {
  const started = Date.now();
  const { plane } = options;
  const vm = plane.vm;
  const { signal } = hooks;
  const warnings: string[] = [];
  const emit = (event: RepositoryBackupEvent) => {
    if (event.type === 'warning') warnings.push(event.message);
    hooks.onEvent?.(event);
  };
  const parallel = options.parallel ?? 1;
  if (!Number.isInteger(parallel) || parallel < 1 || parallel > 64) {
    throw new InvalidInputError(`--parallel ${parallel} is not an integer from 1 to 64`);
  }
  if (options.bandwidth !== undefined && !(options.bandwidth > 0)) {
    throw new InvalidInputError(`--bandwidth ${options.bandwidth} is not a positive number of bytes per second`, { hint: 'e.g. --bandwidth 50M' });
  }
  const verifyPercent = checkVerifyPercent(options.verifyBitmap ?? DEFAULT_VERIFY_BITMAP_PERCENT);
  const random = options.random ?? systemRandom();
  const quiesce: QuiesceMode = options.quiesce === true ? 'yes' : options.quiesce === false || options.quiesce === undefined ? 'no' : options.quiesce;
  throwIfAborted(signal, `the backup of VM '${vm}'`);
  const repo = typeof options.repo === 'string' ? await openRepository(options.repo) : options.repo;
  // The writers' hashing/compression workers boot while the point in time is taken: one now, the others once the
  // level says a full (or the bitmaps a big incremental). Booting a worker costs ~0.1 s of CPU, more than hashing a
  // small incremental on one.
  prestartWorkers(1);

  // 1. Level: the VM's disks, checkpoints and their state, and what the repository holds.
  const inspection = await plane.inspect(signal ? { signal } : {});
  for (const skip of inspection.skipped) {
    if (!options.disks || options.disks.includes(skip.target)) emit({ type: 'warning', message: `disk ${skip.target} is skipped: ${skip.reason}` });
  }
  const disks = selectDisks(vm, inspection.disks, options.disks, inspection.skipped);
  const records = await repo.list({ vm, ...(signal ? { signal } : {}) });
  let checks = inspection.checks;
  const decide = (): LevelDecision => chooseBackupLevel({
    vm, requested: options.level ?? 'auto', disks, checkpoints: inspection.checkpoints, checks, records,
  });
  let decision = decide();
  const levelOf = (target: string) => decision.disks.find((d) => d.target === target)!;
  if (decision.disks.some((d) => d.level !== 'incremental')) prestartWorkers();

  // 2. The new checkpoint covers the disks that can hold a bitmap.
  const bitmapDisks = disks.filter((d) => d.format === 'qcow2').map((d) => d.target);
  const wantsCheckpoint = inspection.canCheckpoint && bitmapDisks.length > 0;
  if (!inspection.canCheckpoint) {
    emit({ type: 'warning', message: `VM '${vm}' is shut off: no new checkpoint can be made, so the next backup starts from the same checkpoint as this one` });
  } else if (bitmapDisks.length === 0) {
    emit({ type: 'warning', message: `no disk of VM '${vm}' can hold a checkpoint bitmap (not qcow2): the next backup reads every disk whole again (a compare incremental)` });
  }
  const groupId = randomUUID();
  const limiter = options.bandwidth !== undefined ? new RateLimiter(options.bandwidth) : undefined;
  const inner = new AbortController();
  const onOuterAbort = () => inner.abort(signal?.reason);
  signal?.addEventListener('abort', onOuterAbort, { once: true });
  const committed: DiskBackupSummary[] = [];
  /** Backup id → its journal entry. */
  const journaled = new Map<string, { id: number; effect: Extract<JournalEffect, { kind: 'repository-backup' }> }>();
  /** Backups whose writer could not remove what it wrote (the store failed): they stay journaled. */
  const leftBehind = new Map<string, { objects: number; error: unknown }>();
  const forgetRepositoryBackups = async () => {
    for (const [backupId, { id, effect }] of journaled) {
      if (leftBehind.has(backupId)) {
        // Its writer aborted, so it was never committed: the next process need not reach the store to know it.
        await options.journal?.update(id, { ...effect, aborted: true }).catch(() => undefined);
        continue;
      }
      journaled.delete(backupId);
      await options.journal?.clear(id).catch(() => undefined);
    }
  };
  const abortWriter = async (writer: BackupWriter, error: unknown) => {
    await writer.abort(error);
    const left = writer.leftBehind;
    if (left.objects.length > 0) leftBehind.set(writer.backupId, { objects: left.objects.length, error: left.error });
  };
  const writers = new Set<BackupWriter>();
  const plans: DiskPlan[] = [];
  let point: PointInTime | undefined;
  let checkpointName: string | null = null;

  try {
    // 3. One point in time of every disk (with the checkpoint), exported. A bitmap the hypervisor refuses when
    // it takes the point in time (libvirt validates them itself) makes that disk full: decide again and retry.
    const newCheckpoint = options.checkpointName ?? defaultCheckpointName();
    for (let attempt = 0; ; attempt++) {
      try {
        point = await plane.begin({
          disks: disks.map((disk) => {
            const level = levelOf(disk.target);
            return { target: disk.target, ...(level.level === 'incremental' ? { incrementalFrom: level.checkpoint } : {}) };
          }),
          ...(wantsCheckpoint ? { checkpoint: { name: newCheckpoint, disks: bitmapDisks } } : {}),
          quiesce,
          exportWritable: options.trim ?? false,
          ...(options.journal ? { journal: options.journal } : {}),
          signal: inner.signal,
        });
        break;
      } catch (error) {
        if (!(error instanceof CheckpointBitmapInvalidError) || attempt >= 4 * disks.length + 4) throw error;
        log.info({ vm, checkpoint: error.checkpoint, disk: error.disk, detail: error.detail }, 'a checkpoint bitmap was refused; deciding again');
        checks = markBitmapInvalid(checks, error);
        decision = decide();
      }
    }
    emit({ type: 'level', level: decision.level, reason: decision.reason, incrementalFrom: decision.incrementalFrom, disks: decision.disks });
    log.info({ vm, level: decision.level, reason: decision.reason }, 'backup level chosen');
    checkpointName = point.checkpoint;
    for (const warning of point.warnings) emit({ type: 'warning', message: warning });

    // 4. What to read on every disk (so that progress knows the total before the first byte).
    for (const disk of disks) {
      const exp = point.exports.find((e) => e.disk === disk.target)!;
      const level = levelOf(disk.target);
      // base:allocation too, for a compare backup should the bitmap prove wrong (every NBD server of QEMU has it).
      const metaContexts = [...new Set([exp.context, 'base:allocation'])];
      const source = await NbdSource.open(
        exp.socket ? { socket: exp.socket, exportName: exp.exportName } : { uri: exp.uri },
        { metaContexts, connections: options.connections ?? 2, ...(exp.tls ? { tls: exp.tls } : {}), signal: inner.signal },
      );
      if (options.trim && !source.canTrim) {
        emit({ type: 'warning', message: `the export of disk ${disk.target} cannot trim: its scratch image keeps what was read until the backup ends` });
      }
      const plan: DiskPlan = { disk, level, exp, source, extents: [], bytesTotal: 0, bytesDone: 0 };
      plans.push(plan);
      if (level.level === 'incremental') {
        plan.parent = level.parent;
        const dirty: { offset: number; length: number }[] = [];
        for await (const e of dirtyExtents(source, exp.context, { signal: inner.signal })) dirty.push({ offset: e.offset, length: e.length });
        const blockSize = plan.parent.shaBlockSize ?? DEFAULT_SHA_BLOCK_SIZE;
        const aligned = alignRangesToBlocks(dirty, blockSize, exp.size);
        plan.extents = aligned.map((r) => ({ ...r, zero: false }));
        plan.dirty = aligned;
      }
      if (level.level === 'compare') {
        plan.parent = level.parent;
        plan.extents = await wholeDiskExtents(source, exp.size, inner.signal);
      } else if (level.level === 'full') {
        for await (const e of allocatedExtents(source, { signal: inner.signal })) plan.extents.push({ offset: e.offset, length: e.length, zero: e.zero });
      }
      plan.bytesTotal = plan.extents.reduce((n, e) => n + (e.zero ? 0 : e.length), 0);
    }
    let totalBytes = plans.reduce((n, p) => n + p.bytesTotal, 0);
    if (plans.some((p) => !smallIncremental(p))) prestartWorkers();
    let totalDone = 0;
    emit({ type: 'started', checkpoint: checkpointName, groupId, disks: plans.map((p) => ({ disk: p.disk.target, bytesTotal: p.bytesTotal })) });
    for (const p of plans) hooks.onProgress?.({ disk: p.disk.target, bytesDone: 0, bytesTotal: p.bytesTotal, totalDone: 0, totalBytes });

    // 5. Read every disk into its writer; a disk is durable once its writer finished (its _metadata written).
    await runLimited(plans, parallel, async (plan) => {
      const { disk, exp, source } = plan;
      const backupId = randomUUID();
      const volumeId = volumeIdFor(vm, disk.target);
      const created = new Date();
      // Bitmap distrust: a sample of the blocks the bitmap calls clean, read and hashed while the writer loads the
      // parent's sha256s (startBackup), then compared with them.
      const sampling = plan.level.level === 'incremental' && plan.dirty && verifyPercent > 0
        ? { started: performance.now(), hashed: readSample(source!, plan.parent?.shaBlockSize ?? DEFAULT_SHA_BLOCK_SIZE, plan.dirty, exp.size, verifyPercent, random, limiter, inner.signal) }
        : undefined;
      sampling?.hashed.catch(() => undefined); // awaited below, or settled before an error is thrown
      const stopSampling = async (error: unknown) => {
        inner.abort(error);
        await sampling?.hashed.catch(() => undefined);
        throw error;
      };
      if (options.journal && typeof options.repo === 'string') {
        const effect = { kind: 'repository-backup' as const, repo: options.repo, backupId, container: repo.backupContainer(volumeId, created, backupId) };
        journaled.set(backupId, { id: await options.journal.record(effect).catch(stopSampling), effect });
      }
      const writer = await repo.startBackup({
        backupId,
        now: created,
        vm,
        disk: disk.target,
        volumeId,
        size: exp.size,
        ...(plan.parent ? { parent: plan.parent.backupId, mode: plan.level.level === 'compare' ? 'compare' as const : 'changed-extents' as const } : { mode: 'full' as const }),
        ...(options.compression ? { compression: options.compression } : {}),
        ...(checkpointName ? { checkpoint: checkpointName } : {}),
        ...(plan.level.level === 'incremental' ? { incrementalFrom: plan.level.checkpoint } : {}),
        ...(inspection.guestConfig ? { guestConfig: inspection.guestConfig } : {}),
        ...(smallIncremental(plan) ? { workers: 1 } : {}),
        groupId,
        signal: inner.signal,
      }).catch(stopSampling);
      writers.add(writer);
      try {
        if (sampling && plan.level.level === 'incremental' && plan.dirty) {
          // A difference from the parent's sha256s (which the writer has just loaded) makes this disk a compare
          // backup, in the same point in time.
          const { checkpoint } = plan.level;
          let hashed = await sampling.hashed;
          // a Cinder-written parent records no sha block size: its _sha256file's says what the writer uses
          if (hashed.blockSize !== writer.shaBlockSize) hashed = await readSample(source!, writer.shaBlockSize, plan.dirty, exp.size, verifyPercent, random, limiter, inner.signal);
          const sample = compareHashed(hashed, (block) => writer.parentDigest(block));
          plan.bitmapCheck = {
            checkpoint, percent: verifyPercent, blocks: sample.blocks, bytes: sample.bytes, durationMs: Math.round(performance.now() - sampling.started),
            ...(sample.mismatch ? { mismatchOffset: sample.mismatch.offset } : {}),
          };
          log.debug({ vm, disk: disk.target, ...plan.bitmapCheck }, 'bitmap sample checked');
          if (sample.mismatch) {
            const why = `the dirty bitmap of checkpoint ${checkpoint} on disk ${disk.target} missed a write: the block at offset ${sample.mismatch.offset} it calls clean `
              + `differs from backup ${plan.parent!.backupId} (found among ${sample.blocks} sampled blocks, --verify-bitmap ${verifyPercent})`;
            log.warn({ vm, disk: disk.target, checkpoint, ...sample.mismatch }, 'a dirty bitmap missed a write; falling back to compare');
            writer.switchToCompare();
            decision = fallBackToCompare(decision, disk.target, why);
            plan.level = levelOf(disk.target);
            plan.extents = await wholeDiskExtents(source!, exp.size, inner.signal);
            const bytesTotal = plan.extents.reduce((n, e) => n + (e.zero ? 0 : e.length), 0);
            totalBytes += bytesTotal - plan.bytesTotal;
            plan.bytesTotal = bytesTotal;
            emit({ type: 'warning', message: `${why}; disk ${disk.target} falls back to a compare backup (reads the whole disk)` });
            hooks.onProgress?.({ disk: disk.target, bytesDone: plan.bytesDone, bytesTotal, totalDone, totalBytes });
          }
        }
        const { level, bitmapCheck } = plan;
        const zeros = plan.extents.filter((e) => e.zero);
        let z = 0;
        const data = plan.extents.filter((e) => !e.zero);
        // Each request reads a whole object's worth straight into a buffer of the writer, which keeps it as a
        // segment (no copy) and reuses the memory once the object is stored: 4 requests of 4 MiB in flight, about
        // as fast as 8 of 1 MiB, with 4× fewer requests.
        for await (const piece of readExtents(source!, data, {
          maxRequest: Math.min(writer.chunkSize, 32 * 1024 * 1024),
          // At most 32 MiB of read-ahead (S3's 16 MiB objects: 2 requests in flight; the peak RSS budget, writer.ts).
          concurrency: Math.max(1, Math.min(4, Math.floor((32 * 1024 * 1024) / Math.min(writer.chunkSize, 32 * 1024 * 1024)))),
          allocate: () => writer.bufferForRead(),
          trim: source!.canTrim && (options.trim ?? false),
          signal: inner.signal,
        })) {
          while (z < zeros.length && zeros[z]!.offset < piece.offset) await writer.write({ ...zeros[z++]!, zero: true });
          await writer.write({ offset: piece.offset, length: piece.length, data: piece.data }, { handOver: true });
          if (plan.bytesDone === 0) await testPausePoint('mid-read', inner.signal);
          plan.bytesDone += piece.length;
          totalDone += piece.length;
          hooks.onProgress?.({ disk: disk.target, bytesDone: plan.bytesDone, bytesTotal: plan.bytesTotal, totalDone, totalBytes });
          if (limiter) await limiter.take(piece.length, inner.signal);
        }
        while (z < zeros.length) await writer.write({ ...zeros[z++]!, zero: true });
        throwIfAborted(inner.signal, `the backup of disk ${disk.target} of VM '${vm}'`);
        const summary = await writer.finish();
        committed.push({
          disk: disk.target, level: level.level, reason: level.reason, ...(bitmapCheck ? { bitmapCheck } : {}), backupId: summary.backupId, parentId: summary.parentId,
          bytesRead: summary.bytesRead, bytesStored: summary.bytesStored, objects: summary.objects, size: exp.size,
        });
        emit({ type: 'disk-done', disk: disk.target, backupId: summary.backupId, bytesRead: summary.bytesRead, bytesStored: summary.bytesStored });
      } catch (error) {
        inner.abort(error);
        await abortWriter(writer, error);
        throw error;
      } finally {
        writers.delete(writer);
        await source!.close();
        plan.source = undefined;
      }
    });

    // 6. Every disk is durable: end the point in time, which keeps the new checkpoint.
    throwIfAborted(inner.signal, `the backup of VM '${vm}'`);
    const result = await point.finish();
    await forgetRepositoryBackups();
    for (const warning of result.warnings) emit({ type: 'warning', message: warning });
  } catch (error) {
    // A read that failed because QEMU (or the domain) went away says so, not only what the NBD connection saw.
    const lost = point && !signal?.aborted ? await point.lost?.() : undefined;
    inner.abort(error);
    for (const writer of writers) await abortWriter(writer, error);
    for (const plan of plans) await plan.source?.close().catch(() => undefined);
    await point?.abort(error);
    let undone = true;
    for (const c of committed.splice(0)) {
      await repo.delete(c.backupId).catch((e: unknown) => {
        undone = false;
        log.warn({ err: e, backupId: c.backupId }, 'could not delete the backup of a failed VM backup');
      });
    }
    // What could not be deleted stays journaled, for the next process that touches the VM.
    if (undone) await forgetRepositoryBackups();
    for (const [backupId, left] of leftBehind) {
      const next = journaled.has(backupId) ? `the next backup of VM '${vm}' (or \`fleece recover ${vm}\`) removes them` : '`fleece gc` removes them';
      emit({
        type: 'warning',
        message: `up to ${left.objects} object(s) the failed backup ${backupId} wrote could not be removed for sure from ${repo.store.location} (${describeError(left.error)}): ${next} once the repository works again`,
      });
    }
    if (signal?.aborted) {
      throw new AbortedError(`the backup of VM '${vm}' was interrupted; nothing of it was kept and the previous backups and checkpoints are unchanged`, { cause: error });
    }
    if (lost) throw new SourceLostError(vm, lost.why, lost.hint, { cause: error });
    throw error;
  } finally {
    signal?.removeEventListener('abort', onOuterAbort);
  }

  const order = new Map(disks.map((d, i) => [d.target, i]));
  committed.sort((a, b) => order.get(a.disk)! - order.get(b.disk)!);
  return {
    vm,
    controlPlane: plane.kind,
    level: decision.level,
    reason: decision.reason,
    checkpoint: checkpointName,
    incrementalFrom: decision.incrementalFrom,
    groupId,
    disks: committed,
    skipped: inspection.skipped.map((d) => ({ disk: d.target, reason: d.reason })),
    warnings,
    durationMs: Date.now() - started,
    bytesRead: committed.reduce((n, d) => n + d.bytesRead, 0),
    bytesStored: committed.reduce((n, d) => n + d.bytesStored, 0),
  };
}
