// A backup into a repository as a daemon job: app/backup-to-repository over the VM's shared QMP connection.
import { backupVmToRepository, type RepositoryBackupOptions } from '../backup-to-repository.js';
import type { DiskProgress } from './job-info.js';
import type { JobHandle, JobProgress, PreparedJob } from './job-handle.js';
import type { VmConnection } from './qmp-pool.js';

export interface RepositoryBackupRequest {
  repo: string;
  level?: 'auto' | 'full' | 'incremental';
  disks?: string[];
  compression?: 'zstd' | 'zlib' | 'bz2' | 'none';
}

export interface RepositoryJobContext {
  conn: VmConnection;
  stateDir: string;
  runDir: string;
}

/** Builds a repository backup job (checked when it starts: level, disks, repository). */
export function prepareRepositoryBackup(ctx: RepositoryJobContext, request: RepositoryBackupRequest): PreparedJob {
  const { conn } = ctx;
  const vm = conn.entry.name;
  return {
    kind: 'repository',
    recovery: { qmp: conn.entry.qmp, repository: request.repo },
    start: async (signal) => {
      const perDisk = new Map<string, DiskProgress>();
      const facts: { checkpoint?: string; incrementalFrom?: string } = {};
      let startedResolve!: () => void;
      const started = new Promise<void>((resolve) => {
        startedResolve = resolve;
      });
      const options: RepositoryBackupOptions = {
        vm,
        qmp: conn.qmp,
        checkpoints: conn.checkpoints,
        repo: request.repo,
        ...(request.level ? { level: request.level } : {}),
        ...(request.disks ? { disks: request.disks } : {}),
        ...(request.compression ? { compression: request.compression } : {}),
        stateDir: ctx.stateDir,
        runDir: ctx.runDir,
        ...(conn.entry.guestAgent ? { guestAgent: conn.entry.guestAgent } : {}),
      };
      const done = backupVmToRepository(options, {
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
