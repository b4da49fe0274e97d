import { BackupRegistry, type ActiveBackup } from '../../../src/backup/backup-registry.js';
import { ConflictError, NotFoundError } from '../../../src/util/errors.js';

function fakeJob(vm: string, aborted: string[]): ActiveBackup {
  return {
    vm,
    mode: 'push',
    jobInfo: async () => ({ vm, mode: 'push', phase: 'running', startedAt: new Date(0), elapsedMs: 0, total: 1, processed: 0, remaining: 1, disks: [] }),
    abort: async (reason) => {
      aborted.push(`${vm}:${String(reason)}`);
    },
  };
}

describe('BackupRegistry', () => {
  test('one job per VM; other VMs are independent; the slot frees on release', async () => {
    const registry = new BackupRegistry();
    const a = registry.reserve('a');
    expect(() => registry.reserve('a')).toThrow(ConflictError);
    expect(() => registry.reserve('a')).toThrow("another backup job is already running for VM 'a'");
    const b = registry.reserve('b');
    expect(registry.list().sort()).toEqual(['a', 'b']);
    a.release();
    a.release();
    expect(registry.isBusy('a')).toBe(false);
    registry.reserve('a');
    // a stale reservation cannot free or take the new slot
    a.release();
    expect(registry.isBusy('a')).toBe(true);
    b.release();
  });

  test('jobInfo and abort find the job by VM, NotFoundError otherwise', async () => {
    const registry = new BackupRegistry();
    const aborted: string[] = [];
    const slot = registry.reserve('vm1');
    await expect(registry.jobInfo('vm1')).rejects.toBeInstanceOf(NotFoundError);
    slot.attach(fakeJob('vm1', aborted));
    expect((await registry.jobInfo('vm1')).phase).toBe('running');
    await registry.abort('vm1', 'why');
    expect(aborted).toEqual(['vm1:why']);
    await expect(registry.abort('vm2')).rejects.toThrow(/VM 'vm2' has no running backup job/);
  });
});
