import { UndoLog, describeUndoEntry, type UndoEffects } from '../../../src/backup/undo-log.js';

function recorder(failOn: string[] = []): { effects: UndoEffects; calls: string[] } {
  const calls: string[] = [];
  const act = (name: string) => async () => {
    calls.push(name);
    if (failOn.includes(name)) throw new Error(`${name} failed`);
  };
  const effects: UndoEffects = {
    unlink: (path) => act(`unlink ${path}`)(),
    blockdevDel: (node) => act(`blockdev-del ${node}`)(),
    removeBitmap: (node, name) => act(`bitmap-remove ${node} ${name}`)(),
    endJob: (id) => act(`end-job ${id}`)(),
    stopNbdServer: () => act('nbd-server-stop')(),
    deleteExport: (id) => act(`export-del ${id}`)(),
    deleteObject: (id) => act(`object-del ${id}`)(),
  };
  return { effects, calls };
}

function pullLog(): UndoLog {
  const log = new UndoLog();
  log.record({ kind: 'file-created', disk: 'vda', path: '/s/vda.qcow2', policy: 'always' });
  log.record({ kind: 'node-added', disk: 'vda', nodeName: 'sf', policy: 'always' });
  log.record({ kind: 'image-created', disk: 'vda', path: '/s/vda.qcow2', policy: 'always' });
  log.record({ kind: 'node-added', disk: 'vda', nodeName: 's', policy: 'always' });
  log.record({ kind: 'object-added', id: 'tls0', what: 'TLS credentials', policy: 'always' });
  log.record({ kind: 'nbd-server-started', policy: 'always' });
  log.record({ kind: 'bitmap-added', disk: 'vda', node: 'disk0', name: 'cp2', policy: 'on-failure' });
  log.record({ kind: 'bitmap-added', disk: 'vda', node: 's', name: 'backup-vda', policy: 'always' });
  log.record({ kind: 'job-started', disk: 'vda', jobId: 'j', policy: 'always' });
  log.record({ kind: 'export-added', disk: 'vda', id: 'e', policy: 'always' });
  return log;
}

describe('UndoLog', () => {
  test('rollback undoes everything in reverse order', async () => {
    const { effects, calls } = recorder();
    const outcome = await pullLog().rollback(effects);
    expect(outcome.failures).toEqual([]);
    expect(calls).toEqual([
      'export-del e',
      'end-job j',
      'bitmap-remove s backup-vda',
      'bitmap-remove disk0 cp2',
      'nbd-server-stop',
      'object-del tls0',
      'blockdev-del s',
      'blockdev-del sf',
      'unlink /s/vda.qcow2',
    ]);
  });

  test('a successful teardown keeps the on-failure effects (the new checkpoint, created targets)', async () => {
    const { effects, calls } = recorder();
    const log = pullLog();
    log.record({ kind: 'file-created', disk: 'vdb', path: '/t/vdb.qcow2', policy: 'on-failure' });
    await log.teardown(effects, { succeeded: true });
    expect(calls).not.toContain('bitmap-remove disk0 cp2');
    expect(calls).not.toContain('unlink /t/vdb.qcow2');
    expect(calls).toContain('unlink /s/vda.qcow2');
    expect(log.size).toBe(0);
  });

  test('a failing step does not stop the others and the first error is kept', async () => {
    const { effects, calls } = recorder(['end-job j', 'blockdev-del s']);
    const outcome = await pullLog().rollback(effects);
    expect(calls).toHaveLength(9);
    expect(outcome.failures.map((f) => f.entry.kind)).toEqual(['job-started', 'node-added']);
    expect((outcome.firstError as Error).message).toBe('end-job j failed');
  });

  test('every entry is described for logs: the TLS object by what it is and its id', () => {
    expect(pullLog().pending().map(describeUndoEntry)).toEqual([
      'file /s/vda.qcow2', 'block node sf', 'image /s/vda.qcow2', 'block node s', 'TLS credentials tls0', 'NBD server',
      'bitmap cp2 on node disk0', 'bitmap backup-vda on node s', 'block job j', 'NBD export e',
    ]);
  });

  test('forget drops entries already undone, and a second teardown does nothing', async () => {
    const { effects, calls } = recorder();
    const log = pullLog();
    log.forget((e) => e.kind === 'export-added');
    await log.rollback(effects);
    expect(calls).not.toContain('export-del e');
    const before = calls.length;
    await log.rollback(effects);
    expect(calls.length).toBe(before);
  });
});
