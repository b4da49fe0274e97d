// Consolidation on a real (posix) repository: the chain reader's segments, a synthetic full that restores
// byte-identical to its point (with fleece and with the independent Python Cinder reader), the level chooser taking it
// as the next parent, a prune of the old chain leaving everything restorable, damage refused, and its cost measured.
import { describe, expect, it, beforeEach, afterEach } from '@jest/globals';
import { execFileSync } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { makeTempDir, removeTempDir } from '../../harness/temp-dir.js';
import { openRepository, type Repository } from '../../../src/repository/repository.js';
import { alignRangesToBlocks, type Extent } from '../../../src/repository/extents.js';
import { chainSegments, consolidateBackup } from '../../../src/repository/consolidate.js';
import { createSparseFileSink } from '../../../src/restore/file-sink.js';
import { restoreBackup } from '../../../src/restore/restore.js';
import { chooseBackupLevel } from '../../../src/backup/level.js';
import { pruneBackups } from '../../../src/app/retention.js';
import type { ObjectEntry } from '../../../src/repository/format/manifest.js';
import { allocatedExtents, mixedDisk, seeded, sha } from './disk-images.js';

const BS = 32 * 1024;
const MiB = 1024 * 1024;
const SCRIPT = join(process.cwd(), 'test/compat/cinder_restore.py');
const python = (...args: string[]) => execFileSync('python3', [SCRIPT, ...args], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });

let dir: string;
beforeEach(async () => { dir = await makeTempDir('consolidate'); });
afterEach(async () => { await removeTempDir(dir); });

async function write(repo: Repository, extents: Extent[], opts: Parameters<Repository['startBackup']>[0]) {
  const w = await repo.startBackup({ workers: 2, ...opts });
  for (const e of extents) await w.write(e);
  return w.finish();
}

/** Overwrites `count` random ranges (some with zeros); the new disk and the ranges, aligned to sha blocks. */
function change(disk: Buffer, seed: number, count: number, maxLen = 200_000): { disk: Buffer; extents: Extent[] } {
  const rnd = seeded(seed);
  const next = Buffer.from(disk);
  const ranges: { offset: number; length: number }[] = [];
  for (let i = 0; i < count; i++) {
    const length = 1 + (rnd() % maxLen);
    const offset = rnd() % (disk.length - length);
    if (i % 4 === 0) next.fill(0, offset, offset + length); else randomBytes(length).copy(next, offset);
    ranges.push({ offset, length });
  }
  const extents = alignRangesToBlocks(ranges, BS, disk.length).map((r): Extent => {
    const data = next.subarray(r.offset, r.offset + r.length);
    return data.equals(Buffer.alloc(r.length)) ? { offset: r.offset, length: r.length, zero: true } : { offset: r.offset, length: r.length, data };
  });
  return { disk: next, extents };
}

async function restoreSha(repo: Repository, id: string, size: number): Promise<string> {
  const out = join(dir, `${id}.raw`);
  const sink = await createSparseFileSink(out, size, { overwrite: true });
  try {
    expect((await restoreBackup(repo, id, sink, { workers: 2 })).verified).toBe(true);
  } finally {
    await sink.close();
  }
  return sha(await readFile(out));
}

describe('chainSegments', () => {
  const e = (name: string, offset: number, length: number): ObjectEntry => ({ name, offset, length, compression: 'none', md5: '0'.repeat(32) });
  it('later objects win, holes are left out, pieces of one object merge, everything is clipped to the size', () => {
    const full = [e('f1', 0, 100), e('f2', 100, 100), e('f3', 300, 100)];
    const inc = [e('i1', 50, 20), e('i2', 190, 20)];
    const segs = chainSegments([{ metadata: { objects: full } }, { metadata: { objects: inc } }], 350);
    expect(segs.map((s) => [s.entry.name, s.offset, s.length, s.backup])).toEqual([
      ['f1', 0, 50, 0], ['i1', 50, 20, 1], ['f1', 70, 30, 0], ['f2', 100, 90, 0], ['i2', 190, 20, 1], ['f3', 300, 50, 0],
    ]);
    expect(chainSegments([{ metadata: { objects: full } }, { metadata: { objects: [e('all', 0, 400)] } }], 400).map((s) => s.entry.name)).toEqual(['all']);
  });
});

