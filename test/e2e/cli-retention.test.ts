// `fleece prune | protect | unprotect | consolidate | verify --sample` as a user runs them (node dist/src/cli/main.js),
// over ten nights of a two-disk VM written quickly with the repository API (fixed ids and times): the dry-run plan
// (golden), a real prune whose survivors all restore byte-identically, a protected group surviving and keeping its
// parents until it goes, a synthetic full, and a scrub that names every backup a damaged object affects.
import { describe, expect, test, beforeAll, afterAll } from '@jest/globals';
import { execFileSync } from 'node:child_process';
import { readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { makeTempDir, removeTempDir } from '../harness/temp-dir.js';
import { openRepository, type Repository } from '../../src/repository/index.js';
import { alignRangesToBlocks, type Extent } from '../../src/repository/extents.js';
import { allocatedExtents, mixedDisk, seeded, sha } from '../unit/repository/disk-images.js';
import { runCli, runCliJson } from './helpers.js';

const SCRIPT = join(process.cwd(), 'test/compat/cinder_restore.py');
const python = (...args: string[]) => execFileSync('python3', [SCRIPT, ...args], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });

const MiB = 1024 * 1024;
const SIZE = 2 * MiB + 3 * 32 * 1024;
const DISKS = ['vda', 'vdb'] as const;

let dir: string;
let repoDir: string;
/** The content of each disk backup, by backup id. */
const content = new Map<string, Buffer>();

const id = (vm: string, day: number, disk: string) => `${vm}-d${String(day).padStart(2, '0')}-${disk}`;
const group = (vm: string, day: number) => `${vm}-day${String(day).padStart(2, '0')}`;

async function put(repo: Repository, extents: Extent[], opts: Parameters<Repository['startBackup']>[0]) {
  const w = await repo.startBackup({ workers: 1, chunkSize: 256 * 1024, ...opts });
  for (const e of extents) await w.write(e);
  return w.finish();
}

/** Nights 1…10 of VM `vm` at 02:00 UTC, Jan 2026: full on nights `fulls`, else incremental on the night before. */
async function history(repo: Repository, vm: string, fulls: number[], nights = 10): Promise<void> {
  const disk: Record<string, Buffer> = {};
  for (let day = 1; day <= nights; day++) {
    for (const [i, target] of DISKS.entries()) {
      const now = new Date(Date.UTC(2026, 0, day, 2, 0, i));
      const common = { volumeId: `${vm}-${target}`, size: SIZE, vm, disk: target, backupId: id(vm, day, target), groupId: group(vm, day), checkpoint: `${vm}-cp${day}`, now };
      if (fulls.includes(day)) {
        disk[target] = mixedDisk(SIZE, day * 10 + i + (vm === 'db' ? 500 : 0));
        await put(repo, allocatedExtents(disk[target]!), common);
      } else {
        const rnd = seeded(day * 100 + i);
        const next = Buffer.from(disk[target]!);
        const ranges = Array.from({ length: 3 }, () => ({ offset: rnd() % (SIZE - 70000), length: 1 + (rnd() % 60000) }));
        for (const r of ranges) next.fill(day, r.offset, r.offset + r.length);
        disk[target] = next;
        const extents = alignRangesToBlocks(ranges, 32 * 1024, SIZE).map((r) => ({ ...r, data: next.subarray(r.offset, r.offset + r.length) }));
        await put(repo, extents, { ...common, parent: id(vm, day - 1, target), mode: 'changed-extents', incrementalFrom: `${vm}-cp${day - 1}` });
      }
      content.set(id(vm, day, target), disk[target]!);
    }
  }
}

/** Restores every disk of every surviving group of `vm` with `fleece restore --group` and compares it byte for byte. */
async function expectSurvivorsRestore(vm: string): Promise<string[]> {
  const listed = await runCliJson<{ backupId: string; groupId: string; disk: string; vm: string }[]>(dir, ['list', '--repo', repoDir, '--vm', vm]);
  const groups = [...new Set(listed.map((r) => r.groupId))];
  for (const g of groups) {
    const out = join(dir, 'restored', g);
    const r = await runCli(dir, ['restore', '--repo', repoDir, '--group', g, '--out-dir', out, '--format', 'raw', '--force']);
    if (r.exitCode !== 0) throw new Error(`fleece restore --group ${g} exited ${r.exitCode}: ${r.stderr}`);
    for (const rec of listed.filter((x) => x.groupId === g)) {
      const want = content.get(rec.backupId)!;
      expect([rec.backupId, sha(await readFile(join(out, `${rec.disk}.raw`)))]).toEqual([rec.backupId, sha(want)]);
    }
  }
  return groups;
}

