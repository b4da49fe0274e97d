// Runs once before all suites: nothing to prepare yet beyond checking the platform.
export default async function globalSetup(): Promise<void> {
  if (process.platform !== 'linux') throw new Error('fleece tests need Linux (QEMU, NBD)');
}
