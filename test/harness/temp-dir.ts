// Every file and socket a test makes lives under a temporary directory whose name starts with "fleece-test-",
// so that `npm test` can find any process a test left behind (its command line names that directory).
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export const TEST_DIR_PREFIX = 'fleece-test-';

export async function makeTempDir(label = 'tmp'): Promise<string> {
  return mkdtemp(join(tmpdir(), `${TEST_DIR_PREFIX}${label}-`));
}

export async function removeTempDir(dir: string): Promise<void> {
  await rm(dir, { recursive: true, force: true });
}
