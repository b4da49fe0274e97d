// The demo (`npm run demo`'s dist/scripts/demo.js) at a reduced size: the real Linux guest under libvirt (or a bare QEMU
// where libvirt cannot run), the fleece CLI as child processes, a quiesced full and incremental backup restored and
// compared byte for byte; it must succeed, catch a corrupted restore, stop cleanly on Ctrl-C, and leave nothing behind.
// Also the demo's helpers (and those of scripts/bench.mjs, which shares scripts/demo/).
import { describe, expect, test, afterAll, beforeAll } from '@jest/globals';
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, openSync, readdirSync, readSync, closeSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { makeTempDir, removeTempDir } from '../harness/temp-dir.js';
import { libvirtAvailability } from '../harness/libvirt.js';
import { createMixedDisk, parseSize, planRegions } from '../../scripts/demo/mixed-disk.js';
import { coveredBytes, planGuestActivity } from '../../scripts/demo/guest-activity.js';
import { planFiles, totalsOf } from '../../scripts/demo/ext4-disk.js';
import { planGuestWrites } from '../../scripts/demo/guest-writes.js';
import { compareHashes, hashImage, SUPERBLOCK_OFFSET } from '../../scripts/demo/image-compare.js';
import { chooseControlPlane } from '../../scripts/demo/demo-guest.js';
import { makeExt4Disk } from '../../scripts/guest/real-guest.js';

const root = process.cwd();
const demo = join(root, 'dist', 'scripts', 'demo.js');
const cli = process.env.FLEECE_CLI ?? join(root, 'dist', 'src', 'cli', 'main.js');
const MiB = 1024 * 1024;

interface DemoRun {
  code: number | null;
  stdout: string;
  stderr: string;
  pid: number;
}

/**
 * Runs the demo in a process group of its own (as a terminal would run it); `onOutput` sees stdout as it comes and
 * may return 'interrupt' to send SIGINT to the whole group, as a Ctrl-C on the terminal does.
 */
function runDemo(env: NodeJS.ProcessEnv, onOutput?: (stdout: string) => 'interrupt' | undefined): Promise<DemoRun> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [demo], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
    let stdout = '';
    let stderr = '';
    let interrupted = false;
    child.stdout.on('data', (c: Buffer) => {
      stdout += c.toString();
      if (!interrupted && onOutput?.(stdout) === 'interrupt') {
        interrupted = true;
        process.kill(-child.pid!, 'SIGINT');
      }
    });
    child.stderr.on('data', (c: Buffer) => { stderr += c.toString(); });
    child.once('error', reject);
    child.once('close', (code) => resolve({ code, stdout, stderr, pid: child.pid! }));
  });
}

/** Processes whose command line names this demo run (its libvirtd, its QEMU): the VM and run dir carry `demo-<pid>`. */
function leftovers(pid: number): string[] {
  const found = spawnSync('pgrep', ['-a', '-f', `demo-${pid}([^0-9]|$)`], { encoding: 'utf8' });
  return found.stdout.split('\n').filter(Boolean);
}

function summaryRows(stdout: string): string[] {
  return stdout.split('\n').filter((l) => /^(full|incremental)\s/.test(l));
}

