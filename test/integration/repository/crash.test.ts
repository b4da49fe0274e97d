// A writer process killed with SIGKILL mid-backup leaves no _metadata: the catalog ignores it and gc removes its objects.
import { spawn, type ChildProcess } from 'node:child_process';
import { readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { once } from 'node:events';
import { createInterface } from 'node:readline';
import { makeTempDir, removeTempDir } from '../../harness/temp-dir.js';
import { openRepository } from '../../../src/repository/repository.js';
import { transpileSources } from './transpile.js';

let dir: string;
let child: ChildProcess | undefined;
beforeEach(async () => { dir = await makeTempDir('crash'); });
afterEach(async () => {
  if (child && child.exitCode === null && child.signalCode === null) {
    child.kill('SIGKILL');
    await once(child, 'exit');
  }
  await removeTempDir(dir);
});

const CHILD = `
import { randomBytes } from 'node:crypto';
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { openRepository } from './src/repository/repository.js';
const root = process.argv[2];
const repo = await openRepository(root);
const size = 1 << 30;
const w = await repo.startBackup({ volumeId: 'crash', size, chunkSize: 256 * 1024, compression: 'none', workers: 1 });
console.log('container ' + w.container);
let told = false;
for (let offset = 0; offset < size; offset += 1 << 20) {
  await w.write({ offset, length: 1 << 20, data: randomBytes(1 << 20) });
  if (!told && (await readdir(join(root, w.container)).catch(() => [])).filter((n) => !n.startsWith('.')).length >= 4) {
    told = true;
    console.log('objects written');
  }
}
`;

it('leaves no _metadata; the catalog does not list it; gc removes its objects', async () => {
  await transpileSources(dir);
  await writeFile(join(dir, 'child.mjs'), CHILD);
  const root = join(dir, 'repo');
  child = spawn(process.execPath, [join(dir, 'child.mjs'), root], { stdio: ['ignore', 'pipe', 'inherit'] });
  let container = '';
  for await (const line of createInterface({ input: child.stdout! })) {
    if (line.startsWith('container ')) container = line.slice('container '.length);
    if (line === 'objects written') break;
  }
  expect(container).not.toBe('');
  child.kill('SIGKILL');
  await once(child, 'exit');
  const left = await readdir(join(root, container));
  expect(left.filter((n) => /-\d{5}$/.test(n)).length).toBeGreaterThanOrEqual(4);
  expect(left.some((n) => n.endsWith('_metadata'))).toBe(false);
  const repo = await openRepository(root);
  expect(await repo.list()).toEqual([]);
  expect((await repo.gc()).removed).toEqual([]); // younger than the grace period: maybe still running
  const gc = await repo.gc({ now: new Date(Date.now() + 2 * 24 * 3600_000) });
  expect(gc.removed.length).toBe(left.length);
  await expect(readdir(join(root, container))).rejects.toThrow(/ENOENT/);
});
