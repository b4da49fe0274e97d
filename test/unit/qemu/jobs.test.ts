import { readFileSync } from 'node:fs';
import { describe, expect, it } from '@jest/globals';
import { blockdevBackup } from '../../../src/qemu/actions.js';
import { QemuJobError } from '../../../src/qemu/errors.js';
import {
  applyJobEvent,
  cancelJob,
  dismissJob,
  jobResult,
  prepareJobWatch,
  runCreateJob,
  watchJob,
} from '../../../src/qemu/jobs.js';
import { blockExportAdd } from '../../../src/qemu/nbd-export.js';
import { transaction } from '../../../src/qemu/transaction.js';
import { NotFoundError } from '../../../src/util/errors.js';
import { ReplayQmp } from '../../harness/qmp-replay.js';
import { parseTranscript } from '../../harness/qmp-transcript.js';
import { CAPTURES } from './fixtures.js';

/** The lines of a capture from the command with id `from` to the reply with id `to`, minus ids in `skip`. */
function slice(capture: string, from: string, to: string, skip: string[] = []): ReplayQmp {
  const lines = readFileSync(CAPTURES + capture, 'utf8').split('\n');
  const start = lines.findIndex((l) => l.startsWith('>') && l.includes(`"${from}"`));
  const end = lines.findIndex((l) => l.startsWith('<') && l.includes(`"${to}"`));
  const kept = lines
    .slice(start, end + 1)
    .filter((l) => !skip.some((id) => l.includes(`"${id}"`)));
  return new ReplayQmp(parseTranscript(kept.join('\n'), capture));
}

describe('runCreateJob replays libvirt capture 02 (blockdev-create, concluded, query-jobs, job-dismiss)', () => {
  it('sends exactly what libvirt sent', async () => {
    const qmp = slice('02-push-full-cp1.qmp', 'libvirt-416', 'libvirt-418');
    await runCreateJob(qmp, 'create-libvirt-2-format', {
      driver: 'qcow2',
      file: 'libvirt-2-storage',
      size: 1073741824,
      'cluster-size': 65536,
    });
    qmp.assertDone();
  });

  it('throws QemuJobError with the job error text when the job fails (and still dismisses)', async () => {
    const qmp = new ReplayQmp(
      parseTranscript(
        [
          '> {"execute":"blockdev-create","arguments":{"job-id":"c1","options":{"driver":"qcow2","file":"f","size":512}}}',
          '! {"event":"JOB_STATUS_CHANGE","data":{"status":"created","id":"c1"}}',
          '! {"event":"JOB_STATUS_CHANGE","data":{"status":"running","id":"c1"}}',
          '< {"return":{}}',
          '! {"event":"JOB_STATUS_CHANGE","data":{"status":"aborting","id":"c1"}}',
          '! {"event":"JOB_STATUS_CHANGE","data":{"status":"concluded","id":"c1"}}',
          '> {"execute":"query-jobs"}',
          '< {"return":[{"current-progress":0,"status":"concluded","total-progress":1,"type":"create","id":"c1","error":"Could not write qcow2 header: Permission denied"}]}',
          '> {"execute":"job-dismiss","arguments":{"id":"c1"}}',
          '< {"return":{}}',
        ].join('\n'),
      ),
    );
    const run = runCreateJob(qmp, 'c1', { driver: 'qcow2', file: 'f', size: 512 });
    await expect(run).rejects.toThrow(QemuJobError);
    await expect(run).rejects.toThrow(/c1 failed: Could not write qcow2 header: Permission denied/);
    qmp.assertDone();
  });
});