describe('demo helpers', () => {
  test('parseSize reads 2G, 64M, 1.5GiB and refuses junk', () => {
    expect(parseSize('2G', 'X')).toBe(2048 * MiB);
    expect(parseSize('64M', 'X')).toBe(64 * MiB);
    expect(parseSize('1.5GiB', 'X')).toBe(1536 * MiB);
    expect(() => parseSize('lots', 'FLEECE_DEMO_SIZE')).toThrow(/FLEECE_DEMO_SIZE=lots is not a size/);
    expect(() => parseSize('1M', 'X')).toThrow(/too small/);
  });

  test('the guest disk holds about half its size in files of each kind, seeded, 4 KiB-aligned', () => {
    const size = 2048 * MiB;
    const files = planFiles(size, 1);
    const totals = totalsOf(files);
    expect(totals.random / size).toBeGreaterThan(0.29);
    expect(totals.random / size).toBeLessThanOrEqual(0.3);
    expect(totals.text / size).toBeGreaterThan(0.14);
    expect(totals.zeros / size).toBeGreaterThan(0.04);
    expect(new Set(files.map((f) => f.path)).size).toBe(files.length);
    expect(files.every((f) => f.size > 0)).toBe(true);
    expect(files.filter((f) => !f.path.startsWith('notes/')).every((f) => f.size % 4096 === 0)).toBe(true);
    expect(Math.max(...files.map((f) => f.size))).toBeLessThanOrEqual(64 * MiB);
    expect(planFiles(size, 1)).toEqual(files);
    expect(() => planFiles(8 * MiB)).toThrow(/too small/);
  });

  test('the guest writes about 1/32 of the disk, to files the disk has, and syncs', () => {
    const size = 2048 * MiB;
    const files = planFiles(size, 1);
    const writes = planGuestWrites(files, size);
    expect(writes.bytes / size).toBeGreaterThan(0.025);
    expect(writes.bytes / size).toBeLessThan(0.035);
    expect(writes.script).toMatch(/&& sync && echo ok$/);
    const named = [...writes.script.matchAll(/(?:of=|rm |>> )((?:data|log)\/\S+)/g)].map((m) => m[1]);
    expect(named.length).toBe(3);
    for (const path of named) expect(files.some((f) => f.path === path)).toBe(true);
  });

  test('image comparison: thaw fields of the ext4 superblock are masked, any other byte counts', async () => {
    const dir = await makeTempDir('demo-compare');
    try {
      const image = join(dir, 'a.raw');
      await makeExt4Disk(image, 16 * MiB, 'raw');
      const reference = await hashImage(image);
      expect(reference.ext4).toBe(true);
      /** A copy of the image with `count` bytes from `offset` inverted. */
      const variant = (name: string, offset: number, count = 1): string => {
        const path = join(dir, name);
        copyFileSync(image, path);
        const fd = openSync(path, 'r+');
        try {
          const b = Buffer.alloc(count);
          readSync(fd, b, 0, count, offset);
          for (let i = 0; i < count; i++) b[i] = b[i]! ^ 0xff;
          writeSync(fd, b, 0, count, offset);
        } finally {
          closeSync(fd);
        }
        return path;
      };
      // s_kbytes_written (0x178) and s_checksum (0x3fc), as a thaw writes them
      const thawed = variant('thawed.raw', SUPERBLOCK_OFFSET + 0x178);
      const thawedToo = variant('thawed2.raw', SUPERBLOCK_OFFSET + 0x3fc, 2);
      expect(compareHashes(await hashImage(thawed), reference)).toEqual({ same: true, thawFields: ['s_kbytes_written'] });
      expect(compareHashes(await hashImage(thawedToo), reference)).toEqual({ same: true, thawFields: ['s_checksum'] });
      expect(compareHashes(reference, reference)).toEqual({ same: true, thawFields: [] });
      // the free block count (0x0c) is in the superblock but no thaw changes it; nor a byte in the data
      expect(compareHashes(await hashImage(variant('free.raw', SUPERBLOCK_OFFSET + 0x0c)), reference).same).toBe(false);
      expect(compareHashes(await hashImage(variant('data.raw', 5 * MiB + 12345)), reference).same).toBe(false);
      // not ext4: every byte counts
      const zeros = join(dir, 'zeros.raw');
      writeFileSync(zeros, Buffer.alloc(MiB));
      expect((await hashImage(zeros)).ext4).toBe(false);
    } finally {
      await removeTempDir(dir);
    }
  });

  test('the control plane: FLEECE_DEMO_MODE forces one, junk is refused, auto takes libvirt where it can run', () => {
    expect(chooseControlPlane('qmp')).toMatchObject({ plane: 'qmp', forced: true });
    expect(chooseControlPlane('libvirt')).toMatchObject({ plane: 'libvirt', forced: true });
    expect(() => chooseControlPlane('xen')).toThrow(/FLEECE_DEMO_MODE=xen is not a mode/);
    expect(chooseControlPlane(undefined)).toMatchObject({ plane: libvirtAvailability().ok ? 'libvirt' : 'qmp', forced: false });
  });

  // scripts/bench.mjs's disk and guest activity (they live in scripts/demo/ too)
  test('bench: the layout tiles the disk with 64 KiB-aligned regions of every kind', () => {
    const size = 2048 * MiB;
    const regions = planRegions(size, 1);
    let at = 0;
    for (const r of regions) {
      expect(r.offset).toBe(at);
      expect(r.length % (64 * 1024)).toBe(0);
      at += r.length;
    }
    expect(at).toBe(size);
    expect(new Set(regions.map((r) => r.kind))).toEqual(new Set(['random', 'text', 'zero-data', 'zero-clusters', 'hole']));
    expect(planRegions(size, 1)).toEqual(regions); // seeded
  });

  test('bench: the guest activity changes a few percent of the disk; overlaps count once', () => {
    const size = 2048 * MiB;
    const writes = planGuestActivity(planRegions(size, 1), size, '/dev/null');
    const covered = coveredBytes(writes);
    expect(covered / size).toBeGreaterThan(0.01);
    expect(covered / size).toBeLessThan(0.06);
    expect(coveredBytes([{ command: '', what: '', offset: 0, length: 10 }, { command: '', what: '', offset: 5, length: 10 }])).toBe(15);
  });

  test('bench: the generated qcow2 holds data exactly where the layout says', async () => {
    const dir = await makeTempDir('demo-disk');
    try {
      const disk = await createMixedDisk(join(dir, 'd.qcow2'), { size: 32 * MiB, seed: 3 });
      const map = JSON.parse(execFileSync('qemu-img', ['map', '--output=json', disk.path], { encoding: 'utf8' })) as { length: number; data: boolean; zero: boolean }[];
      const data = map.filter((e) => e.data).reduce((n, e) => n + e.length, 0);
      expect(data).toBe(disk.allocated);
    } finally {
      await removeTempDir(dir);
    }
  });
});

