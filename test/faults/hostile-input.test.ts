// Fault suite: hostile input (issue 14, items 6–8) through the built CLI. Each case: a clear error and exit code,
// the repository's backup still restores byte for byte, nothing written where it must not be.
import { afterAll, beforeAll, expect, test } from '@jest/globals';
import { open, readFile, readdir, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { makeTempDir, removeTempDir } from '../harness/temp-dir.js';
import { openRepository } from '../../src/repository/index.js';
import { allocatedExtents, mixedDisk } from '../unit/repository/disk-images.js';
import { runCli } from '../e2e/helpers.js';
import { injectFault } from './fault-count.js';

const size = 1024 * 1024;
const disk = mixedDisk(size, 14);
let dir: string;
let repo: string;
let backupId: string;

beforeAll(async () => {
  dir = await makeTempDir('faults-input');
  repo = join(dir, 'repo');
  const r = await openRepository(repo);
  const w = await r.startBackup({ volumeId: 'v', size, vm: 'vm1', disk: 'vda', workers: 1 });
  for (const e of allocatedExtents(disk)) await w.write(e);
  backupId = (await w.finish()).backupId;
});
afterAll(async () => { await removeTempDir(dir); });

/** (b): the repository's backup restores byte for byte. */
async function restoresIntact(): Promise<void> {
  const out = join(dir, `check-${Date.now()}.raw`);
  const result = await runCli(dir, ['restore', '--repo', repo, '--backup', backupId, '--out', out]);
  expect(result.exitCode).toBe(0);
  expect((await readFile(out)).equals(disk)).toBe(true);
}

test('a 300 MiB backup XML is refused by its size, unread (exit 2)', async () => {
  const path = join(dir, 'huge.xml');
  const handle = await open(path, 'w');
  await handle.write('<domainbackup>');
  await handle.truncate(300 * 1024 * 1024);
  await handle.close();
  const fault = injectFault('hostile input: 300 MiB backup XML');
  const result = await runCli(dir, ['backup-begin', 'vm1', path, '--qmp', join(dir, 'no-such.sock')]);
  expect(result.exitCode).toBe(2);
  expect(result.stderr).toContain(`the backup XML file '${path}' is larger than 10 MiB`);
  fault.held();
});

test('a checkpoint XML with a DOCTYPE and entities is refused; no file named after an entity appears (exit 2)', async () => {
  const backupXml = join(dir, 'laughs.xml');
  const target = join(dir, 'push');
  await writeFile(backupXml, `<!DOCTYPE x [<!ENTITY lol9 "lol">]>
<domainbackup mode="push"><disks><disk name="vda" type="file"><target file="${target}/&lol9;.qcow2"/></disk></disks></domainbackup>`);
  const checkpointXml = join(dir, 'cp.xml');
  await writeFile(checkpointXml, '<domaincheckpoint><name>&lol9;</name></domaincheckpoint>');
  const fault = injectFault('hostile input: DOCTYPE and entities');
  const a = await runCli(dir, ['backup-begin', 'vm1', backupXml, '--qmp', join(dir, 'no-such.sock')]);
  expect(a.exitCode).toBe(2);
  expect(a.stderr).toMatch(/backup XML has a DOCTYPE declaration \(line 1\)/);
  const b = await runCli(dir, ['checkpoint-create', 'vm1', checkpointXml, '--qmp', join(dir, 'no-such.sock')]);
  expect(b.exitCode).toBe(2);
  expect(b.stderr).toMatch(/refers to the entity '&lol9;'/);
  expect((await readdir(dir)).some((n) => n.includes('lol'))).toBe(false);
  fault.held();
});

test('restore --force onto a symbolic link refuses; the link\'s target is untouched', async () => {
  const victim = join(dir, 'precious.txt');
  await writeFile(victim, 'keep me');
  const link = join(dir, 'link.raw');
  await symlink(victim, link);
  const fault = injectFault('hostile input: restore --force onto a symlink');
  const result = await runCli(dir, ['restore', '--repo', repo, '--backup', backupId, '--out', link, '--force']);
  expect(result.exitCode).toBe(1);
  expect(result.stderr).toContain(`the restore target ${link} is a symbolic link: fleece never writes through one, even with --force`);
  expect(await readFile(victim, 'utf8')).toBe('keep me');
  await restoresIntact();
  fault.held();
});

test('list shows a damaged _metadata and a newer-format backup with their state (exit 1), the good one as before', async () => {
  const r = await openRepository(repo);
  const write = async (seed: number) => {
    const w = await r.startBackup({ volumeId: 'v', size, vm: 'vm1', disk: 'vda', workers: 1 });
    for (const e of allocatedExtents(mixedDisk(size, seed))) await w.write(e);
    return w.finish();
  };
  const damaged = await write(15);
  const newer = await write(16);
  const metaOf = async (s: { container: string }) => {
    const c = join(repo, s.container);
    return join(c, (await readdir(c)).find((n) => n.endsWith('_metadata'))!);
  };
  const fault = injectFault('hostile input: damaged and newer-format _metadata');
  const damagedMeta = await metaOf(damaged);
  await writeFile(damagedMeta, (await readFile(damagedMeta, 'utf8')).slice(0, 40));
  const newerMeta = await metaOf(newer);
  await writeFile(newerMeta, (await readFile(newerMeta, 'utf8')).replace(/"version": ?"1\.0\.0"/, '"version": "2.0.0"'));

  const table = await runCli(dir, ['list', '--repo', repo]);
  expect(table.exitCode).toBe(1);
  expect(table.stdout).toContain(backupId);
  expect(table.stderr).toContain(`backup ${damaged.backupId} (`);
  expect(table.stderr).toMatch(new RegExp(`backup ${damaged.backupId} .*DAMAGED, its _metadata cannot be read`));
  expect(table.stderr).toMatch(new RegExp(`backup ${newer.backupId} .*written by a newer fleece \\(format 2\\.0\\.0\\)`));
  const json = await runCli(dir, ['list', '--repo', repo, '--json']);
  expect(json.exitCode).toBe(1);
  const rows = JSON.parse(json.stdout) as { backupId: string; state?: string; formatVersion?: string }[];
  expect(rows.find((x) => x.backupId === damaged.backupId)?.state).toBe('damaged');
  expect(rows.find((x) => x.backupId === newer.backupId)).toMatchObject({ state: 'newer-format', formatVersion: '2.0.0' });
  await restoresIntact();
  fault.held();
});
