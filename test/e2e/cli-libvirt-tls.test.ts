// `fleece backup DOMAIN` of a libvirt domain registered with --tls-dir: libvirt's pull backup with
// <server transport='tcp' tls='yes'> (QEMU's certificates from qemu.conf's backup_tls_x509_cert_dir), read by fleece
// over nbds:// with the client certificate, restored byte-identically; libvirt and QEMU hold nothing afterwards.
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { copyFile, readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import {
  LIBVIRT_BACKUP_TLS_DIR, createImage, defineTestDomain, libvirtAvailability, sharedLibvirt, type LibvirtHarness, type TestDomain,
} from '../harness/libvirt.js';
import { makeTestPki, pkiToolsAvailable } from '../harness/pki.js';
import { makeTempDir, removeTempDir } from '../harness/temp-dir.js';
import { sha256File, snapshotRaw } from '../integration/backup/helpers.js';
import { runCli, runCliJson, type BackupJson } from './helpers.js';

const MiB = 1024 * 1024;
const available = libvirtAvailability();
const describeLibvirt = available.ok ? describe : describe.skip;
if (!available.ok) console.warn(`libvirt TLS e2e test skipped: ${available.why}`);

describeLibvirt("fleece backup through libvirt with <server transport='tcp' tls='yes'>", () => {
  let dir: string;
  let h: LibvirtHarness;
  let dom: TestDomain | undefined;
  beforeAll(async () => {
    if (!(await pkiToolsAvailable())) throw new Error('certtool/psktool (gnutls-bin) are missing: scripts/install-system-deps.sh installs them');
    dir = await makeTempDir('libvirt-tls');
    h = await sharedLibvirt();
    const pki = await makeTestPki(join(dir, 'pki'));
    for (const file of await readdir(pki.server)) await copyFile(join(pki.server, file), join(LIBVIRT_BACKUP_TLS_DIR, file));
    await createImage(join(dir, 'vda.qcow2'), 'qcow2', 16 * MiB);
    dom = await defineTestDomain(h, { name: `fleece-test-tls-${process.pid}`, disks: [{ target: 'vda', path: join(dir, 'vda.qcow2'), format: 'qcow2' }] });
    const added = await runCli(dir, ['vm', 'add', dom.name, '--connect', h.uri, '--tls-dir', pki.x509]);
    if (added.exitCode !== 0) throw new Error(added.stderr);
  }, 180_000);
  afterAll(async () => {
    await dom?.remove();
    await removeTempDir(dir);
  }, 60_000);

  test('full and incremental read over TLS restore byte-identically; nothing is left in libvirt or QEMU', async () => {
    const repo = join(dir, 'repo');
    await dom!.write('vda', 0, 3 * MiB, 0x3c);
    await dom!.qemuIo('vda', 'flush');
    await snapshotRaw(join(dir, 'vda.qcow2'), join(dir, 'p0.raw'));
    const full = await runCliJson<BackupJson>(dir, ['backup', dom!.name, '--repo', repo]);
    expect(full.controlPlane).toBe('libvirt');
    expect(full.disks[0]!.bytesRead).toBe(3 * MiB);
    await dom!.write('vda', 8 * MiB, 64 * 1024, 0x5d);
    await dom!.qemuIo('vda', 'flush');
    await snapshotRaw(join(dir, 'vda.qcow2'), join(dir, 'p1.raw'));
    const inc = await runCliJson<BackupJson>(dir, ['backup', dom!.name, '--repo', repo]);
    expect(inc.level).toBe('incremental');
    for (const [b, ref] of [[full, 'p0.raw'], [inc, 'p1.raw']] as const) {
      const out = join(dir, `r-${ref}`);
      const restored = await runCli(dir, ['restore', '--repo', repo, '--backup', b.disks[0]!.backupId, '--out', out]);
      expect(restored.exitCode).toBe(0);
      expect(await sha256File(out)).toBe(await sha256File(join(dir, ref)));
    }
    expect((await h.virsh(['domjobinfo', dom!.name])).split('\n')[0]).toMatch(/None/);
    const objects = JSON.parse(await h.virsh(['qemu-monitor-command', dom!.name, '{"execute":"qom-list","arguments":{"path":"/objects"}}'])).return as { type: string }[];
    expect(objects.filter((o) => o.type.includes('tls-creds'))).toEqual([]);
    const exports = JSON.parse(await h.virsh(['qemu-monitor-command', dom!.name, '{"execute":"query-block-exports"}'])).return as unknown[];
    expect(exports).toEqual([]);

    // TLS is what carried it: without the server's certificate in backup_tls_x509_cert_dir, libvirt cannot start it
    await rm(join(LIBVIRT_BACKUP_TLS_DIR, 'server-cert.pem'));
    const refused = await runCli(dir, ['backup', dom!.name, '--repo', repo]);
    expect(refused.exitCode).not.toBe(0);
    expect(refused.stderr).toMatch(/server-cert\.pem|certificate|tls/i);
    await copyFile(join(dir, 'pki', 'server', 'server-cert.pem'), join(LIBVIRT_BACKUP_TLS_DIR, 'server-cert.pem'));
  }, 240_000);
});
