// Runs once after all suites: stops the shared libvirtd if a test started one; the leftover-process check lives in
// scripts/run-tests.mjs so it also covers crashed workers.
import { createRequire } from 'node:module';

export default async function globalTeardown(): Promise<void> {
  // Loaded through require, which jest's transform hook covers here; a static import would go to Node's own ESM
  // loader, which knows neither `.ts` nor the `.js` mapping. libvirt.ts uses only Node built-ins for that reason.
  const require = createRequire(import.meta.url);
  const { stopSharedLibvirt } = require('./libvirt.ts') as typeof import('./libvirt.js');
  await stopSharedLibvirt();
  await (require('./swift.ts') as typeof import('./swift.js')).stopSharedSwift();
}
