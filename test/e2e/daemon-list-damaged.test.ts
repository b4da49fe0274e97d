// fleeced's GET /v1/repository/backups shows a damaged and a newer-format backup with their state, as `fleece list`
// does (test/faults/hostile-input.test.ts), instead of hiding them; the good backup is listed as before.
import { afterAll, beforeAll, expect, test } from '@jest/globals';
import { readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { makeTempDir, removeTempDir } from '../harness/temp-dir.js';
import { openRepository } from '../../src/repository/index.js';
import { allocatedExtents, mixedDisk } from '../unit/repository/disk-images.js';
import { daemonDirs, startDaemonProcess, type DaemonProcess } from '../integration/daemon/daemon-process.js';

const size = 1024 * 1024;
let dir: string;
let repo: string;
let daemon: DaemonProcess;

beforeAll(async () => {
  dir = await makeTempDir('fleeced-list');
  repo = join(dir, 'repo');
  daemon = await startDaemonProcess(daemonDirs(dir));
});
afterAll(async () => {
  await daemon?.stop();
  await removeTempDir(dir);
});

test('a damaged and a newer-format _metadata are listed with their state, the good backup as before', async () => {
  const r = await openRepository(repo);
  const write = async (seed: number) => {
    const w = await r.startBackup({ volumeId: 'v', size, vm: 'vm1', disk: 'vda', workers: 1 });
    for (const e of allocatedExtents(mixedDisk(size, seed))) await w.write(e);
    return w.finish();
  };
  const good = await write(21);
  const damaged = await write(22);
  const newer = await write(23);
  const metaOf = async (s: { container: string }) => {
    const c = join(repo, s.container);
    return join(c, (await readdir(c)).find((n) => n.endsWith('_metadata'))!);
  };
  const damagedMeta = await metaOf(damaged);
  await writeFile(damagedMeta, (await readFile(damagedMeta, 'utf8')).slice(0, 40));
  const newerMeta = await metaOf(newer);
  await writeFile(newerMeta, (await readFile(newerMeta, 'utf8')).replace(/"version": ?"1\.0\.0"/, '"version": "2.0.0"'));

  // Whatever the filter: an unreadable _metadata names no VM, so it cannot be filtered out.
  for (const query of ['', '&vm=vm1', '&vm=other']) {
    const reply = await daemon.request('GET', `/v1/repository/backups?repo=${encodeURIComponent(repo)}${query}`);
    expect(reply.status).toBe(200);
    expect(Object.keys(reply.body).sort()).toEqual(['backups', 'unreadable']);
    expect(reply.body.backups.map((b: { backupId: string }) => b.backupId)).toEqual(query === '&vm=other' ? [] : [good.backupId]);
    const unreadable = [...reply.body.unreadable].sort((a, b) => a.state.localeCompare(b.state));
    expect(unreadable).toEqual([
      {
        backupId: damaged.backupId, container: damaged.container, object: (await metaOf(damaged)).split('/').at(-1),
        state: 'damaged', reason: expect.any(String),
      },
      {
        backupId: newer.backupId, container: newer.container, object: (await metaOf(newer)).split('/').at(-1),
        state: 'newer-format', formatVersion: '2.0.0', reason: expect.stringMatching(/2\.0\.0/),
      },
    ]);
  }
});
