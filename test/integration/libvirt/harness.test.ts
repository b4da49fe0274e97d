// The real-libvirtd test harness itself: a 2-disk domain runs, guest writes land in both disks, a checkpoint makes
// bitmaps, a daemon restart keeps the domain running, and remove() leaves nothing defined.
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { qemuImg, qemuIo } from '../../harness/qemu.js';
import { makeTempDir, removeTempDir } from '../../harness/temp-dir.js';
import {
  createImage,
  defineTestDomain,
  libvirtAvailability,
  qdevPaths,
  dedicatedLibvirt,
  sharedLibvirt,
  testDomainXml,
  withQemuConfSettings,
  type LibvirtHarness,
  type TestDomain,
} from '../../harness/libvirt.js';

const MiB = 1024 * 1024;
const availability = libvirtAvailability();
const describeLibvirt = availability.ok ? describe : describe.skip;
const title = availability.ok ? 'libvirt harness' : `libvirt harness (skipped: ${availability.why})`;

/** The bitmap names QEMU holds for each node of the domain (node name → bitmaps). */
async function bitmaps(h: LibvirtHarness, name: string): Promise<string[]> {
  const reply = await h.virsh([
    'qemu-monitor-command',
    name,
    JSON.stringify({ execute: 'query-named-block-nodes', arguments: { flat: true } }),
  ]);
  const nodes = (JSON.parse(reply) as { return: { 'node-name': string; 'dirty-bitmaps'?: { name: string }[] }[] })
    .return;
  return nodes.flatMap((n) => (n['dirty-bitmaps'] ?? []).map((b) => `${n['node-name']}:${b.name}`));
}

describe('libvirt harness, pure parts', () => {
  test('qemu.conf settings replace existing keys (including a multi-line list) and are idempotent', () => {
    const original = '# comment\nuser = "qemu"\nnamespaces = [\n  "mount"\n]\nvnc_listen = "0.0.0.0"\n';
    const once = withQemuConfSettings(original);
    expect(once).toContain('# comment\nvnc_listen = "0.0.0.0"\n');
    expect(once).not.toContain('"qemu"');
    expect(once).not.toContain('"mount"');
    expect(once.match(/^user = "root"$/gm)).toHaveLength(1);
    expect(once).toMatch(/^stdio_handler = "file"$/m);
    expect(withQemuConfSettings(once)).toBe(once);
    expect(withQemuConfSettings('')).toBe(withQemuConfSettings(withQemuConfSettings('')));
  });

  test('domain XML and qdev paths for virtio and scsi disks', () => {
    const xml = testDomainXml(
      {
        name: 'fleece-test-x',
        disks: [
          { target: 'vda', path: '/a.qcow2', format: 'qcow2' },
          { target: 'sda', path: "/b'.raw", format: 'raw', readonly: true },
        ],
        os: { kernel: '/k', initrd: '/i', cmdline: 'console=ttyS0 a<b' },
        guestAgent: true,
      },
      ['none', 'writeback'],
      '/run/x.serial.log',
    );
    expect(xml).toContain("<driver name='qemu' type='qcow2' cache='none'/>");
    expect(xml).toContain("<source file='/b&apos;.raw'/>");
    expect(xml).toContain("<controller type='scsi' model='virtio-scsi'/>");
    expect(xml).toContain('<cmdline>console=ttyS0 a&lt;b</cmdline>');
    expect(xml).toContain("name='org.qemu.guest_agent.0'");
    const live =
      "<disk type='file' device='disk'><target dev='vda' bus='virtio'/><alias name='virtio-disk0'/></disk>" +
      "<disk type='file' device='disk'><target dev='sda' bus='scsi'/><alias name='scsi0-0-0-0'/></disk>";
    expect([...qdevPaths(live)]).toEqual([
      ['vda', '/machine/peripheral/virtio-disk0/virtio-backend'],
      ['sda', '/machine/peripheral/scsi0-0-0-0'],
    ]);
  });
});

