// Bitmap distrust and compare incrementals, as a user runs `fleece backup` against real QEMU (QMP): a block written
// behind the dirty bitmap's back is caught by the clean-block sample and the disk falls back to a compare backup that
// restores byte-identically (at --verify-bitmap 0 the same write is missed: the test can fail); a raw disk's second
// backup is a compare incremental storing only what changed; a disk that lost its checkpoint bitmap is full while the
// others stay incremental, in one run.
import { describe, expect, test } from '@jest/globals';
import { execa } from 'execa';
import { join } from 'node:path';
import { useQemuSystem } from '../harness/jest-qemu.js';
import { createDisk } from '../harness/qemu.js';
import { sha256File } from '../integration/backup/helpers.js';
import { openRepository } from '../../src/repository/index.js';
import { runCli, type BackupJson } from './helpers.js';

const MiB = 1024 * 1024;
const KiB = 1024;

/** `fleece backup --json` with what this feature adds (per-disk compare level, the bitmap sample, warnings). */
type Json = Omit<BackupJson, 'disks'> & {
  warnings: string[];
  disks: (Omit<BackupJson['disks'][number], 'level'> & {
    level: 'full' | 'incremental' | 'compare';
    bitmapCheck?: { checkpoint: string; percent: number; blocks: number; bytes: number; mismatchOffset?: number };
  })[];
};

/** A raw copy of a disk image as it is now (force-share while QEMU holds it; the guest flushed first). */
async function snapshot(image: string, out: string): Promise<string> {
  await execa('qemu-img', ['convert', '-U', '-f', image.endsWith('.qcow2') ? 'qcow2' : 'raw', '-O', 'raw', image, out]);
  return sha256File(out);
}

