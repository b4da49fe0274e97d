// The virsh verbs' XML files: a 300 MiB file is refused by its size, unread (it ran the CLI out of memory).
import { open, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { makeTempDir, removeTempDir } from '../../harness/temp-dir.js';
import { readXmlFile } from '../../../src/cli/commands/virsh-input.js';

let dir: string;
beforeEach(async () => { dir = await makeTempDir('xml-input'); });
afterEach(async () => { await removeTempDir(dir); });

it('refuses a 300 MiB backup XML file by its size, without reading it', async () => {
  const path = join(dir, 'huge.xml');
  const handle = await open(path, 'w');
  await handle.write('<domainbackup>');
  await handle.truncate(300 * 1024 * 1024); // sparse: nothing of it is on disk
  await handle.close();
  const before = process.memoryUsage().rss;
  await expect(readXmlFile(path, 'backup')).rejects.toThrow(`the backup XML file '${path}' is larger than 10 MiB`);
  expect(process.memoryUsage().rss - before).toBeLessThan(64 * 1024 * 1024);
});

it('reads a small checkpoint XML file', async () => {
  const path = join(dir, 'cp.xml');
  await writeFile(path, '<domaincheckpoint><name>c1</name></domaincheckpoint>');
  expect(await readXmlFile(path, 'checkpoint')).toContain('<name>c1</name>');
});
