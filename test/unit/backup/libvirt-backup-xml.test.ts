// The pull <domainbackup> the libvirt control plane gives libvirt: a unix socket, or TCP with TLS on loopback.
import { describe, expect, test } from '@jest/globals';
import { libvirtBackupXml } from '../../../src/backup/control/libvirt-control-plane.js';
import { parseBackupXml } from '../../../src/backup/definition/index.js';

const disks = [{ target: 'vda', scratch: '/s/vm-vda-abc.qcow2' }, { target: 'vdb', incrementalFrom: 'cp1', scratch: '/s/vm-vdb-abc.qcow2' }];

describe('libvirtBackupXml', () => {
  test('a unix socket by default', () => {
    const def = parseBackupXml(libvirtBackupXml({ socket: '/run/fleece/vm-abc/nbd.sock' }, disks, ['vda', 'vdb', 'hdc']));
    expect(def.server).toEqual({ transport: 'unix', socket: '/run/fleece/vm-abc/nbd.sock' });
    expect(def.disks.map((d) => [d.name, d.backup])).toEqual([['vda', true], ['vdb', true], ['hdc', false]]);
  });

  test("with TLS: tcp on 127.0.0.1 with tls='yes' and the port given", () => {
    const xml = libvirtBackupXml({ tlsPort: 40123 }, disks, ['vda', 'vdb']);
    expect(xml).toContain("<server transport='tcp' name='127.0.0.1' port='40123' tls='yes'/>");
    expect(parseBackupXml(xml).server).toEqual({ transport: 'tcp', name: '127.0.0.1', port: 40123, tls: true });
  });
});