beforeAll(async () => {
  dir = await makeTempDir('retention');
  repoDir = join(dir, 'repo');
  const repo = await openRepository(repoDir);
  await history(repo, 'web', [1, 6]);
  await history(repo, 'db', [1], 4);
}, 300_000);
afterAll(async () => { await removeTempDir(dir); });

describe('fleece prune, protect, consolidate, verify --sample', () => {
  test('dry run (golden), real prune with a protected group, its parents kept until it goes; other VMs untouched', async () => {
    // The mark lives in extra_metadata: json.dumps-exact, Cinder still restores, and unprotect gives the bytes back.
    const marked = await (await openRepository(repoDir)).get(id('web', 3, 'vda'));
    const manifest = join(repoDir, marked.container, `${marked.prefix}_metadata`);
    const before = await readFile(manifest);
    const protect = await runCli(dir, ['protect', '--repo', repoDir, '--group', group('web', 3), '--note', 'before the upgrade']);
    expect(protect.exitCode).toBe(0);
    expect(protect.stdout).toBe(`protected: backup ${id('web', 3, 'vda')} (VM web disk vda)\nprotected: backup ${id('web', 3, 'vdb')} (VM web disk vdb)`);
    expect((await runCli(dir, ['protect', '--repo', repoDir, '--backup', id('web', 3, 'vda')])).stdout).toContain('already protected');
    const text = await readFile(manifest, 'utf8');
    expect(JSON.parse(text).extra_metadata.fleece_protected).toEqual({ since: expect.stringMatching(/^20\d\d-/), note: 'before the upgrade' });
    expect(python('canon', manifest)).toBe(text);
    python('restore', repoDir, id('web', 3, 'vda'), join(dir, 'py.raw'), String(SIZE));
    expect(sha(await readFile(join(dir, 'py.raw')))).toBe(sha(content.get(id('web', 3, 'vda'))!));

    const keep = ['--keep-last', '2', '--keep-daily', '3'];
    const dry = await runCli(dir, ['prune', '--repo', repoDir, '--vm', 'web', ...keep, '--dry-run']);
    expect(dry.exitCode).toBe(0);
    expect(dry.stdout.replace(/, freeing [\d.]+ [KMG]?i?B$/, ', freeing X')).toBe(GOLDEN_DRY_RUN); // compressed sizes vary with the random data
    const json = await runCliJson<{ dryRun: boolean; scopes: { groups: { key: string; action: string; why: string; reason: { kind: string; by?: string[] } }[] }[]; removeOrder: string[] }>(
      dir, ['prune', '--repo', repoDir, '--vm', 'web', ...keep, '--dry-run']);
    expect(json.dryRun).toBe(true);
    expect(json.scopes[0]!.groups.find((g) => g.key === group('web', 1))!.reason).toEqual({ kind: 'needed', by: [group('web', 3)] });
    expect(json.removeOrder).toEqual([id('web', 5, 'vdb'), id('web', 5, 'vda'), id('web', 4, 'vdb'), id('web', 4, 'vda')]);
    expect((await runCliJson<unknown[]>(dir, ['list', '--repo', repoDir])).length).toBe(28); // the dry run removed nothing

    const real = await runCli(dir, ['prune', '--repo', repoDir, '--vm', 'web', ...keep]);
    expect(real.exitCode).toBe(0);
    expect(real.stdout).toContain('removed 2 group(s), 4 backup(s) (');
    expect(await expectSurvivorsRestore('web')).toEqual([1, 2, 3, 6, 7, 8, 9, 10].map((d) => group('web', d)));
    expect((await runCliJson<unknown[]>(dir, ['list', '--repo', repoDir, '--vm', 'db'])).length).toBe(8);

    // Unprotected, the group goes, and with it the parents it alone needed.
    expect((await runCli(dir, ['unprotect', '--repo', repoDir, '--group', group('web', 3)])).exitCode).toBe(0);
    expect((await readFile(manifest)).equals(before)).toBe(true);
    const again = await runCliJson<{ deleted: string[] }>(dir, ['prune', '--repo', repoDir, '--vm', 'web', ...keep]);
    expect(again.deleted).toEqual([3, 2, 1].flatMap((d) => [id('web', d, 'vdb'), id('web', d, 'vda')]));
    expect(await expectSurvivorsRestore('web')).toEqual([6, 7, 8, 9, 10].map((d) => group('web', d)));

    // Usage errors.
    const none = await runCli(dir, ['prune', '--repo', repoDir]);
    expect([none.exitCode, none.stderr]).toEqual([2, expect.stringContaining('prune needs at least one --keep-* option of 1 or more')]);
    const bad = await runCli(dir, ['prune', '--repo', repoDir, '--keep-daily', 'seven']);
    expect([bad.exitCode, bad.stderr]).toEqual([2, expect.stringContaining("--keep-daily 'seven' is not a count")]);
  }, 300_000);

  test('consolidate a group into a synthetic full; keep-last 1 then removes the old chain; verify --sample', async () => {
    const c = await runCliJson<{ groupId: string; disks: { backupId: string; sourceId: string; disk: string; bytesRead: number; bytesWritten: number; chain: string[] }[] }>(
      dir, ['consolidate', '--repo', repoDir, '--group', group('db', 4)]);
    expect(c.disks.map((d) => [d.disk, d.sourceId, d.chain.length])).toEqual([['vda', id('db', 4, 'vda'), 4], ['vdb', id('db', 4, 'vdb'), 4]]);
    for (const d of c.disks) content.set(d.backupId, content.get(d.sourceId)!);
    const pruned = await runCliJson<{ deleted: string[] }>(dir, ['prune', '--repo', repoDir, '--vm', 'db', '--keep-last', '1']);
    expect(pruned.deleted).toHaveLength(8);
    expect(await expectSurvivorsRestore('db')).toEqual([c.groupId]);

    // Scrub: every object checked is fine; then a damaged object of web's full names every backup built on it.
    const ok = await runCliJson<{ ok: boolean; objectsChecked: number; objectsTotal: number; seed: number }>(dir, ['verify', '--repo', repoDir, '--sample', '100']);
    expect(ok.ok).toBe(true);
    expect(ok.objectsChecked).toBe(ok.objectsTotal);
    const some = await runCliJson<{ objectsChecked: number; objectsTotal: number; seed: number }>(dir, ['verify', '--repo', repoDir, '--sample', '10', '--seed', '42']);
    expect(some.objectsChecked).toBe(Math.ceil(some.objectsTotal / 10));
    expect(some.seed).toBe(42);

    const record = await (await openRepository(repoDir)).get(id('web', 6, 'vda'));
    const container = join(repoDir, record.container);
    const victim = (await readdir(container)).find((n) => n.endsWith('-00001'))!;
    const bytes = await readFile(join(container, victim));
    bytes[bytes.length - 1]! ^= 0x55;
    await writeFile(join(container, victim), bytes);
    const bad = await runCli(dir, ['verify', '--repo', repoDir, '--sample', '100']);
    expect(bad.exitCode).toBe(1);
    const affected = [6, 7, 8, 9, 10].map((d) => id('web', d, 'vda'));
    expect(bad.stdout).toContain(`damaged: object ${record.container}/${victim}: `);
    expect(bad.stdout).toContain(`  affects 5 backup(s): ${affected.join(', ')}\n`);
    expect(bad.stdout).toContain('DAMAGED (1 problem(s), 5 backup(s) affected)');
    const chainOnly = await runCliJson<{ ok: boolean }>(dir, ['verify', '--repo', repoDir, '--sample', '100', '--backup', id('web', 10, 'vdb')]);
    expect(chainOnly.ok).toBe(true); // vdb's chain does not read the damaged vda object
  }, 300_000);
});

const GOLDEN_DRY_RUN = `prune --keep-last 2 --keep-daily 3
VM web: 10 group(s), keep 8, would remove 2
  CREATED (UTC)        GROUP      DISKS    ACTION  WHY
  2026-01-10 02:00:00  web-day10  vda,vdb  keep    keep-last
  2026-01-09 02:00:00  web-day09  vda,vdb  keep    keep-last
  2026-01-08 02:00:00  web-day08  vda,vdb  keep    keep-daily 2026-01-08
  2026-01-07 02:00:00  web-day07  vda,vdb  keep    keep-daily 2026-01-07
  2026-01-06 02:00:00  web-day06  vda,vdb  keep    keep-daily 2026-01-06
  2026-01-05 02:00:00  web-day05  vda,vdb  remove  no rule keeps it
  2026-01-04 02:00:00  web-day04  vda,vdb  remove  no rule keeps it
  2026-01-03 02:00:00  web-day03  vda,vdb  keep    protected
  2026-01-02 02:00:00  web-day02  vda,vdb  keep    parent of web-day03
  2026-01-01 02:00:00  web-day01  vda,vdb  keep    parent of web-day03
dry run: would remove 2 group(s), 4 backup(s), freeing X`;