describe('fleece backup: a dirty bitmap that missed a write', () => {
  const fixture = useQemuSystem(async (dir) => {
    await createDisk(join(dir, 'a.qcow2'), { size: 16 * MiB });
    return { disks: [{ path: join(dir, 'a.qcow2'), target: 'vda' }], extraQmpSockets: 1 };
  });

  test('caught at 100 %: that disk falls back to compare and restores byte-identical; missed at 0 %', async () => {
    const { dir, qemu } = fixture;
    const repo = join(dir, 'repo');
    const write = async (command: string) => {
      await qemu.guestWrite('vda', command);
      await qemu.guestWrite('vda', 'flush');
    };
    /** A guest write the checkpoint's bitmap does not record (as a crash or a write through another node loses one). */
    const writeBehindBitmap = async (bitmap: string, command: string) => {
      await qemu.client.execute('block-dirty-bitmap-disable', { node: 'disk-vda', name: bitmap });
      await write(command);
      await qemu.client.execute('block-dirty-bitmap-enable', { node: 'disk-vda', name: bitmap });
    };
    const backup = async (extra: string[]) => {
      const result = await runCli(dir, ['backup', 'vm1', '--qmp', qemu.extraQmpPaths[0]!, '--repo', repo, ...extra]);
      if (result.exitCode !== 0) throw new Error(`fleece backup exited ${result.exitCode}: ${result.stderr}`);
      return { json: extra.includes('--json') ? JSON.parse(result.stdout) as Json : undefined as unknown as Json, stdout: result.stdout, stderr: result.stderr };
    };
    const restore = async (backupId: string, name: string) => {
      const out = join(dir, name);
      expect((await runCli(dir, ['restore', '--repo', repo, '--backup', backupId, '--out', out])).exitCode).toBe(0);
      return sha256File(out);
    };

    await write('write -P 0x11 0 4M');
    const { json: full } = await backup(['--json']);
    expect(full.level).toBe('full');

    // At 0 % the bitmap is trusted: the incremental reads only the recorded write and misses the other one.
    await write('write -P 0x21 1M 64k');
    await writeBehindBitmap(full.checkpoint!, 'write -P 0x99 8M 64k');
    const p1 = await snapshot(join(dir, 'a.qcow2'), join(dir, 'p1.raw'));
    const { json: trusted } = await backup(['--json', '--verify-bitmap', '0']);
    expect(trusted.disks[0]!.level).toBe('incremental');
    expect(trusted.disks[0]!.bytesRead).toBe(64 * KiB);
    expect(trusted.disks[0]!.bitmapCheck).toBeUndefined();
    expect(await restore(trusted.disks[0]!.backupId, 'r1.raw')).not.toBe(p1); // the missed write: a wrong backup

    // At 100 % every clean block is hashed against the chain: the block the last backup got wrong is found, the disk
    // is read whole and compared with its parent, and the restore is right again.
    await writeBehindBitmap(trusted.checkpoint!, 'write -P 0x98 12M 32k');
    const p2 = await snapshot(join(dir, 'a.qcow2'), join(dir, 'p2.raw'));
    const { json: caught } = await backup(['--json', '--verify-bitmap', '100']);
    const d = caught.disks[0]!;
    expect(d.level).toBe('compare');
    expect(d.parentId).toBe(trusted.disks[0]!.backupId);
    expect(d.bitmapCheck).toMatchObject({ checkpoint: trusted.checkpoint, percent: 100, mismatchOffset: 8 * MiB });
    expect(d.reason).toContain(`the dirty bitmap of checkpoint ${trusted.checkpoint} on disk vda missed a write: the block at offset ${8 * MiB}`);
    expect(caught.reason).toContain('compare incremental against backup');
    expect(caught.warnings.some((w) => w.includes('falls back to a compare backup'))).toBe(true);
    expect(d.bytesRead).toBeGreaterThanOrEqual(4 * MiB + 96 * KiB); // everything allocated was read
    // What differs from the parent: the block at 8M it got wrong and the unrecorded one at 12M, one object each.
    expect(d.objects).toBe(2);
    expect(await restore(d.backupId, 'r2.raw')).toBe(p2);
    const manifest = await (await openRepository(repo)).get(d.backupId);
    expect(manifest.parentId).toBe(trusted.disks[0]!.backupId);

    // A sound bitmap under the default sample: an ordinary incremental, the sample says so, restore identical.
    await write('write -P 0x31 2M 64k');
    const p3 = await snapshot(join(dir, 'a.qcow2'), join(dir, 'p3.raw'));
    const { json: next } = await backup(['--json']);
    expect(next.disks[0]!.level).toBe('incremental');
    expect(next.disks[0]!.bytesRead).toBe(64 * KiB);
    expect(next.disks[0]!.bitmapCheck).toMatchObject({ checkpoint: caught.checkpoint, percent: 0.5 });
    expect(next.disks[0]!.bitmapCheck!.blocks).toBeGreaterThan(0);
    expect(next.disks[0]!.bitmapCheck!.mismatchOffset).toBeUndefined();
    expect(await restore(next.disks[0]!.backupId, 'r3.raw')).toBe(p3);

    // The human output says so too: the warning on stderr, the disk's line on stdout.
    await writeBehindBitmap(next.checkpoint!, 'write -P 0x97 14M 32k');
    const human = await backup(['--verify-bitmap', '100']);
    expect(human.stderr).toMatch(/warning: the dirty bitmap of checkpoint \S+ on disk vda missed a write: the block at offset 14680064 .*falls back to a compare backup/);
    expect(human.stdout).toMatch(/^vm1 vda: backup \S+ \(compare on \S+\)/);

    const text = await runCli(dir, ['backup', 'vm1', '--qmp', qemu.extraQmpPaths[0]!, '--repo', repo, '--verify-bitmap', '101']);
    expect(text.exitCode).toBe(2);
    expect(text.stderr).toContain("'101' is not a percentage from 0 to 100");
  });
});

