// The domain XML of a VM-level restore: each rewrite rule on a libvirt 9 live dumpxml, and everything else kept as it was.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { rewriteDomainForRestore, sharedWritableDisks, type DomainRestoreOptions } from '../../../src/app/restore-domain-xml.js';
import { InvalidInputError } from '../../../src/util/errors.js';

const live = readFileSync(join(process.cwd(), 'fixtures', 'libvirt-xml', 'domain-live-two-disks.xml'), 'utf8');
const restore: DomainRestoreOptions = {
  name: 'web1-restored',
  disks: { vda: { path: '/restore/web1/vda.qcow2', format: 'qcow2' }, vdb: { path: '/restore/web1/vdb.raw', format: 'raw' } },
};

/** The lines of `a` that `b` lacks, as a multiset (trimmed). */
function minus(a: string[], b: string[]): string[] {
  const left = new Map<string, number>();
  for (const line of b) left.set(line, (left.get(line) ?? 0) + 1);
  return a.filter((line) => {
    const n = left.get(line) ?? 0;
    if (n > 0) left.set(line, n - 1);
    return n === 0;
  }).map((line) => line.trim());
}

/** The text of the first element `<name …>…</name>` (or `<name …/>`) in xml, from the newline before it. */
function section(xml: string, name: string): string {
  const start = new RegExp(`\\n( *)<${name}(?=[ >/])[^>]*?(/?)>`).exec(xml);
  if (!start) throw new Error(`no <${name}> in the XML`);
  if (start[2] === '/') return start[0];
  const rest = xml.slice(start.index + start[0].length);
  const close = new RegExp(`^[^\\n]*?</${name}>|\\n${start[1]}</${name}>`).exec(rest);
  if (!close) throw new Error(`<${name}> is not closed`);
  return start[0] + rest.slice(0, close.index + close[0].length);
}

/** A minimal domain around some devices (and other top-level elements). */
function domainWith(devices: string, extra = ''): string {
  return `<domain type='kvm'>\n  <name>vm1</name>\n  <uuid>11111111-2222-3333-4444-555555555555</uuid>\n${extra}  <devices>\n${devices}  </devices>\n</domain>\n`;
}