describe('job watch replays libvirt captures', () => {
  it('02: push full watched to concluded, completed with offset = len', async () => {
    // libvirt polled query-jobs twice for progress (421, 422); without onProgress fleece does not.
    const qmp = slice('02-push-full-cp1.qmp', 'libvirt-420', 'libvirt-424', ['libvirt-421', 'libvirt-422']);
    const jobId = 'backup-vda-libvirt-1-format';
    const watch = prepareJobWatch(qmp, jobId);
    await transaction(qmp, [
      { type: 'block-dirty-bitmap-add', data: { node: 'libvirt-1-format', name: 'cp1', persistent: true, disabled: false } },
      blockdevBackup({ jobId, device: 'libvirt-1-format', target: 'libvirt-2-format', sync: 'full' }),
    ]);
    const result = await watch.wait();
    expect(result).toEqual({ status: 'completed', offset: 1073741824, len: 1073741824 });
    await dismissJob(qmp, jobId);
    qmp.assertDone();
  });

  it('06: pull job cancelled with force is reported as cancelled', async () => {
    const qmp = slice('06-pull-full-noscratch.qmp', 'libvirt-474', 'libvirt-478');
    const jobId = 'backup-vda-libvirt-1-format';
    const watch = prepareJobWatch(qmp, jobId);
    await transaction(qmp, [
      blockdevBackup({ jobId, device: 'libvirt-1-format', target: 'libvirt-6-format', sync: 'none' }),
    ]);
    await blockExportAdd(qmp, { id: 'libvirt-nbd-libvirt-6-format', node: 'libvirt-6-format', name: 'vda', writable: false });
    await cancelJob(qmp, jobId, { force: true });
    const result = await watch.wait();
    expect(result).toEqual({ status: 'cancelled', error: 'Operation canceled', offset: 0, len: 1073741824 });
    await dismissJob(qmp, jobId);
    qmp.assertDone();
  });

  it('watchJob on an unknown job throws NotFoundError', async () => {
    const qmp = new ReplayQmp(parseTranscript('> {"execute":"query-jobs"}\n< {"return":[]}'));
    await expect(watchJob(qmp, 'nope')).rejects.toThrow(NotFoundError);
  });

  it('watchJob on a job already concluded returns at once', async () => {
    const qmp = new ReplayQmp(
      parseTranscript(
        [
          '> {"execute":"query-jobs"}',
          '< {"return":[{"current-progress":5,"status":"concluded","total-progress":5,"type":"backup","id":"j"}]}',
          '> {"execute":"query-jobs"}',
          '< {"return":[{"current-progress":5,"status":"concluded","total-progress":5,"type":"backup","id":"j"}]}',
        ].join('\n'),
      ),
    );
    await expect(watchJob(qmp, 'j')).resolves.toEqual({ status: 'completed', offset: 5, len: 5 });
  });

  it('an aborted wait rejects and stops listening', async () => {
    const qmp = new ReplayQmp([]);
    const watch = prepareJobWatch(qmp, 'j');
    const controller = new AbortController();
    const waiting = watch.wait({ signal: controller.signal });
    controller.abort();
    await expect(waiting).rejects.toThrow(/aborted/);
  });
});

describe('job result folding (pure)', () => {
  const ev = (event: string, data: Record<string, unknown>) => ({ event, data, timestamp: { seconds: 0, microseconds: 0 } });
  it('failed when BLOCK_JOB_COMPLETED carries an error', () => {
    let t = applyJobEvent({ status: undefined, cancelledEvent: false }, ev('JOB_STATUS_CHANGE', { id: 'j', status: 'running' }));
    t = applyJobEvent(t, ev('BLOCK_JOB_COMPLETED', { device: 'j', len: 10, offset: 4, error: 'No space left on device' }));
    expect(jobResult(t, undefined)).toEqual({ status: 'failed', error: 'No space left on device', offset: 4, len: 10 });
  });
  it('cancelled when only query-jobs says Operation canceled (non-block job)', () => {
    expect(
      jobResult({ status: 'concluded', cancelledEvent: false }, { id: 'c', type: 'create', status: 'concluded', currentProgress: 0, totalProgress: 1, error: 'Operation canceled' }),
    ).toEqual({ status: 'cancelled', error: 'Operation canceled', offset: 0, len: 1 });
  });
});
