// A backup through an external provider as a daemon job: the same request and use case as `fleece backup VM
// --provider NAME` (app/provider-backup.ts), over the VM's shared QMP connection for a bare QEMU, through libvirt for
// a libvirt domain. The provider reads the exports itself: the job knows the bytes it was handed (the dirty regions)
// and counts them processed when backup-vm answered.
import { checkBackupRequest } from '../backup-request.js';
import { runProviderBackup } from '../provider-backup.js';
import type { DiskProgress } from './job-info.js';
import type { JobHandle, JobProgress, PreparedJob } from './job-handle.js';
import type { RepositoryBackupRequest, RepositoryJobContext } from './repository-backup.js';

/** Builds a provider backup job (the request is checked now; the provider and the VM when it starts). */
export function prepareProviderBackup(ctx: RepositoryJobContext & { configDir: string }, body: RepositoryBackupRequest): PreparedJob {
  const { entry, conn } = ctx;
  const request = checkBackupRequest({ ...body, vm: entry.name });
  return {
    kind: 'provider',
    recovery: { ...(entry.qmp ? { qmp: entry.qmp } : {}), ...(entry.connect ? { connect: entry.connect } : {}) },
    start: async (signal) => {
      const perDisk = new Map<string, DiskProgress>();
      const facts: { checkpoint?: string; incrementalFrom?: string } = {};
      let startedResolve!: () => void;
      const started = new Promise<void>((resolve) => {
        startedResolve = resolve;
      });
      const done = runProviderBackup(entry, request, {
        stateDir: ctx.stateDir,
        runDir: ctx.runDir,
        configDir: ctx.configDir,
        ...(conn ? { qmp: { qmp: conn.qmp, checkpoints: conn.checkpoints } } : {}),
      }, {
        signal,
        onEvent: (event) => {
          if (event.type === 'bitmaps') {
            const reused = event.disks.find((d) => d.incrementalFrom !== undefined);
            if (reused?.incrementalFrom) facts.incrementalFrom = reused.incrementalFrom;
          }
          if (event.type === 'started') {
            if (event.checkpoint) facts.checkpoint = event.checkpoint;
            for (const d of event.disks) perDisk.set(d.disk, { disk: d.disk, state: 'running', total: d.dirtyBytes, processed: 0 });
            startedResolve();
          }
        },
      }).then((summary) => {
        for (const [disk, d] of perDisk) perDisk.set(disk, { ...d, state: 'complete', processed: d.total });
        return summary;
      });
      await Promise.race([started, done.then(() => undefined)]);
      const handle: JobHandle = {
        startedState: 'running',
        progress: async (): Promise<JobProgress> => {
          const disks = [...perDisk.values()];
          return { dataTotal: disks.reduce((n, d) => n + d.total, 0), dataProcessed: disks.reduce((n, d) => n + d.processed, 0), disks, ...facts };
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
