// Golden tests: the plan reproduces, command for command, what libvirt 9.0 sent to QEMU 7.2 (fixtures/plans/*.json
// were extracted from the captures in the shared reference), and fleece's own multi-disk plans stay as frozen.
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import {
  planBackup,
  planCommands,
  fleeceNaming,
  type PlanAction,
  type PlanDiskRequest,
  type PlanNaming,
  type PlanSourceDisk,
  type NbdServerAddress,
} from '../../../src/backup/plan.js';
import { InvalidInputError, NotFoundError } from '../../../src/util/errors.js';

const dir = join(process.cwd(), 'fixtures', 'plans');

interface BlockNode {
  'node-name': string;
  drv: string;
  file: string;
  image: { 'virtual-size': number };
  'dirty-bitmaps'?: { name?: string; granularity: number }[];
}

interface Fixture {
  description: string;
  blockNodes: BlockNode[];
  disks: Record<string, string>;
  naming: Record<string, { file: string; format: string }> | { fleeceTag: string };
  request: {
    mode: 'push' | 'pull';
    nbdServer?: NbdServerAddress;
    speed?: number;
    disks: (Omit<PlanDiskRequest, 'disk'> & { target: string })[];
    checkpointActions: PlanAction[];
  };
  expected: unknown[];
}

function sourceDisk(nodes: BlockNode[], target: string, nodeName: string): PlanSourceDisk {
  const node = nodes.find((n) => n['node-name'] === nodeName);
  if (!node) throw new Error(`fixture has no node ${nodeName}`);
  return {
    target,
    formatNode: nodeName,
    filename: node.file,
    format: node.drv,
    virtualSize: node.image['virtual-size'],
    bitmaps: (node['dirty-bitmaps'] ?? []).flatMap((b) => (b.name ? [{ name: b.name, granularity: b.granularity }] : [])),
  };
}

function namingOf(fixture: Fixture): PlanNaming {
  if ('fleeceTag' in fixture.naming) return fleeceNaming(String(fixture.naming.fleeceTag));
  const names = fixture.naming as Record<string, { file: string; format: string }>;
  // libvirt's names: libvirt-N-storage / libvirt-N-format, backup-<disk>-<source node>, create-<node>, libvirt-nbd-<node>.
  return {
    targetFileNode: (d) => names[d.target].file,
    targetFormatNode: (d) => names[d.target].format,
    backupJobId: (d) => `backup-${d.target}-${d.formatNode}`,
    createJobId: (node) => `create-${node}`,
    exportId: (_d, node) => `libvirt-nbd-${node}`,
  };
}

function load(name: string): Fixture {
  return JSON.parse(readFileSync(join(dir, name), 'utf8')) as Fixture;
}

function planFor(fixture: Fixture) {
  return planBackup({
    mode: fixture.request.mode,
    naming: namingOf(fixture),
    checkpointActions: fixture.request.checkpointActions,
    ...(fixture.request.nbdServer ? { nbdServer: fixture.request.nbdServer } : {}),
    ...(fixture.request.speed ? { speed: fixture.request.speed } : {}),
    disks: fixture.request.disks.map(({ target, ...rest }) => ({
      ...rest,
      disk: sourceDisk(fixture.blockNodes, target, fixture.disks[target]),
    })),
  });
}

describe('planBackup golden files', () => {
  const files = readdirSync(dir).filter((f) => f.endsWith('.json'));
  test('fixtures are present', () => {
    expect(files.length).toBeGreaterThanOrEqual(5);
  });
  test.each(files)('%s', (file) => {
    const fixture = load(file);
    const commands = planCommands(planFor(fixture));
    // Exact equality, including key order: the JSON sent is the JSON libvirt sent.
    expect(JSON.stringify(commands, null, 1)).toBe(JSON.stringify(fixture.expected, null, 1));
  });
});