describeLibvirt(title, () => {
  // This file restarts its daemon: a dedicated one, so that other test files' calls to the shared one go on.
  let h: LibvirtHarness & { stop(): Promise<void> };
  let dir: string;
  let domain: TestDomain | undefined;

  beforeAll(async () => {
    const t0 = Date.now();
    h = await dedicatedLibvirt('harness');
    console.log(`dedicatedLibvirt() ready in ${Date.now() - t0} ms: ${h.uri}`);
    dir = await makeTempDir('libvirt');
  }, 120_000);

  afterAll(async () => {
    await domain?.remove();
    await h?.stop();
    if (dir) await removeTempDir(dir);
  }, 60_000);

  test('a second call reuses the running shared daemon', async () => {
    const shared = await sharedLibvirt();
    const again = await sharedLibvirt();
    expect(again.uri).toBe(shared.uri);
    expect(shared.uri).toMatch(/^qemu\+unix:\/\/\/system\?socket=.*fleece-test-libvirt-.*\/libvirt-sock$/);
    expect(await again.virsh(['uri'])).toBe(shared.uri);
  });

  test('a 2-disk domain: guest writes, a checkpoint, a daemon restart, remove()', async () => {
    const name = `fleece-test-harness-${randomBytes(4).toString('hex')}`;
    const vda = join(dir, 'vda.qcow2');
    const vdb = join(dir, 'vdb.qcow2');
    await createImage(vda, 'qcow2', 64 * MiB);
    await createImage(vdb, 'qcow2', 64 * MiB);

    let t0 = Date.now();
    domain = await defineTestDomain(h, {
      name,
      disks: [
        { target: 'vda', path: vda, format: 'qcow2' },
        { target: 'vdb', path: vdb, format: 'qcow2' },
      ],
    });
    console.log(`define + start: ${Date.now() - t0} ms`);
    expect(await h.virsh(['domstate', name])).toBe('running');
    expect(domain.xml).toContain("cache='none'");

    // The guest's writes, checked inside QEMU through the same BlockBackend (a mismatch must be reported).
    await domain.write('vda', 0, MiB, 0x5a);
    await domain.write('vdb', MiB, MiB, 0xa5);
    await domain.qemuIo('vda', 'read -P 0x5a 0 1M');
    await domain.qemuIo('vdb', 'read -P 0xa5 1M 1M');
    await domain.qemuIo('vdb', 'read -P 0 0 1M');
    await expect(domain.qemuIo('vda', 'read -P 0xa5 0 1M')).rejects.toThrow(/Pattern verification failed/);
    await expect(domain.write('vdc', 0, 512, 1)).rejects.toThrow(/no disk vdc/);

    // A checkpoint is a persistent bitmap per disk.
    await h.virsh(['checkpoint-create-as', name, 'cp1']);
    expect(await h.virsh(['checkpoint-list', name, '--name'])).toBe('cp1');
    const names = await bitmaps(h, name);
    expect(names.filter((b) => b.endsWith(':cp1'))).toHaveLength(2);

    // A restart keeps the domain (and its QEMU) running, and libvirt still drives it.
    t0 = Date.now();
    await h.restart();
    console.log(`restart: ${Date.now() - t0} ms`);
    expect(await h.virsh(['domstate', name])).toBe('running');
    await domain.write('vda', 2 * MiB, 64 * 1024, 0x33);
    expect(await h.virsh(['checkpoint-list', name, '--name'])).toBe('cp1');

    // After destroy, the images hold what the guest wrote, and the checkpoint's bitmaps.
    await h.virsh(['destroy', name]);
    await qemuIo(vda, ['read -P 0x5a 0 1M', 'read -P 0x33 2M 64k', 'read -P 0 1M 1M'], 'qcow2', { shared: true });
    await qemuIo(vdb, ['read -P 0 0 1M', 'read -P 0xa5 1M 1M'], 'qcow2', { shared: true });
    for (const image of [vda, vdb]) {
      const info = JSON.parse(await qemuImg(['info', '-U', '--output=json', image])) as {
        'format-specific': { data: { bitmaps?: { name: string }[] } };
      };
      expect(info['format-specific'].data.bitmaps?.map((b) => b.name)).toEqual(['cp1']);
    }

    await domain.remove();
    await domain.remove(); // already gone: no error
    domain = undefined;
    expect((await h.virsh(['list', '--all', '--name'])).split('\n')).not.toContain(name);
  }, 60_000);
});
