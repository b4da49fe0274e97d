// A backup into a repository as a daemon job: the same request and use case as `fleece backup` (app/run-backup),
// over the VM's shared QMP connection for a bare QEMU, through libvirt for a libvirt domain.
import { checkBackupRequest, type BackupRequest } from '../backup-request.js';
import { runBackup } from '../run-backup.js';
import type { DiskProgress } from './job-info.js';
import type { JobHandle, JobProgress, PreparedJob } from './job-handle.js';
import type { VmConnection } from './qmp-pool.js';
import type { VmEntry } from '../vm-registry.js';

/** The API body: a BackupRequest less what the daemon knows itself (the VM and how to reach it). */
export type RepositoryBackupRequest = Omit<BackupRequest, 'vm' | 'qmp' | 'guestAgent' | 'connect'>;

export interface RepositoryJobContext {
  entry: VmEntry;
  /** The pooled QMP connection of a bare QEMU (absent for a libvirt domain). */
  conn?: VmConnection;
  stateDir: string;
  runDir: string;
  /** Where backup providers are registered: the reconcile before the backup owes a killed provider run's cleanups. */
  configDir?: string;
}

/** Builds a repository backup job (checked when it starts: level, disks, repository). */
export function prepareRepositoryBackup(ctx: RepositoryJobContext, body: RepositoryBackupRequest): PreparedJob {
  const { entry, conn } = ctx;
  const request = checkBackupRequest({ ...body, vm: entry.name });
  return {
    kind: 'repository',
    recovery: { ...(entry.qmp ? { qmp: entry.qmp } : {}), ...(entry.connect ? { connect: entry.connect } : {}), repository: request.repo },
    start: async (signal) => {
      const perDisk = new Map<string, DiskProgress>();
      const facts: { checkpoint?: string; incrementalFrom?: string } = {};
      let startedResolve!: () => void;
      const started = new Promise<void>((resolve) => {
        startedResolve = resolve;
      });
      const done = runBackup(entry, request, {
        stateDir: ctx.stateDir,
        runDir: ctx.runDir,
        ...(ctx.configDir ? { configDir: ctx.configDir } : {}),
        ...(conn ? { qmp: { qmp: conn.qmp, checkpoints: conn.checkpoints } } : {}),
      }, {
        signal,
        onEvent: (event) => {
          if (event.type === 'level' && event.incrementalFrom) facts.incrementalFrom = event.incrementalFrom;
          if (event.type === 'started') {
            if (event.checkpoint) facts.checkpoint = event.checkpoint;
            for (const d of event.disks) perDisk.set(d.disk, { disk: d.disk, state: 'running', total: d.bytesTotal, processed: 0 });
            startedResolve();
          }
          if (event.type === 'disk-done') {
            const d = perDisk.get(event.disk);
            if (d) perDisk.set(event.disk, { ...d, state: 'complete', processed: d.total });
          }
        },
        onProgress: (p) => {
          const d = perDisk.get(p.disk);
          perDisk.set(p.disk, { disk: p.disk, state: d?.state ?? 'running', total: p.bytesTotal, processed: p.bytesDone });
        },
      });
      // The job counts as started once the snapshot is taken (or it ended before that).
      await Promise.race([started, done.then(() => undefined)]);
      const handle: JobHandle = {
        startedState: 'running',
        progress: async (): Promise<JobProgress> => {
          const disks = [...perDisk.values()];
          return {
            dataTotal: disks.reduce((n, d) => n + d.total, 0),
            dataProcessed: disks.reduce((n, d) => n + d.processed, 0),
            disks,
            ...facts,
          };
        },
        done,
        abort: async () => {
          await done.catch(() => undefined);
        },
      };
      return handle;
    },
  };
}