describe('planBackup details', () => {
  const fixture = load('push-inc-cp1-cp2.json');
  const disk = sourceDisk(fixture.blockNodes, 'vda', 'libvirt-1-format');
  const naming = fleeceNaming('t1');

  test('an incremental push records the temporary bitmap on the disk node and the new checkpoint bitmaps', () => {
    const plan = planBackup({
      mode: 'push',
      naming,
      checkpointActions: fixture.request.checkpointActions,
      disks: [{ disk, incrementalFrom: 'cp1', push: { path: '/b/inc.qcow2', format: 'qcow2', create: true } }],
      speed: 1048576,
    });
    expect(plan.disks[0].tempBitmap).toEqual({ node: 'libvirt-1-format', name: 'backup-vda' });
    expect(plan.checkpointBitmaps).toEqual([{ node: 'libvirt-1-format', name: 'cp2' }]);
    expect(plan.provision.map((s) => s.kind)).toEqual(['create-file', 'add-file-node', 'create-image', 'add-format-node']);
    const backup = plan.transaction.find((a) => a.type === 'blockdev-backup');
    expect(backup?.data).toMatchObject({ sync: 'incremental', bitmap: 'backup-vda', speed: 1048576 });
  });

  test('a reused target is neither created nor formatted', () => {
    const plan = planBackup({
      mode: 'push',
      naming,
      checkpointActions: [],
      disks: [{ disk, push: { path: '/b/full.qcow2', format: 'qcow2', create: false } }],
    });
    expect(plan.provision.map((s) => s.kind)).toEqual(['add-file-node', 'add-format-node']);
    expect(plan.disks[0].created).toBe(false);
  });

  test('a raw target is a sized file with a raw node and no blockdev-create', () => {
    const plan = planBackup({
      mode: 'push',
      naming,
      checkpointActions: [],
      disks: [{ disk, push: { path: '/b/full.raw', format: 'raw', create: true } }],
    });
    expect(plan.provision[0]).toMatchObject({ kind: 'create-file', size: 1073741824 });
    expect(plan.provision.map((s) => s.kind)).toEqual(['create-file', 'add-file-node', 'add-format-node']);
    expect(planCommands(plan)[1].arguments).toMatchObject({ driver: 'raw' });
  });

  test('refusals name the disk and the fix', () => {
    expect(() =>
      planBackup({ mode: 'push', naming, checkpointActions: [], disks: [{ disk, incrementalFrom: 'cp1', push: { path: '/x', format: 'raw', create: true } }] }),
    ).toThrow(InvalidInputError);
    expect(() =>
      planBackup({ mode: 'push', naming, checkpointActions: [], disks: [{ disk, incrementalFrom: 'nope', push: { path: '/x', format: 'qcow2', create: true } }] }),
    ).toThrow(NotFoundError);
    expect(() => planBackup({ mode: 'pull', naming, checkpointActions: [], disks: [{ disk, pull: { scratchPath: '/s', create: true, exportName: 'vda' } }] })).toThrow(
      /NBD server/,
    );
    expect(() => planBackup({ mode: 'push', naming, checkpointActions: [], disks: [{ disk }] })).toThrow(/vda.*no target/);
    expect(() => planBackup({ mode: 'push', naming, checkpointActions: [], disks: [] })).toThrow(/no disk/);
    expect(() =>
      planBackup({
        mode: 'push',
        naming: fleeceNaming('a-very-long-tag-indeed'),
        checkpointActions: [],
        disks: [{ disk, push: { path: '/x', format: 'qcow2', create: true } }],
      }),
    ).toThrow(/31 characters/);
  });

  test('pull with a custom export bitmap name and tcp server', () => {
    const plan = planBackup({
      mode: 'pull',
      naming,
      checkpointActions: [],
      nbdServer: { type: 'tcp', host: '127.0.0.1', port: 10809 },
      exportWritable: true,
      disks: [{ disk, incrementalFrom: 'cp1', pull: { scratchPath: '/s/vda', create: true, exportName: 'disk-a', exportBitmap: 'inc' } }],
    });
    expect(plan.disks[0].export).toMatchObject({ name: 'disk-a', bitmap: 'inc' });
    expect(plan.exports[0].arguments).toMatchObject({ writable: true, bitmaps: ['inc'] });
    const start = plan.provision.find((s) => s.kind === 'start-nbd-server');
    expect(start && 'command' in start ? start.command.arguments : undefined).toEqual({
      addr: { type: 'inet', data: { host: '127.0.0.1', port: '10809' } },
    });
  });

  test('pull over TLS: the credentials object is added just before the server, which names it', () => {
    const base = {
      mode: 'pull' as const,
      naming,
      checkpointActions: [],
      nbdServer: { type: 'tcp' as const, host: '127.0.0.1', port: 10809 },
      disks: [{ disk, pull: { scratchPath: '/s/vda', create: true, exportName: 'vda' } }],
    };
    const x509 = planBackup({ ...base, nbdTls: { type: 'x509', dir: '/etc/fleece/tls', verifyPeer: true } });
    expect(x509.provision.map((s) => s.kind).slice(-2)).toEqual(['add-tls-object', 'start-nbd-server']);
    const commands = planCommands(x509);
    expect(commands.find((c) => c.execute === 'object-add')?.arguments).toEqual({
      'qom-type': 'tls-creds-x509', id: 'fl-t1-tls', dir: '/etc/fleece/tls', endpoint: 'server', 'verify-peer': true,
    });
    expect(commands.find((c) => c.execute === 'nbd-server-start')?.arguments).toEqual({
      addr: { type: 'inet', data: { host: '127.0.0.1', port: '10809' } },
      'tls-creds': 'fl-t1-tls',
    });
    const psk = planBackup({ ...base, nbdTls: { type: 'psk', dir: '/etc/fleece/psk' } });
    expect(planCommands(psk).find((c) => c.execute === 'object-add')?.arguments).toEqual({
      'qom-type': 'tls-creds-psk', id: 'fl-t1-tls', dir: '/etc/fleece/psk', endpoint: 'server',
    });
    expect(() => planBackup({ ...base, mode: 'push', disks: [{ disk, push: { path: '/x', format: 'qcow2', create: true } }], nbdTls: { type: 'psk', dir: '/p' } })).toThrow(
      /push backup/,
    );
  });
});