describe('rewriteDomainForRestore on a live libvirt 9 domain (two qcow2 disks, a cdrom, an interface, the guest agent)', () => {
  const out = rewriteDomainForRestore(live, restore);
  const inLines = live.split('\n');
  const outLines = out.split('\n');

  it('changes exactly the lines the rules name, and nothing else', () => {
    const removed = [
      "<domain type='kvm' id='7' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>", '<name>web1</name>', '<uuid>6f1c3a0e-2b7d-4c59-9a1e-0d5b8c7e4f21</uuid>',
      // disks: the old images, the live index and backing chains, the aliases
      "<source file='/var/lib/libvirt/images/web1-root.qcow2' index='3'/>", "<backingStore type='file' index='4'>", "<format type='qcow2'/>",
      "<source file='/var/lib/libvirt/images/debian-12-base.qcow2'/>", '<backingStore/>', '</backingStore>', "<alias name='virtio-disk0'/>",
      "<driver name='qemu' type='qcow2' io='native' cache='none'/>", "<source file='/var/lib/libvirt/images/web1-data.qcow2' index='2'/>", '<backingStore/>',
      "<alias name='virtio-disk1'/>",
      "<source file='/var/lib/libvirt/images/debian-12.2.0-amd64-netinst.iso' index='1'/>", '<backingStore/>', "<alias name='sata0-0-0'/>",
      // controllers: aliases only (one is left empty)
      "<alias name='usb'/>", "<alias name='ide'/>", "<controller type='pci' index='0' model='pcie-root'>", "<alias name='pcie.0'/>", '</controller>',
      "<alias name='pci.1'/>", "<alias name='virtio-serial0'/>",
      // the interface: MAC, the port and bridge of the old run, the tap name, the alias
      "<mac address='52:54:00:3b:8e:1f'/>", "<source network='default' portid='0b7f2c1d-5d4e-4a8b-9c3f-2e1d0a9b8c7d' bridge='virbr0'/>",
      "<target dev='vnet3'/>", "<alias name='net0'/>",
      // pty serial and console, the guest agent's socket and state
      "<source path='/dev/pts/2'/>", "<alias name='serial0'/>", "<console type='pty' tty='/dev/pts/2'>", "<source path='/dev/pts/2'/>", "<alias name='serial0'/>",
      "<source mode='bind' path='/run/libvirt/qemu/channel/7-web1/org.qemu.guest_agent.0'/>",
      "<target type='virtio' name='org.qemu.guest_agent.0' state='connected'/>", "<alias name='channel0'/>",
      // inputs, graphics port, other aliases
      "<alias name='input0'/>", "<input type='mouse' bus='ps2'>", "<alias name='input1'/>", '</input>', "<input type='keyboard' bus='ps2'>",
      "<alias name='input2'/>", '</input>', "<graphics type='vnc' port='5900' autoport='yes' listen='127.0.0.1'>", "<alias name='video0'/>",
      "<alias name='watchdog0'/>", "<alias name='balloon0'/>",
      // the dynamic seclabels of the old run
      "<seclabel type='dynamic' model='selinux' relabel='yes'>", '<label>system_u:system_r:svirt_t:s0:c392,c662</label>',
      '<imagelabel>system_u:object_r:svirt_image_t:s0:c392,c662</imagelabel>', '</seclabel>',
      "<seclabel type='dynamic' model='dac' relabel='yes'>", '<label>+107:+107</label>', '<imagelabel>+107:+107</imagelabel>', '</seclabel>',
    ];
    expect(minus(inLines, outLines).sort()).toEqual(removed.sort());
    expect(minus(outLines, inLines)).toEqual([
      "<domain type='kvm' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>",
      '<name>web1-restored</name>',
      "<source file='/restore/web1/vda.qcow2'/>",
      "<driver name='qemu' type='raw' io='native' cache='none'/>",
      "<source file='/restore/web1/vdb.raw'/>",
      "<source file='/var/lib/libvirt/images/debian-12.2.0-amd64-netinst.iso'/>",
      "<controller type='pci' index='0' model='pcie-root'/>",
      "<source network='default'/>",
      "<console type='pty'>",
      "<source mode='bind'/>",
      "<target type='virtio' name='org.qemu.guest_agent.0'/>",
      "<input type='mouse' bus='ps2'/>",
      "<input type='keyboard' bus='ps2'/>",
      "<graphics type='vnc' autoport='yes' listen='127.0.0.1'>",
    ]);
  });

  it('keeps the order of what it keeps', () => {
    const added = new Set(minus(outLines, inLines));
    const kept = outLines.filter((line) => !added.has(line.trim()));
    let at = 0;
    for (const line of kept) {
      at = inLines.indexOf(line, at);
      expect(at).toBeGreaterThanOrEqual(0);
      at += 1;
    }
  });

  it('keeps unrelated elements byte for byte', () => {
    for (const name of ['title', 'description', 'metadata', 'memory', 'currentMemory', 'vcpu', 'resource', 'os', 'features', 'cpu', 'clock',
      'on_poweroff', 'on_reboot', 'on_crash', 'pm', 'emulator', 'qemu:commandline', 'audio']) {
      expect(out).toContain(section(live, name));
    }
    // user aliases (ua-…) are configuration
    expect(section(out, 'rng')).toBe(section(live, 'rng'));
    expect(out).toContain("<serial>data-0001</serial>");
    expect(out).toContain("<address type='drive' controller='0' bus='0' target='0' unit='0'/>");
  });

  it('gives the domain its new name, and no id, uuid, MAC, generated alias or dynamic seclabel', () => {
    expect(out).toMatch(/^<domain type='kvm' xmlns:qemu='[^']+'>\n  <name>web1-restored<\/name>\n  <title>/);
    expect(out).not.toMatch(/<uuid>|<mac |<seclabel|id='7'|vnet3|portid|bridge=|\/dev\/pts|tty=|state='connected'|port='5900'|<source[^>]*index=|<backingStore/);
    expect(out.match(/<alias /g)).toEqual(['<alias ']);
  });

  it('points each restored disk at its image with the restored format, and leaves the cdrom and its medium', () => {
    expect(section(out, 'disk')).toBe(
      "\n    <disk type='file' device='disk'>\n      <driver name='qemu' type='qcow2' cache='none' discard='unmap'/>\n      <source file='/restore/web1/vda.qcow2'/>\n"
      + "      <target dev='vda' bus='virtio'/>\n      <address type='pci' domain='0x0000' bus='0x04' slot='0x00' function='0x0'/>\n    </disk>",
    );
    expect(out).toContain("<driver name='qemu' type='raw' io='native' cache='none'/>\n      <source file='/restore/web1/vdb.raw'/>\n      <target dev='vdb' bus='virtio'/>");
    expect(out).toContain("<disk type='file' device='cdrom'>\n      <driver name='qemu' type='raw'/>\n      <source file='/var/lib/libvirt/images/debian-12.2.0-amd64-netinst.iso'/>\n      <target dev='sda' bus='sata'/>\n      <readonly/>");
  });

  it('leaves a disk that is not restored where it was (without the live index and backing chain)', () => {
    const onlyVda = rewriteDomainForRestore(live, { name: 'x', disks: { vda: restore.disks.vda! } });
    expect(onlyVda).toContain("<driver name='qemu' type='qcow2' io='native' cache='none'/>\n      <source file='/var/lib/libvirt/images/web1-data.qcow2'/>\n      <target dev='vdb' bus='virtio'/>");
  });

  it('is pure: the same input gives the same output, and its output rewrites to itself', () => {
    expect(rewriteDomainForRestore(live, restore)).toBe(out);
    expect(rewriteDomainForRestore(out, restore)).toBe(out);
  });
});