describe('consolidate', () => {
  it('a synthetic full of a chain restores byte-identical (fleece and Python), is the next parent, and lets the old chain go', async () => {
    const size = 6 * MiB + 4321;
    const root = join(dir, 'repo');
    const repo = await openRepository(root);
    const common = { volumeId: 'vol-a', size, vm: 'web', disk: 'vda', chunkSize: 512 * 1024 };
    const d0 = mixedDisk(size, 41);
    const t = (s: number) => new Date(Date.UTC(2026, 0, 1, 2, 0, s));
    const full = await write(repo, allocatedExtents(d0), { ...common, checkpoint: 'cp1', groupId: 'g1', now: t(0) });
    const m1 = change(d0, 5, 12);
    const inc1 = await write(repo, m1.extents, { ...common, parent: full.backupId, mode: 'changed-extents', compression: 'zlib', checkpoint: 'cp2', incrementalFrom: 'cp1', groupId: 'g2', now: t(1) });
    const m2 = change(m1.disk, 6, 8);
    const inc2 = await write(repo, allocatedExtents(m2.disk), { ...common, parent: inc1.backupId, mode: 'compare', compression: 'none', checkpoint: 'cp3', incrementalFrom: 'cp2', groupId: 'g3', now: t(2), guestConfig: { format: 'libvirt-domain-xml', text: '<domain/>' } });

    const report = await consolidateBackup(repo, inc2.backupId, { workers: 2, now: t(3) });
    expect(report.chain).toEqual([full.backupId, inc1.backupId, inc2.backupId]);
    expect(report.bytesRead).toBeLessThanOrEqual(report.chainStoredBytes);
    const { record, metadata } = await repo.load(report.backupId);
    expect([record.parentId, record.mode, record.vm, record.disk, record.volumeId, record.checkpoint, record.incrementalFrom, record.size, record.shaBlockSize])
      .toEqual([null, 'full', 'web', 'vda', 'vol-a', 'cp3', undefined, size, BS]);
    expect(record.groupId).toBe(report.groupId);
    expect(record.groupId).not.toBe('g3');
    expect(record.createdAt > (await repo.get(inc2.backupId)).createdAt).toBe(true);
    expect(metadata.extra_metadata?.fleece?.guest_config).toEqual({ format: 'libvirt-domain-xml', text: '<domain/>' });
    expect(metadata.backup_description).toContain(`equal to backup ${inc2.backupId}`);
    // the same bytes as the point, by fleece's restore and by an independent Cinder reader
    expect(await restoreSha(repo, report.backupId, size)).toBe(sha(m2.disk));
    python('restore', root, report.backupId, join(dir, 'py.raw'), String(size));
    expect(sha(await readFile(join(dir, 'py.raw')))).toBe(sha(m2.disk));
    expect((await repo.verify(report.backupId, { deep: true })).problems).toEqual([]);

    // The level chooser takes the synthetic full (same checkpoint, newer) as the next incremental's parent.
    const records = await repo.list();
    const level = chooseBackupLevel({
      vm: 'web', requested: 'auto', disks: [{ target: 'vda', virtualSize: size, format: 'qcow2' }],
      checkpoints: ['cp1', 'cp2', 'cp3'].map((name, i) => ({ name, creationTime: 1000 + i, disks: [{ name: 'vda', checkpoint: 'bitmap' as const }] })),
      checks: ['cp1', 'cp2', 'cp3'].map((name) => ({ name, valid: true, disks: [{ checkpoint: name, disk: 'vda', bitmap: name, state: 'ok' as const }] })),
      records,
    });
    const d = level.disks[0]!;
    expect(d.level === 'incremental' && [d.checkpoint, d.parent.backupId]).toEqual(['cp3', report.backupId]);
    const m3 = change(m2.disk, 7, 5);
    const inc3 = await write(repo, m3.extents, { ...common, parent: report.backupId, mode: 'changed-extents', checkpoint: 'cp4', incrementalFrom: 'cp3', groupId: 'g5', now: t(4) });

    // keep-last 1 keeps the new incremental and its parent, the synthetic full; the old chain goes.
    const pruned = await pruneBackups({ repo, policy: { keep: { last: 1 } } });
    expect(pruned.deleted.sort()).toEqual([full.backupId, inc1.backupId, inc2.backupId].sort());
    expect(pruned.plan.scopes[0]!.groups.map((g) => [g.key, g.action, g.reason.kind])).toEqual([
      ['g5', 'keep', 'rule'], [report.groupId, 'keep', 'needed'], ['g3', 'remove', 'unselected'], ['g2', 'remove', 'unselected'], ['g1', 'remove', 'unselected'],
    ]);
    expect((await repo.list()).map((r) => r.backupId)).toEqual([report.backupId, inc3.backupId]);
    expect(await restoreSha(repo, report.backupId, size)).toBe(sha(m2.disk));
    expect(await restoreSha(repo, inc3.backupId, size)).toBe(sha(m3.disk));
    python('restore', root, inc3.backupId, join(dir, 'py3.raw'), String(size));
    expect(sha(await readFile(join(dir, 'py3.raw')))).toBe(sha(m3.disk));
  });

  it('consolidates a chain written by the Python Cinder writer (no fleece metadata, a short last block)', async () => {
    const size = 2 * MiB + 777;
    const root = join(dir, 'repo');
    const d0 = mixedDisk(size, 33);
    const d1 = Buffer.from(d0);
    d1.fill(0x33, 4096, 4096 + 40000);
    d1.fill(0x44, 1500000, 1540000);
    await writeFile(join(dir, 'd0.raw'), d0);
    await writeFile(join(dir, 'd1.raw'), d1);
    const fullId = randomUUID();
    const incId = randomUUID();
    python('write', root, join(dir, 'd0.raw'), 'vol-b', fullId, '--compression', 'bz2', '--chunk-size', String(512 * 1024));
    python('write', root, join(dir, 'd1.raw'), 'vol-b', incId, '--parent', fullId, '--compression', 'zlib', '--chunk-size', String(512 * 1024));
    const repo = await openRepository(root);
    const report = await consolidateBackup(repo, incId, { workers: 2 });
    expect(report.size).toBe(size);
    expect(await restoreSha(repo, report.backupId, size)).toBe(sha(d1));
    python('restore', root, report.backupId, join(dir, 'py.raw'), String(size));
    expect(sha(await readFile(join(dir, 'py.raw')))).toBe(sha(d1));
  });

  it('a damaged object of the chain fails the consolidation and leaves no new backup', async () => {
    const size = 2 * MiB;
    const root = join(dir, 'repo');
    const repo = await openRepository(root);
    const d0 = mixedDisk(size, 3);
    const full = await write(repo, allocatedExtents(d0), { volumeId: 'v', size, compression: 'none', chunkSize: 256 * 1024 });
    const m1 = change(d0, 9, 3);
    const inc = await write(repo, m1.extents, { volumeId: 'v', size, parent: full.backupId, mode: 'changed-extents' });
    const container = join(root, full.container);
    const victim = (await readdir(container)).find((n) => n.endsWith('-00002'))!;
    const bytes = await readFile(join(container, victim));
    bytes[10]! ^= 0xff;
    await writeFile(join(container, victim), bytes);
    await expect(consolidateBackup(repo, inc.backupId, { workers: 2 })).rejects.toThrow(new RegExp(`${victim}.*md5`));
    expect((await repo.list()).map((r) => r.backupId).sort()).toEqual([full.backupId, inc.backupId].sort());
    const gc = await repo.gc({ gracePeriodMs: 0, dryRun: true });
    expect(gc.removed).toEqual([]);
  });

  it('costs: a 256 MiB chain (full + 3 incrementals) consolidated, read and written bytes measured', async () => {
    const size = 256 * MiB;
    const root = join(dir, 'repo');
    const repo = await openRepository(root);
    const d0 = mixedDisk(size, 77);
    const common = { volumeId: 'big', size, vm: 'web', disk: 'vda' };
    let disk = d0;
    const fullStarted = Date.now();
    let parent = (await write(repo, allocatedExtents(d0), { ...common, checkpoint: 'c0', workers: undefined })).backupId;
    const fullMs = Date.now() - fullStarted;
    const chainStored: number[] = [(await repo.get(parent)).storedBytes!];
    for (let i = 1; i <= 3; i++) {
      const m = change(disk, 100 + i, 40, 256 * 1024); // about 5 MiB changed per night
      disk = m.disk;
      parent = (await write(repo, m.extents, { ...common, parent, mode: 'changed-extents', checkpoint: `c${i}`, workers: undefined })).backupId;
      chainStored.push((await repo.get(parent)).storedBytes!);
    }
    const started = Date.now();
    const report = await consolidateBackup(repo, parent);
    const ms = Date.now() - started;
    const restoreStarted = Date.now();
    expect(await restoreSha(repo, report.backupId, size)).toBe(sha(disk));
    const restoreMs = Date.now() - restoreStarted;
    const mib = (n: number) => (n / MiB).toFixed(1);
    process.stdout.write(`consolidate 256 MiB chain: chain stored ${chainStored.map(mib).join(' + ')} MiB = ${mib(report.chainStoredBytes)} MiB; `
      + `read ${report.objectsRead} objects, ${mib(report.bytesRead)} MiB stored (${mib(report.bytesDecoded)} MiB decoded); `
      + `data ${mib(report.bytesData)} MiB; wrote ${report.objectsWritten} objects, ${mib(report.bytesWritten)} MiB; ${ms} ms (the first full backup of the same disk: ${fullMs} ms; restoring the result: ${restoreMs} ms)\n`);
    expect(report.bytesRead).toBeLessThanOrEqual(report.chainStoredBytes);
    expect(report.bytesWritten).toBeLessThanOrEqual(report.bytesDecoded);
  }, 300_000);
});
