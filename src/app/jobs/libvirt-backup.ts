// backup-begin as libvirt does it: a <domainbackup> (push or pull) and an optional <domaincheckpoint>, checked and
// resolved against the VM at request time, then started as a push or pull job.
import { existsSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { definitionFromResolved, formatBackupXml, parseBackupXml, resolveBackupDefinition } from '../../backup/definition/index.js';
import type { BackupDefinition, IncludedBackupDisk, ResolvedBackup } from '../../backup/definition/index.js';
import { pullRequestFromResolved, pushDisksFromResolved } from '../../backup/from-resolved.js';
import { startPullBackup, type PullSession } from '../../backup/pull-backup.js';
import { startPushBackup } from '../../backup/push-backup.js';
import type { BackupJobInfo } from '../../backup/backup-job.js';
import { parseCheckpointXml } from '../../checkpoint/checkpoint-xml.js';
import type { PreparedCheckpoint } from '../../checkpoint/manager.js';
import { queryDisks } from '../../qemu/block-graph.js';
import { FleeceError, InvalidInputError } from '../../util/errors.js';
import { nbdTlsForVm, type NbdTls } from '../nbd-tls-settings.js';
import type { DiskProgress } from './job-info.js';
import type { JobHandle, JobProgress, PreparedJob } from './job-handle.js';
import type { VmConnection } from './qmp-pool.js';

export interface BackupBeginRequest {
  backupXml?: string;
  checkpointXml?: string;
  reuseExternal?: boolean;
}

export interface LibvirtBackupContext {
  conn: VmConnection;
  jobId: string;
  /** Job tag for node/job names (fleeceNaming). */
  tag: string;
  runDir: string;
  stateDir: string;
  /** The daemon's NBD TLS credentials for TCP exports (the VM's registry entry may name its own). */
  nbdTls?: NbdTls;
}

/** Re-throws an input error with the request field it came from in front of its message. */
function inField<T>(field: string, work: () => T): T {
  try {
    return work();
  } catch (error) {
    if (error instanceof FleeceError && error.code === 'INVALID_INPUT') {
      throw new InvalidInputError(`${field}: ${error.message}`, { cause: error });
    }
    throw error;
  }
}

async function inFieldAsync<T>(field: string, work: () => Promise<T>): Promise<T> {
  try {
    return await work();
  } catch (error) {
    if (error instanceof FleeceError && (error.code === 'INVALID_INPUT' || error.code === 'CONFLICT' || error.code === 'NOT_FOUND')) {
      throw new FleeceError(error.code, `${field}: ${error.message}`, { cause: error });
    }
    throw error;
  }
}

/** Creates the directories of the images fleece creates (the default target and scratch directories). */
async function makeParents(files: readonly string[]): Promise<void> {
  for (const dir of new Set(files.map((f) => dirname(f)))) await mkdir(dir, { recursive: true, mode: 0o700 });
}

function progressOf(info: BackupJobInfo, exportsByDisk: Map<string, DiskProgress['export']>): JobProgress {
  return {
    dataTotal: info.total,
    dataProcessed: info.processed,
    ...(info.scratchBytes !== undefined ? { scratchBytes: info.scratchBytes } : {}),
    disks: info.disks.map((d) => {
      const exp = exportsByDisk.get(d.disk);
      return { disk: d.disk, state: d.state, total: d.total, processed: d.processed, ...(exp ? { export: exp } : {}) };
    }),
    ...(info.phase === 'failed' ? { failed: info.error ?? 'a disk job failed' } : {}),
  };
}

/**
 * Checks the request against the VM and builds the job. No backup XML means a full pull backup of every disk over a
 * unix socket in the run directory (what `virsh backup-begin` without XML gives a reader); push targets and scratch
 * images the XML leaves out go under `<stateDir>/backups/<vm>/` and `<stateDir>/scratch/<vm>/`. A tcp `<server>`
 * speaks TLS with the VM's credentials (its registry entry's, else the daemon's) when `tls='yes'`, or when
 * credentials are configured and the XML does not say `tls='no'`.
 * @throws InvalidInputError naming the field (backupXml, checkpointXml) and the element; NotFoundError/ConflictError
 *   for checkpoints; QMP errors when QEMU does not answer.
 */
export async function prepareLibvirtBackup(ctx: LibvirtBackupContext, request: BackupBeginRequest): Promise<PreparedJob & { backupXml: string }> {
  const { conn, jobId, tag } = ctx;
  const vm = conn.entry.name;
  const definition: BackupDefinition =
    request.backupXml !== undefined ? inField('backupXml', () => parseBackupXml(request.backupXml as string)) : { mode: 'pull', disks: [] };
  const checkpointDef = request.checkpointXml !== undefined ? inField('checkpointXml', () => parseCheckpointXml(request.checkpointXml as string)) : undefined;

  const tls = nbdTlsForVm(conn.entry, ctx.nbdTls);
  const disks = await queryDisks(conn.qmp);
  const checkpoints = (await conn.checkpoints.list()).map((cp) => cp.name);
  const resolved: ResolvedBackup = inField('backupXml', () =>
    resolveBackupDefinition(definition, {
      disks: disks.map((d) => ({ target: d.target, format: d.format, sizeBytes: d.virtualSize })),
      checkpoints,
      exists: (path) => existsSync(path),
      reuseExternal: request.reuseExternal ?? false,
      defaultTargetDir: join(ctx.stateDir, 'backups', vm),
      defaultScratchDir: join(ctx.stateDir, 'scratch', vm),
      defaultSocket: join(ctx.runDir, `${vm}-${tag}.sock`),
      tlsConfigured: tls !== undefined,
      fileSuffix: jobId,
    }),
  );
  let prepared: PreparedCheckpoint | undefined;
  if (checkpointDef) {
    prepared = await inFieldAsync('checkpointXml', () => conn.checkpoints.prepareCreate(checkpointDef));
  }
  const included = resolved.disks.filter((d): d is IncludedBackupDisk => d.included);
  const incremental = [...new Set(included.map((d) => d.incrementalFrom).filter((x): x is string => x !== undefined))];
  const createdFiles = included.filter((d) => !d.storage.existing).map((d) => d.storage.path);
  const tempBitmaps = included.map((d) => d.exportBitmap ?? `backup-${d.name}`);
  const backupXml = formatBackupXml(definitionFromResolved(resolved));
  const recordCheckpoint = prepared ? () => conn.checkpoints.commitCreated((prepared as PreparedCheckpoint).checkpoint) : undefined;
  const checkpointActions = prepared?.actions ?? [];

  const common = {
    ...(prepared ? { checkpoint: prepared.checkpoint.name } : {}),
    ...(incremental.length > 0 ? { incrementalFrom: incremental.join(',') } : {}),
    backupXml,
  };

  if (resolved.mode === 'push') {
    const pushDisks = inField('backupXml', () => pushDisksFromResolved(resolved, disks));
    return {
      kind: 'push',
      ...common,
      recovery: {
        qmp: conn.entry.qmp,
        tag,
        tempBitmaps,
        ...(prepared ? { newCheckpoint: prepared.checkpoint.name } : {}),
        createdFiles,
        backupXml,
      },
      start: async (signal) => {
        await makeParents(createdFiles);
        const job = await startPushBackup({
          vm,
          qmp: conn.qmp,
          disks: pushDisks,
          checkpointActions,
          ...(recordCheckpoint ? { recordCheckpoint } : {}),
          signal,
          tag,
        });
        const handle: JobHandle = {
          startedState: 'running',
          progress: async () => progressOf(await job.jobInfo(), new Map()),
          done: job.done.then((result) => ({
            disks: result.disks.map((d) => ({ disk: d.disk, path: d.path, format: d.format, sync: d.sync, bytes: d.bytes })),
            warnings: result.warnings,
          })),
          abort: (reason) => job.abort(reason),
        };
        return handle;
      },
    };
  }

  const pull = inField('backupXml', () => pullRequestFromResolved(resolved, disks, tls));
  return {
    kind: 'pull',
    ...common,
    recovery: {
      qmp: conn.entry.qmp,
      tag,
      tempBitmaps,
      ...(prepared ? { newCheckpoint: prepared.checkpoint.name } : {}),
      createdFiles,
      nbdServer: true,
      ...(pull.server.type === 'unix' ? { socket: pull.server.path } : {}),
      backupXml,
    },
    start: async (signal) => {
      await makeParents(createdFiles);
      await mkdir(ctx.runDir, { recursive: true, mode: 0o700 });
      const session: PullSession = await startPullBackup({
        vm,
        qmp: conn.qmp,
        disks: pull.disks,
        server: pull.server,
        ...(pull.tls ? { tls: pull.tls } : {}),
        checkpointActions,
        ...(recordCheckpoint ? { recordCheckpoint } : {}),
        signal,
        tag,
      });
      const exportsByDisk = new Map<string, DiskProgress['export']>(
        session.exports.map((e) => [e.disk, { name: e.exportName, uri: e.uri, ...(e.socket ? { socket: e.socket } : {}), context: e.context }]),
      );
      let settle!: { resolve: (value: unknown) => void; reject: (error: unknown) => void };
      const done = new Promise<unknown>((resolve, reject) => {
        settle = { resolve, reject };
      });
      done.catch(() => undefined);
      const handle: JobHandle = {
        startedState: 'ready',
        progress: async () => progressOf(await session.jobInfo(), exportsByDisk),
        done,
        abort: async (reason) => {
          await session.abort(reason);
          settle.reject(new FleeceError('ABORTED', `the backup of VM '${vm}' was aborted: ${reason}`));
        },
        finish: async () => {
          try {
            const result = await session.finish();
            settle.resolve({ warnings: result.warnings, checkpointBitmaps: result.checkpointBitmaps });
          } catch (error) {
            settle.reject(error);
            throw error;
          }
        },
      };
      return handle;
    },
  };
}
