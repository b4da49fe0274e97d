import { pullRequestFromResolved, pushDisksFromResolved } from '../../../src/backup/from-resolved.js';
import type { ResolvedBackup } from '../../../src/backup/definition/types.js';
import type { VmDisk } from '../../../src/qemu/block-graph.js';
import { InvalidInputError, NotFoundError } from '../../../src/util/errors.js';

const vm: VmDisk[] = ['vda', 'vdb'].map((target, i) => ({
  target,
  qdev: `/machine/peripheral/${target}/virtio-backend`,
  formatNode: `disk${i}`,
  filename: `/vm/${target}.qcow2`,
  format: 'qcow2',
  virtualSize: 1 << 26,
  bitmaps: [],
}));

const push: ResolvedBackup = {
  mode: 'push',
  disks: [
    { name: 'vda', included: true, incrementalFrom: 'cp1', storage: { type: 'file', path: '/b/vda.qcow2', format: 'qcow2', existing: false }, sizeBytes: 1 << 26, sourceFormat: 'qcow2' },
    { name: 'vdb', included: false, reason: 'backup-no' },
  ],
};

describe('from resolved definitions', () => {
  test('push: included disks only, rebase only for incrementals, reuse when the target exists', () => {
    const reqs = pushDisksFromResolved(push, vm, { vda: '/b/full.qcow2' });
    expect(reqs).toHaveLength(1);
    expect(reqs[0]).toMatchObject({ incrementalFrom: 'cp1', push: { path: '/b/vda.qcow2', format: 'qcow2', create: true }, rebaseOnto: '/b/full.qcow2' });
    expect(reqs[0].disk.formatNode).toBe('disk0');
    expect(() => pushDisksFromResolved({ ...push, mode: 'pull' }, vm)).toThrow(InvalidInputError);
    expect(() => pushDisksFromResolved(push, vm.slice(1))).toThrow(NotFoundError);
  });

  test('pull: server, scratch, export names; TLS only with credentials; raw scratch refused', () => {
    const pull: ResolvedBackup = {
      mode: 'pull',
      server: { transport: 'tcp', name: 'localhost', port: 10809, tls: false },
      disks: [
        { name: 'vda', included: true, storage: { type: 'file', path: '/s/vda', format: 'qcow2', existing: true }, exportName: 'a', exportBitmap: 'ignored-for-full', sizeBytes: 1, sourceFormat: 'qcow2' },
        { name: 'vdb', included: true, incrementalFrom: 'cp2', storage: { type: 'file', path: '/s/vdb', format: 'qcow2', existing: false }, exportBitmap: 'bm', sizeBytes: 1, sourceFormat: 'qcow2' },
      ],
    };
    const { disks, server } = pullRequestFromResolved(pull, vm);
    expect(server).toEqual({ type: 'tcp', host: 'localhost', port: 10809 });
    expect(disks[0]).toMatchObject({ scratch: { path: '/s/vda', create: false }, exportName: 'a' });
    expect(disks[0].exportBitmap).toBeUndefined();
    expect(disks[1]).toMatchObject({ incrementalFrom: 'cp2', exportBitmap: 'bm', scratch: { create: true } });
    expect(() => pullRequestFromResolved({ ...pull, server: { transport: 'tcp', name: 'h', port: 1, tls: true } }, vm)).toThrow(/TLS.*needs TLS credentials/);
    // tls='yes' with credentials: the request carries them; tls='no' leaves them out even when configured.
    const creds = { type: 'x509' as const, dir: '/etc/fleece/tls' };
    expect(pullRequestFromResolved({ ...pull, server: { transport: 'tcp', name: 'h', port: 1, tls: true } }, vm, creds).tls).toEqual(creds);
    expect(pullRequestFromResolved(pull, vm, creds).tls).toBeUndefined();
    const raw = { ...pull, disks: [{ ...pull.disks[1], storage: { type: 'file' as const, path: '/s', format: 'raw' as const, existing: false } }] };
    expect(() => pullRequestFromResolved(raw as ResolvedBackup, vm)).toThrow(/must be qcow2/);
  });
});
