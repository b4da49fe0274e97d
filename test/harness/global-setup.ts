// Runs once before all suites: checks the platform and names the run directory of the shared libvirtd
// (libvirtRunDir in libvirt.ts; created only if a test asks for libvirt; the workers inherit the variable).
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export default async function globalSetup(): Promise<void> {
  if (process.platform !== 'linux') throw new Error('fleece tests need Linux (QEMU, NBD)');
  process.env.FLEECE_TEST_LIBVIRT_DIR ??= join(tmpdir(), `fleece-test-libvirt-${process.pid}`);
}
