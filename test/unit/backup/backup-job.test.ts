// BackupJobRun against a scripted fake monitor: the commit records its effects, a failed disk cancels its siblings,
// and the rollback sends exactly the undo commands in QEMU's order.
import { QmpEventHub, QmpError, type QmpExecutor, type QmpEvent } from '../../../src/qmp/index.js';
import { BackupJobRun } from '../../../src/backup/backup-job.js';
import { fleeceNaming, planBackup, type PlanSourceDisk } from '../../../src/backup/plan.js';
import { BackupJobError } from '../../../src/backup/errors.js';

class FakeMonitor implements QmpExecutor {
  readonly hub = new QmpEventHub();
  readonly sent: { execute: string; arguments?: Record<string, unknown> }[] = [];
  jobs: { id: string; type: string; status: string; 'current-progress': number; 'total-progress': number; error?: string }[] = [];

  async execute<T>(command: string, args?: Record<string, unknown>): Promise<T> {
    this.sent.push({ execute: command, ...(args ? { arguments: args } : {}) });
    if (command === 'query-jobs') return structuredClone(this.jobs) as T;
    if (command === 'transaction') {
      for (const a of (args?.actions ?? []) as { type: string; data: Record<string, unknown> }[]) {
        if (a.type === 'blockdev-backup') this.jobs.push({ id: String(a.data['job-id']), type: 'backup', status: 'running', 'current-progress': 0, 'total-progress': 100 });
      }
    }
    if (command === 'block-job-cancel') {
      const id = String(args?.device);
      queueMicrotask(() => this.end(id, 'BLOCK_JOB_CANCELLED'));
    }
    if (command === 'job-dismiss') this.jobs = this.jobs.filter((j) => j.id !== args?.id);
    if (command === 'blockdev-del' && args?.['node-name'] === 'refuse-me') {
      throw new QmpError(command, args, { class: 'GenericError', desc: 'Node is in use' });
    }
    return {} as T;
  }
  listen(names: string | string[]) {
    return this.hub.listen(names);
  }
  waitFor(name: string) {
    return this.hub.waitFor(name);
  }
  on(name: string, handler: (e: QmpEvent) => void) {
    return this.hub.on(name, handler);
  }
  emit(event: string, data: Record<string, unknown>): void {
    this.hub.dispatch({ event, data, timestamp: { seconds: 0, microseconds: 0 } });
  }
  end(id: string, event: 'BLOCK_JOB_COMPLETED' | 'BLOCK_JOB_CANCELLED', error?: string): void {
    const job = this.jobs.find((j) => j.id === id);
    if (!job || job.status === 'concluded') return;
    job.status = 'concluded';
    if (error) job.error = error;
    this.emit(event, { device: id, len: 100, offset: 40, ...(error ? { error } : {}) });
    this.emit('JOB_STATUS_CHANGE', { id, status: 'concluded' });
  }
}

const disk = (target: string, node: string): PlanSourceDisk => ({
  target,
  formatNode: node,
  filename: `/vm/${target}.qcow2`,
  format: 'qcow2',
  virtualSize: 100,
  bitmaps: [{ name: 'cp1', granularity: 65536 }],
});

function twoDiskPlan() {
  return planBackup({
    mode: 'push',
    naming: fleeceNaming('t'),
    checkpointActions: [{ type: 'block-dirty-bitmap-add', data: { node: 'd0', name: 'cp2', persistent: true, disabled: false } }],
    disks: [
      { disk: disk('vda', 'd0'), incrementalFrom: 'cp1', push: { path: '/nonexistent/a.qcow2', format: 'qcow2', create: false } },
      { disk: disk('vdb', 'd1'), push: { path: '/nonexistent/b.qcow2', format: 'qcow2', create: false } },
    ],
  });
}

describe('BackupJobRun', () => {
  test("one failed disk cancels the other; rollback undoes everything in QEMU's order", async () => {
    const qmp = new FakeMonitor();
    const run = new BackupJobRun(qmp, twoDiskPlan(), 'vm1');
    await run.provision();
    await run.commit();
    expect(run.states).toEqual({ vda: 'running', vdb: 'running' });
    expect(run.fold().phase).toBe('running');

    qmp.end('fleece-backup-vda-t', 'BLOCK_JOB_COMPLETED', 'No space left on device');
    const phase = await run.waitTerminal();
    expect(phase).toBe('failed');
    expect(run.states).toEqual({ vda: 'failed', vdb: 'cancelled' });
    expect(qmp.sent.filter((c) => c.execute === 'block-job-cancel').map((c) => c.arguments?.device)).toEqual(['fleece-backup-vdb-t']);
    expect(run.firstError).toBeInstanceOf(BackupJobError);
    expect(run.firstError?.message).toMatch(/disk 'vda' failed: No space left on device/);

    const mark = qmp.sent.length;
    const outcome = await run.teardown(false);
    expect(outcome.failures).toEqual([]);
    const undo = qmp.sent.slice(mark).filter((c) => c.execute !== 'query-jobs').map((c) => `${c.execute} ${JSON.stringify(c.arguments ?? {})}`);
    expect(undo).toEqual([
      'job-dismiss {"id":"fleece-backup-vdb-t"}',
      'job-dismiss {"id":"fleece-backup-vda-t"}',
      'block-dirty-bitmap-remove {"node":"d0","name":"backup-vda"}',
      'block-dirty-bitmap-remove {"node":"d0","name":"cp2"}',
      'blockdev-del {"node-name":"fl-t-vdb-format"}',
      'blockdev-del {"node-name":"fl-t-vdb-storage"}',
      'blockdev-del {"node-name":"fl-t-vda-format"}',
      'blockdev-del {"node-name":"fl-t-vda-storage"}',
    ]);
  });

  test('success keeps the new checkpoint; progress comes from query-jobs and the end events', async () => {
    const qmp = new FakeMonitor();
    const run = new BackupJobRun(qmp, twoDiskPlan(), 'vm1');
    await run.provision();
    await run.commit();
    qmp.jobs[0]['current-progress'] = 30;
    const info = await run.jobInfo();
    expect(info).toMatchObject({ phase: 'running', total: 200, processed: 30, remaining: 170 });
    qmp.end('fleece-backup-vda-t', 'BLOCK_JOB_COMPLETED');
    qmp.end('fleece-backup-vdb-t', 'BLOCK_JOB_COMPLETED');
    expect(await run.waitTerminal()).toBe('completed');
    const mark = qmp.sent.length;
    await run.teardown(true);
    const removed = qmp.sent.slice(mark).filter((c) => c.execute === 'block-dirty-bitmap-remove').map((c) => c.arguments?.name);
    expect(removed).toEqual(['backup-vda']);
  });

  test('abort cancels running jobs and ends cancelled with an AbortedError', async () => {
    const qmp = new FakeMonitor();
    const run = new BackupJobRun(qmp, twoDiskPlan(), 'vm1');
    await run.provision();
    await run.commit();
    await run.request('abort', 'user');
    expect(await run.waitTerminal()).toBe('cancelled');
    expect(run.firstError?.name).toBe('AbortedError');
    expect(run.firstError?.message).toMatch(/aborted: user/);
  });
});
