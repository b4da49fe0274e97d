// `fleece repo init | info | key-generate`, the marker's refusals and an encrypted repository as a user runs them
// (node dist/src/cli/main.js): gc on a directory of photos deletes nothing; list works without the key, restore and
// verify need it (--key-file or FLEECE_PASSPHRASE).
import { jest } from '@jest/globals';
import { createHash } from 'node:crypto';
import { mkdir, readFile, readdir, stat, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { makeTempDir, removeTempDir } from '../harness/temp-dir.js';
import { openRepository } from '../../src/repository/index.js';
import { runCli, runCliJson } from './helpers.js';

const MiB = 1024 * 1024;
jest.setTimeout(120_000);
let dir: string;
beforeEach(async () => { dir = await makeTempDir('cli-repo'); });
afterEach(async () => { await removeTempDir(dir); });

test('fleece gc --repo DIR --grace 0 on a directory of photos refuses and deletes nothing; repo init refuses it too', async () => {
  const photos = join(dir, 'home');
  const past = new Date(Date.now() - 30 * 24 * 3600 * 1000);
  for (const p of ['photos/2023/beach.jpg', 'docs/readme.md']) {
    await mkdir(join(photos, p, '..'), { recursive: true });
    await writeFile(join(photos, p), p);
    await utimes(join(photos, p), past, past);
  }
  const gc = await runCli(dir, ['gc', '--repo', photos, '--grace', '0']);
  expect(gc.exitCode).not.toBe(0);
  expect(gc.stderr).toContain(`${photos} is not a fleece repository`);
  expect(gc.stderr).toMatch(/docs\/readme\.md|photos\/2023\/beach\.jpg/);
  for (const args of [['delete', '--repo', photos, '--backup', 'abcd1234'], ['verify', '--repo', photos, '--backup', 'abcd1234']]) {
    const r = await runCli(dir, args);
    expect(r.exitCode).not.toBe(0);
    expect(r.stderr).toContain(`${photos} is not a fleece repository`);
  }
  const init = await runCli(dir, ['repo', 'init', photos]);
  expect(init.exitCode).not.toBe(0);
  expect(init.stderr).toContain('refusing to make it a repository');
  expect(await readFile(join(photos, 'photos/2023/beach.jpg'), 'utf8')).toBe('photos/2023/beach.jpg');
  expect(await readFile(join(photos, 'docs/readme.md'), 'utf8')).toBe('docs/readme.md');
  expect((await readdir(photos)).sort()).toEqual(['docs', 'photos']);
});

test('an encrypted repository: init with a key file, list without the key, restore and verify with it, and a passphrase', async () => {
  const repo = join(dir, 'repo');
  const key = join(dir, 'repo.key');
  const gen = await runCli(dir, ['repo', 'key-generate', key]);
  expect(gen.exitCode).toBe(0);
  expect((await stat(key)).mode & 0o777).toBe(0o600);
  expect((await readFile(key)).length).toBe(32);
  expect((await runCli(dir, ['repo', 'key-generate', key])).stderr).toContain('already exists');
  expect((await runCli(dir, ['repo', 'init', repo, '--encrypt'])).stderr).toContain('--encrypt needs a key');
  const init = await runCli(dir, ['repo', 'init', repo, '--encrypt', '--key-file', key]);
  expect(init.exitCode).toBe(0);
  expect(init.stdout).toMatch(/created the repository .* encrypted, key id [0-9a-f]{16}/);
  const info = await runCliJson<{ encryption: { scheme: string; kdf: { name: string } } }>(dir, ['repo', 'info', repo]);
  expect(info.encryption).toMatchObject({ scheme: 'aes-256-gcm', kdf: { name: 'hkdf-sha256' } });

  // a backup written through the repository API (with the key)
  const disk = Buffer.alloc(4 * MiB);
  for (let i = 0; i < MiB; i += 32) createHash('sha256').update(String(i)).digest().copy(disk, MiB + i);
  const r = await openRepository(repo, { key: { kind: 'key-file', path: key } });
  const w = await r.startBackup({ volumeId: 'vol-cli', size: disk.length, workers: 1 });
  await w.write({ offset: MiB, length: MiB, data: disk.subarray(MiB, 2 * MiB) });
  const { backupId } = await w.finish();

  const listed = await runCliJson<{ backupId: string }[]>(dir, ['list', '--repo', repo]);
  expect(listed.map((x) => x.backupId)).toEqual([backupId]);
  const locked = await runCli(dir, ['restore', '--repo', repo, '--backup', backupId, '--out', join(dir, 'locked.raw')]);
  expect(locked.exitCode).not.toBe(0);
  expect(locked.stderr).toMatch(/is encrypted \(key id [0-9a-f]{16}\).*--key-file/s);
  const restored = await runCli(dir, ['restore', '--repo', repo, '--backup', backupId, '--out', join(dir, 'out.raw'), '--key-file', key]);
  expect(restored.exitCode).toBe(0);
  expect((await readFile(join(dir, 'out.raw'))).equals(disk)).toBe(true);
  expect((await runCli(dir, ['verify', '--repo', repo, '--backup', backupId, '--deep', '--key-file', key])).exitCode).toBe(0);
  expect((await runCli(dir, ['gc', '--repo', repo, '--grace', '0'])).exitCode).toBe(0); // gc needs no key

  // a passphrase from FLEECE_PASSPHRASE (the CLI's env)
  const repo2 = join(dir, 'repo2');
  process.env.FLEECE_PASSPHRASE = 'a long passphrase';
  try {
    expect((await runCli(dir, ['repo', 'init', repo2, '--encrypt'])).exitCode).toBe(0);
  } finally {
    delete process.env.FLEECE_PASSPHRASE;
  }
  const info2 = await runCliJson<{ encryption: { kdf: { name: string; N: number } } }>(dir, ['repo', 'info', repo2]);
  expect(info2.encryption.kdf).toMatchObject({ name: 'scrypt', N: 2 ** 17 });
});