// The demo needs the compiled tree (npm test builds it before jest).
const built = existsSync(demo) && existsSync(cli);
const expectedPlane = libvirtAvailability().ok ? /^control plane: libvirt: domain fleece-test-demo-\d+ on a private libvirtd/m : /^control plane: bare QEMU through QMP/m;

describe('npm run demo (the real guest)', () => {
  let tmp: string;
  beforeAll(async () => { tmp = await makeTempDir('demo'); });
  afterAll(async () => { await removeTempDir(tmp); });

  (built ? test : test.skip)('FLEECE_DEMO_SIZE=256M: quiesced full and incremental of the writing guest, both points identical, fsck clean, verified; nothing left', async () => {
    // TMPDIR puts the demo's work dir and its libvirtd's run directory under a fleece-test- directory.
    const result = await runDemo({ FLEECE_DEMO_SIZE: '256M', TMPDIR: tmp, FLEECE_DEMO_KEEP: '', FLEECE_DEMO_MODE: '' });
    const output = `${result.stdout}\n${result.stderr}`;
    expect({ code: result.code, output }).toEqual({ code: 0, output: expect.stringContaining('Both points restored and verified: OK') });
    expect(result.stdout).toMatch(expectedPlane);
    const rows = summaryRows(result.stdout);
    expect(rows).toHaveLength(2);
    expect(rows[0]).toMatch(/^full\s+full\s.*\sOK\s+OK\s+OK$/);
    expect(rows[1]).toMatch(/^incremental\s+incremental\s.*\sOK\s+OK\s+OK$/);
    // each point equal to the guest's disk, and quiesced: clean without a journal replay
    expect(result.stdout.match(/restored (full|incremental): sha256 \S+ \([\d.]+ s\) = the guest's disk at that point/g)).toHaveLength(2);
    expect(result.stdout.match(/e2fsck -fn \w+\.raw \([\d.]+ s\): clean, needs_recovery clear/g)).toHaveLength(2);
    expect(leftovers(result.pid)).toEqual([]);
    expect(readdirSync(tmp).filter((n) => n.startsWith('fleece-demo-') || n.startsWith('fleece-test-libvirt-'))).toEqual([]);
  }, 300_000);

  (built ? test : test.skip)('a bare QEMU (FLEECE_DEMO_MODE=qmp): a restored image that differs from the guest disk fails the demo', async () => {
    // A CLI that restores one byte flipped (in free space, so e2fsck is still clean): the demo's comparison must catch it.
    const wrapper = join(tmp, 'corrupting-cli.mjs');
    writeFileSync(wrapper, [
      "import { spawnSync } from 'node:child_process';",
      "import { openSync, fstatSync, readSync, writeSync, closeSync } from 'node:fs';",
      'const args = process.argv.slice(2);',
      "const r = spawnSync(process.execPath, [process.env.REAL_FLEECE_CLI, ...args], { stdio: 'inherit' });",
      "if (args[0] === 'restore' && r.status === 0) {",
      "  const fd = openSync(args[args.indexOf('--out') + 1], 'r+');",
      '  const at = fstatSync(fd).size - 3 * 4096 + 5;',
      '  const b = Buffer.alloc(1);',
      '  readSync(fd, b, 0, 1, at);',
      '  b[0] ^= 0xff;',
      '  writeSync(fd, b, 0, 1, at);',
      '  closeSync(fd);',
      '}',
      'process.exit(r.status ?? 1);',
    ].join('\n'));
    const result = await runDemo({ FLEECE_DEMO_SIZE: '32M', FLEECE_DEMO_MODE: 'qmp', TMPDIR: tmp, FLEECE_CLI: wrapper, REAL_FLEECE_CLI: cli, FLEECE_DEMO_KEEP: '' });
    expect({ code: result.code, stderr: result.stderr }).toEqual({ code: 1, stderr: expect.any(String) });
    expect(result.stdout).toMatch(/^control plane: bare QEMU through QMP: fleece backup --qmp --guest-agent \(FLEECE_DEMO_MODE=qmp\)/m);
    expect(result.stdout).toContain('VERIFICATION FAILED');
    const rows = summaryRows(result.stdout);
    expect(rows).toHaveLength(2);
    for (const row of rows) expect(row).toMatch(/\sFAILED\s+OK\s+OK$/);
    expect(leftovers(result.pid)).toEqual([]);
    expect(readdirSync(tmp).filter((n) => n.startsWith('fleece-demo-'))).toEqual([]);
  }, 300_000);

  (built ? test : test.skip)('Ctrl-C while the guest boots: exit 130, the guest (and libvirtd) stopped, the work directory gone', async () => {
    // Interrupted once the guest runs (the domain on the demo's libvirtd, or the bare QEMU), while it waits for the agent.
    const result = await runDemo({ FLEECE_DEMO_SIZE: '32M', TMPDIR: tmp, FLEECE_DEMO_KEEP: '', FLEECE_DEMO_MODE: '' }, (stdout) =>
      (/^ {6}(libvirt domain|qemu-system-x86_64 -name) /m.test(stdout) ? 'interrupt' : undefined));
    expect({ code: result.code, stderr: result.stderr }).toEqual({ code: 130, stderr: expect.stringContaining('SIGINT: stopping the guest') });
    expect(result.stdout).not.toContain('Summary');
    expect(leftovers(result.pid)).toEqual([]);
    expect(readdirSync(tmp).filter((n) => n.startsWith('fleece-demo-') || n.startsWith('fleece-test-libvirt-'))).toEqual([]);
  }, 300_000);
});