describe('rewriteDomainForRestore rules', () => {
  it('makes a block, volume or network disk a file disk with only the restored source', () => {
    const xml = domainWith(`    <disk type='block' device='disk'>
      <driver name='qemu' type='raw' cache='none' io='native'/>
      <source dev='/dev/vg0/vm1-root' index='1'>
        <seclabel model='dac' relabel='no'/>
        <reservations managed='yes'/>
      </source>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='network' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <auth username='libvirt'>
        <secret type='ceph' usage='client.libvirt'/>
      </auth>
      <source protocol='rbd' name='pool/vm1-data'>
        <host name='mon1' port='6789'/>
      </source>
      <target dev='vdb' bus='virtio'/>
    </disk>
    <disk type='volume' device='disk'>
      <source pool='default' volume='vm1-logs.img'/>
      <target dev='vdc' bus='virtio'/>
      <encryption format='luks'>
        <secret type='passphrase' uuid='0a81f5b2-8403-7b23-c8d6-21ccc2f80d6f'/>
      </encryption>
    </disk>
`);
    const out = rewriteDomainForRestore(xml, {
      name: 'vm2', disks: { vda: { path: '/r/vda.qcow2', format: 'qcow2' }, vdb: { path: '/r/vdb.raw', format: 'raw' }, vdc: { path: '/r/vdc.qcow2', format: 'qcow2' } },
    });
    expect(out).toBe(`<domain type='kvm'>
  <name>vm2</name>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' cache='none' io='native'/>
      <source file='/r/vda.qcow2'>
        <seclabel model='dac' relabel='no'/>
      </source>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='/r/vdb.raw'/>
      <target dev='vdb' bus='virtio'/>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/r/vdc.qcow2'/>
      <target dev='vdc' bus='virtio'/>
    </disk>
  </devices>
</domain>
`);
  });

  it("makes a restored lun a disk (a file is no SCSI device), keeps a startup policy, drops a block job's mirror", () => {
    const xml = domainWith(`    <disk type='block' device='lun' sgio='unfiltered' rawio='yes'>
      <driver name='qemu' type='raw'/>
      <source dev='/dev/sdz' startupPolicy='optional'/>
      <mirror type='file' job='copy' ready='yes'>
        <format type='raw'/>
        <source file='/copy.raw'/>
      </mirror>
      <target dev='sda' bus='scsi'/>
    </disk>
`);
    const out = rewriteDomainForRestore(xml, { name: 'vm2', disks: { sda: { path: '/r/sda.raw', format: 'raw' } } });
    expect(out).toContain("<disk type='file' device='disk'>\n      <driver name='qemu' type='raw'/>\n      <source file='/r/sda.raw' startupPolicy='optional'/>\n      <target dev='sda' bus='scsi'/>\n    </disk>");
  });

  it('refuses a target the domain has no disk for, naming the disks it has', () => {
    const call = () => rewriteDomainForRestore(live, { name: 'x', disks: { vdz: { path: '/r/vdz.raw', format: 'raw' } } });
    expect(call).toThrow(InvalidInputError);
    expect(call).toThrow('disk vdz is not a disk of the domain in the backup (its disks: vda, vdb, sda)');
  });

  it('refuses to restore onto a cdrom, a relative path or an unknown format', () => {
    expect(() => rewriteDomainForRestore(live, { name: 'x', disks: { sda: { path: '/r/sda.raw', format: 'raw' } } })).toThrow('disk sda of the domain is a cdrom');
    expect(() => rewriteDomainForRestore(live, { name: 'x', disks: { vda: { path: 'r/vda.raw', format: 'raw' } } })).toThrow('not an absolute path');
    expect(() => rewriteDomainForRestore(live, { name: 'x', disks: { vda: { path: '/r/vda', format: 'vmdk' as 'raw' } } })).toThrow("has format 'vmdk'");
  });

  it.each(['', ' web', 'a/b', 'a\nb'])('refuses the domain name %j', (name) => {
    expect(() => rewriteDomainForRestore(live, { name, disks: {} })).toThrow(InvalidInputError);
  });

  it('refuses a DOCTYPE (entities), XML that is not well-formed, another root, unknown entities', () => {
    const doctype = `<!DOCTYPE domain [<!ENTITY x "${'y'.repeat(10)}">]>\n<domain><name>&x;</name></domain>`;
    expect(() => rewriteDomainForRestore(doctype, restore)).toThrow(/DOCTYPE/);
    expect(() => rewriteDomainForRestore('<domain><name>x</domain>', restore)).toThrow(/not well-formed XML \(line 1/);
    expect(() => rewriteDomainForRestore("<domainsnapshot><name>x</name></domainsnapshot>", restore)).toThrow('not one <domain>');
    expect(() => rewriteDomainForRestore('<domain><name>x</name><title>&nbsp;</title></domain>', { name: 'y', disks: {} })).toThrow("unknown entity '&nbsp;'");
    expect(() => rewriteDomainForRestore('', restore)).toThrow(InvalidInputError);
  });

  it('keeps user aliases, user-chosen tap names and unmanaged taps; drops generated ones and the MAC of every interface', () => {
    const xml = domainWith(`    <interface type='bridge'>
      <mac address='52:54:00:00:00:01'/>
      <source bridge='br0'/>
      <target dev='tap-web'/>
      <alias name='ua-lan'/>
    </interface>
    <interface type='ethernet' managed='no'>
      <mac address='52:54:00:00:00:02'/>
      <target dev='vnet9' managed='no'/>
    </interface>
    <interface type='direct'>
      <mac address='52:54:00:00:00:03'/>
      <source dev='eth0' mode='bridge'/>
      <target dev='macvtap0'/>
      <alias name='net2'/>
    </interface>
`);
    expect(rewriteDomainForRestore(xml, { name: 'vm2', disks: {} })).toContain(`  <devices>
    <interface type='bridge'>
      <source bridge='br0'/>
      <target dev='tap-web'/>
      <alias name='ua-lan'/>
    </interface>
    <interface type='ethernet' managed='no'>
      <target dev='vnet9' managed='no'/>
    </interface>
    <interface type='direct'>
      <source dev='eth0' mode='bridge'/>
    </interface>
  </devices>`);
  });

  it('drops the SMBIOS uuid (libvirt would reuse it), empties the genid and the nvram path, keeps static seclabels', () => {
    const extra = `  <genid>43dc0cf8-809b-4adb-9bea-a9abb5f3d90e</genid>
  <sysinfo type='smbios'>
    <system>
      <entry name='manufacturer'>ACME</entry>
      <entry name='uuid'>11111111-2222-3333-4444-555555555555</entry>
    </system>
  </sysinfo>
  <os>
    <type arch='x86_64' machine='pc-q35-7.2'>hvm</type>
    <loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE_4M.fd</loader>
    <nvram template='/usr/share/OVMF/OVMF_VARS_4M.fd'>/var/lib/libvirt/qemu/nvram/vm1_VARS.fd</nvram>
  </os>
`;
    const xml = domainWith('', extra).replace('</domain>', `  <seclabel type='static' model='selinux' relabel='yes'>
    <label>system_u:system_r:svirt_t:s0:c1,c2</label>
    <imagelabel>system_u:object_r:svirt_image_t:s0:c1,c2</imagelabel>
  </seclabel>
  <seclabel type='dynamic' model='selinux' relabel='yes'>
    <label>system_u:system_r:svirt_t:s0:c7,c8</label>
    <baselabel>system_u:system_r:svirt_custom_t:s0</baselabel>
  </seclabel>
  <seclabel type='none' model='dac'/>
</domain>`);
    expect(rewriteDomainForRestore(xml, { name: 'vm2', disks: {} })).toBe(`<domain type='kvm'>
  <name>vm2</name>
  <genid/>
  <sysinfo type='smbios'>
    <system>
      <entry name='manufacturer'>ACME</entry>
    </system>
  </sysinfo>
  <os>
    <type arch='x86_64' machine='pc-q35-7.2'>hvm</type>
    <loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE_4M.fd</loader>
    <nvram template='/usr/share/OVMF/OVMF_VARS_4M.fd'/>
  </os>
  <devices>
  </devices>
  <seclabel type='static' model='selinux' relabel='yes'>
    <label>system_u:system_r:svirt_t:s0:c1,c2</label>
  </seclabel>
  <seclabel type='dynamic' model='selinux' relabel='yes'>
    <baselabel>system_u:system_r:svirt_custom_t:s0</baselabel>
  </seclabel>
  <seclabel type='none' model='dac'/>
</domain>
`);
  });

  it('loses nothing else: comments, CDATA, mixed content, entities, white space inside text, a declaration', () => {
    const xml = `<?xml version="1.0" encoding="UTF-8"?>
<!-- edited by hand -->
<domain type='kvm'>
  <name>vm1</name>
  <description>  two  spaces, &lt;tags&gt; &amp; "quotes" &apos;x&apos;, caf&#233;, &#x263A;
second line  </description>
  <!-- keep me -->
  <metadata>
    <app:note xmlns:app="urn:example">a <b>mixed</b> note</app:note>
    <app:raw xmlns:app="urn:example"><![CDATA[<not> & xml]]></app:raw>
  </metadata>
  <devices>
    <emulator attr="a&amp;b &quot;c&quot; it's">/usr/bin/qemu-system-x86_64</emulator>
  </devices>
</domain>
`;
    expect(rewriteDomainForRestore(xml, { name: 'vm <2> & co', disks: {} })).toBe(`<?xml version="1.0" encoding="UTF-8"?>
<!-- edited by hand -->
<domain type='kvm'>
  <name>vm &lt;2&gt; &amp; co</name>
  <description>  two  spaces, &lt;tags&gt; &amp; "quotes" 'x', café, ☺
second line  </description>
  <!-- keep me -->
  <metadata>
    <app:note xmlns:app='urn:example'>a <b>mixed</b> note</app:note>
    <app:raw xmlns:app='urn:example'><![CDATA[<not> & xml]]></app:raw>
  </metadata>
  <devices>
    <emulator attr='a&amp;b &quot;c&quot; it&apos;s'>/usr/bin/qemu-system-x86_64</emulator>
  </devices>
</domain>
`);
  });

  it('adds a <name> when the XML has none, and a <driver> to a restored disk without one', () => {
    const xml = "<domain type='kvm'><devices><disk type='file' device='disk'><source file='/a.img'/><target dev='vda'/></disk></devices></domain>";
    expect(rewriteDomainForRestore(xml, { name: 'vm2', disks: { vda: { path: '/r/vda.qcow2', format: 'qcow2' } } })).toBe(`<domain type='kvm'>
  <name>vm2</name>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/r/vda.qcow2'/>
      <target dev='vda'/>
    </disk>
  </devices>
</domain>
`);
  });

  it('drops the graphics ports libvirt picked and the address it resolved for a network listen', () => {
    const xml = domainWith(`    <graphics type='spice' port='5901' tlsPort='5902' autoport='yes'>
      <listen type='network' address='192.168.122.1' network='default'/>
    </graphics>
    <graphics type='vnc' port='5910' autoport='no' listen='0.0.0.0'>
      <listen type='address' address='0.0.0.0'/>
    </graphics>
`);
    expect(rewriteDomainForRestore(xml, { name: 'vm2', disks: {} })).toContain(`    <graphics type='spice' autoport='yes'>
      <listen type='network' network='default'/>
    </graphics>
    <graphics type='vnc' port='5910' autoport='no' listen='0.0.0.0'>
      <listen type='address' address='0.0.0.0'/>
    </graphics>`);
  });

  it('keeps a channel socket path the user chose', () => {
    const xml = domainWith(`    <channel type='unix'>
      <source mode='bind' path='/srv/vm1/agent.sock'/>
      <target type='virtio' name='org.qemu.guest_agent.0' state='disconnected'/>
    </channel>
`);
    expect(rewriteDomainForRestore(xml, { name: 'vm2', disks: {} })).toContain("<source mode='bind' path='/srv/vm1/agent.sock'/>\n      <target type='virtio' name='org.qemu.guest_agent.0'/>");
  });
});

describe('sharedWritableDisks', () => {
  it('names the writable disks a restore leaves on the original images (not cdroms, read-only or shareable ones)', () => {
    expect(sharedWritableDisks(live, ['vda'])).toEqual([{ target: 'vdb', source: '/var/lib/libvirt/images/web1-data.qcow2' }]);
    expect(sharedWritableDisks(live, ['vda', 'vdb'])).toEqual([]);
    const shareable = domainWith("    <disk type='file' device='disk'>\n      <source file='/shared.img'/>\n      <target dev='vdc'/>\n      <shareable/>\n    </disk>\n");
    expect(sharedWritableDisks(shareable, [])).toEqual([]);
  });
});
