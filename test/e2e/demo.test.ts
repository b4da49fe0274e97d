// The demo (`npm run demo`'s dist/scripts/demo.js) at a reduced size: real QEMU, the fleece CLI as child processes, a
// full and an incremental backup restored and compared byte for byte; it must succeed and leave nothing behind.
import { describe, expect, test, afterAll, beforeAll } from '@jest/globals';
import { spawn } from 'node:child_process';
import { existsSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { execFileSync } from 'node:child_process';
import { makeTempDir, removeTempDir } from '../harness/temp-dir.js';
import { createMixedDisk, parseSize, planRegions } from '../../scripts/demo/mixed-disk.js';
import { coveredBytes, planGuestActivity } from '../../scripts/demo/guest-activity.js';

const root = process.cwd();
const demo = join(root, 'dist', 'scripts', 'demo.js');
const cli = process.env.FLEECE_CLI ?? join(root, 'dist', 'src', 'cli', 'main.js');

function runDemo(env: NodeJS.ProcessEnv): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [demo], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => { stdout += c.toString(); });
    child.stderr.on('data', (c: Buffer) => { stderr += c.toString(); });
    child.once('error', reject);
    child.once('close', (code) => resolve({ code, stdout, stderr }));
  });
}

const MiB = 1024 * 1024;

describe('demo helpers', () => {
  test('parseSize reads 2G, 64M, 1.5GiB and refuses junk', () => {
    expect(parseSize('2G', 'X')).toBe(2048 * MiB);
    expect(parseSize('64M', 'X')).toBe(64 * MiB);
    expect(parseSize('1.5GiB', 'X')).toBe(1536 * MiB);
    expect(() => parseSize('lots', 'FLEECE_DEMO_SIZE')).toThrow(/FLEECE_DEMO_SIZE=lots is not a size/);
    expect(() => parseSize('1M', 'X')).toThrow(/too small/);
  });

  test('the layout tiles the disk with 64 KiB-aligned regions of every kind', () => {
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

  test('the guest activity changes a few percent of the disk; overlaps count once', () => {
    const size = 2048 * MiB;
    const writes = planGuestActivity(planRegions(size, 1), size, '/dev/null');
    const covered = coveredBytes(writes);
    expect(covered / size).toBeGreaterThan(0.01);
    expect(covered / size).toBeLessThan(0.06);
    expect(coveredBytes([{ command: '', what: '', offset: 0, length: 10 }, { command: '', what: '', offset: 5, length: 10 }])).toBe(15);
  });

  test('the generated qcow2 holds data exactly where the layout says', async () => {
    const dir = await makeTempDir('demo-disk');
    try {
      const disk = await createMixedDisk(join(dir, 'd.qcow2'), { size: 32 * MiB, seed: 3 });
      const map = JSON.parse(execFileSync('qemu-img', ['map', '--output=json', disk.path], { encoding: 'utf8' })) as { length: number; data: boolean; zero: boolean }[];
      const data = map.filter((e) => e.data).reduce((n, e) => n + e.length, 0);
      expect(data).toBe(disk.allocated);
      expect(disk.allocated).toBe(disk.totals.random + disk.totals.text + disk.totals['zero-data']);
    } finally {
      await removeTempDir(dir);
    }
  });
});

// The demo needs the compiled tree (npm test builds it before jest).
const built = existsSync(demo) && existsSync(cli);

describe('npm run demo (FLEECE_DEMO_SIZE=64M)', () => {
  let tmp: string;
  beforeAll(async () => { tmp = await makeTempDir('demo'); });
  afterAll(async () => { await removeTempDir(tmp); });

  (built ? test : test.skip)('backs up, writes, backs up incrementally, restores both points and verifies them', async () => {
    // TMPDIR puts the demo's work dir (QEMU sockets, disk, repository) under a fleece-test- directory.
    const result = await runDemo({ FLEECE_DEMO_SIZE: '64M', TMPDIR: tmp, FLEECE_DEMO_KEEP: '' });
    const output = `${result.stdout}\n${result.stderr}`;
    expect({ code: result.code, output }).toEqual({ code: 0, output: expect.stringContaining('Both points restored and verified: OK') });
    // The summary has both rows, each restored byte for byte and verified.
    const rows = result.stdout.split('\n').filter((l) => /^(full|incremental)\s/.test(l));
    expect(rows).toHaveLength(2);
    expect(rows[0]).toMatch(/^full\s+full\s.*\sOK\s+OK$/);
    expect(rows[1]).toMatch(/^incremental\s+incremental\s.*\sOK\s+OK$/);
    // Nothing left: the work dir is gone.
    expect(readdirSync(tmp).filter((n) => n.startsWith('fleece-demo-'))).toEqual([]);
  }, 300_000);

  (built ? test : test.skip)('exits non-zero and says so when a restored image differs from the guest disk', async () => {
    // A CLI that restores one byte flipped: the demo's own sha256 comparison must catch it (fleece verify still passes).
    const wrapper = join(tmp, 'corrupting-cli.mjs');
    writeFileSync(wrapper, [
      "import { spawnSync } from 'node:child_process';",
      "import { openSync, readSync, writeSync, closeSync } from 'node:fs';",
      'const args = process.argv.slice(2);',
      "const r = spawnSync(process.execPath, [process.env.REAL_FLEECE_CLI, ...args], { stdio: 'inherit' });",
      "if (args[0] === 'restore' && r.status === 0) {",
      "  const fd = openSync(args[args.indexOf('--out') + 1], 'r+');",
      '  const b = Buffer.alloc(1);',
      '  readSync(fd, b, 0, 1, 12345);',
      '  b[0] ^= 0xff;',
      '  writeSync(fd, b, 0, 1, 12345);',
      '  closeSync(fd);',
      '}',
      'process.exit(r.status ?? 1);',
    ].join('\n'));
    const result = await runDemo({ FLEECE_DEMO_SIZE: '16M', TMPDIR: tmp, FLEECE_CLI: wrapper, REAL_FLEECE_CLI: cli, FLEECE_DEMO_KEEP: '' });
    expect(result.code).toBe(1);
    expect(result.stdout).toContain('VERIFICATION FAILED');
    const rows = result.stdout.split('\n').filter((l) => /^(full|incremental)\s/.test(l));
    expect(rows).toHaveLength(2);
    for (const row of rows) expect(row).toMatch(/\sFAILED\s+OK$/);
    expect(readdirSync(tmp).filter((n) => n.startsWith('fleece-demo-'))).toEqual([]);
  }, 300_000);
});
