// Loads the captured QMP replies under fixtures/qmp/7.2 for the qemu layer's golden tests.
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

export const FIXTURES_7_2 = fileURLToPath(new URL('../../../fixtures/qmp/7.2/', import.meta.url));
export const CAPTURES = '/work/shared/reference/qmp-captures/';

/** One fixture file of fixtures/qmp/7.2 (JSON), keyed by QMP command. */
export function loadFixture(name: string): Record<string, unknown> {
  return JSON.parse(readFileSync(FIXTURES_7_2 + name, 'utf8')) as Record<string, unknown>;
}