describe('fleece backup: per-disk levels in one run (QMP)', () => {
  const fixture = useQemuSystem(async (dir) => {
    await createDisk(join(dir, 'a.qcow2'), { size: 16 * MiB });
    await createDisk(join(dir, 'b.qcow2'), { size: 16 * MiB });
    await createDisk(join(dir, 'c.img'), { size: 8 * MiB, format: 'raw' });
    return {
      disks: [{ path: join(dir, 'a.qcow2'), target: 'vda' }, { path: join(dir, 'b.qcow2'), target: 'vdb' }, { path: join(dir, 'c.img'), target: 'vdc' }],
      extraQmpSockets: 1,
    };
  });

  test('vda lost its checkpoint bitmap: full; vdb incremental; raw vdc a compare storing only what changed; all restore', async () => {
    const { dir, qemu } = fixture;
    const repo = join(dir, 'repo');
    const write = async (target: string, command: string) => {
      await qemu.guestWrite(target, command);
      await qemu.guestWrite(target, 'flush');
    };
    const backup = async () => {
      const result = await runCli(dir, ['backup', 'vm3', '--qmp', qemu.extraQmpPaths[0]!, '--repo', repo, '--json']);
      if (result.exitCode !== 0) throw new Error(`fleece backup exited ${result.exitCode}: ${result.stderr}`);
      return JSON.parse(result.stdout) as Json;
    };
    const images = { vda: join(dir, 'a.qcow2'), vdb: join(dir, 'b.qcow2'), vdc: join(dir, 'c.img') };
    const snapshotAll = async (suffix: string) => Object.fromEntries(await Promise.all(
      Object.entries(images).map(async ([t, image]) => [t, await snapshot(image, join(dir, `${t}-${suffix}.raw`))]))) as Record<string, string>;

    await write('vda', 'write -P 0x41 0 2M');
    await write('vdb', 'write -P 0x42 4M 2M');
    await write('vdc', 'write -P 0x43 1M 3M');
    const first = await backup();
    const p0 = await snapshotAll('0');
    expect(first.disks.map((d) => d.level)).toEqual(['full', 'full', 'full']);
    expect(first.disks[2]!.reason).toBe('disk vdc (raw) cannot hold checkpoint bitmaps (only qcow2 can)');

    await qemu.client.execute('block-dirty-bitmap-remove', { node: 'disk-vda', name: first.checkpoint });
    await write('vda', 'write -P 0x51 1M 64k');
    await write('vdb', 'write -P 0x52 8M 64k');
    await write('vdc', 'write -P 0x53 2M 64k');
    const second = await backup();
    const p1 = await snapshotAll('1');
    expect(second.groupId).not.toBe(first.groupId);
    expect(second.level).toBe('incremental');
    expect(second.disks.map((d) => [d.disk, d.level])).toEqual([['vda', 'full'], ['vdb', 'incremental'], ['vdc', 'compare']]);
    const [vda, vdb, vdc] = second.disks as [Json['disks'][number], Json['disks'][number], Json['disks'][number]];
    expect(vda.reason).toContain(`checkpoint ${first.checkpoint} is not valid (disk vda: bitmap ${first.checkpoint} missing)`);
    expect(vda.parentId).toBeNull();
    expect(vdb.parentId).toBe(first.disks[1]!.backupId);
    expect(vdb.bytesRead).toBe(64 * KiB);
    expect(vdc.parentId).toBe(first.disks[2]!.backupId);
    expect(vdc.reason).toContain(`compare incremental against backup ${first.disks[2]!.backupId}`);
    expect(vdc.bytesRead).toBe(first.disks[2]!.bytesRead); // all of the raw disk's data read (3 MiB and QEMU's first 4 KiB)…
    expect(vdc.bytesRead).toBeGreaterThanOrEqual(3 * MiB);
    expect(vdc.objects).toBe(1); // …and only the changed 64 KiB stored
    expect(vdc.bytesStored).toBeLessThan(64 * KiB);
    const r = await openRepository(repo);
    expect((await r.list({ groupId: second.groupId })).map((x) => x.disk).sort()).toEqual(['vda', 'vdb', 'vdc']);

    for (const [json, points, suffix] of [[first, p0, '0'], [second, p1, '1']] as const) {
      for (const d of json.disks) {
        const out = join(dir, `r-${d.disk}-${suffix}.raw`);
        expect((await runCli(dir, ['restore', '--repo', repo, '--backup', d.backupId, '--out', out])).exitCode).toBe(0);
        expect(await sha256File(out)).toBe(points[d.disk]);
      }
    }
  });
});
