// `npm run demo`: a throwaway guest with a generated disk, a full and an incremental `fleece backup`, both points restored
// and verified byte for byte; prints a summary, leaves nothing running, exits non-zero when a verification fails.
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startQemuSystem, type QemuInstance } from '../test/harness/qemu.js';
import { openRepository } from '../src/repository/repository.js';
import type { BackupRecord } from '../src/repository/catalog.js';
import { describeError, throwIfAborted } from '../src/util/errors.js';
import { createMixedDisk, parseSize, type MixedDisk } from './demo/mixed-disk.js';
import { coveredBytes, planGuestActivity, writeRandomPatternFile } from './demo/guest-activity.js';
import { rawCopy, sha256File } from './demo/reference.js';
import { CLI_PATH, assertSucceeded, describeRun, runFleece, type FleeceRun } from './demo/run-fleece.js';
import { formatBytes, formatRate, formatSeconds, formatTable } from './demo/table.js';

const VM = 'demo';
const STEPS = 8;

interface Point {
  label: 'full' | 'incremental';
  referenceSha: string;
  backup?: FleeceRun;
  record?: BackupRecord;
  restore?: FleeceRun;
  restoredSha?: string;
  verify?: FleeceRun;
}

const controller = new AbortController();
const { signal } = controller;
let stepNumber = 0;

function say(text: string): void {
  process.stdout.write(`${text}\n`);
}

async function step<T>(title: string, body: () => Promise<T>): Promise<T> {
  throwIfAborted(signal, 'the demo');
  stepNumber += 1;
  say(`\n[${stepNumber}/${STEPS}] ${title}`);
  const started = performance.now();
  const result = await body();
  say(`      done in ${formatSeconds((performance.now() - started) / 1000)}`);
  return result;
}

function describeMix(disk: MixedDisk): string {
  const t = disk.totals;
  return `${formatBytes(t.random)} random, ${formatBytes(t.text)} text, ${formatBytes(t['zero-data'])} zero bytes, `
    + `${formatBytes(t['zero-clusters'])} zero clusters, ${formatBytes(t.hole)} holes`;
}

/** Runs fleece with the demo's environment; the user sees its output (progress bar on a terminal). */
function fleece(args: string[], work: string, output: 'inherit' | 'capture' = 'inherit'): Promise<FleeceRun> {
  say(`      $ ${describeRun(args)}`);
  return runFleece(args, { output, signal, env: { ...process.env, FLEECE_RUN_DIR: join(work, 'run') } });
}

async function newRecord(repoDir: string, known: ReadonlySet<string>): Promise<BackupRecord> {
  const records = await (await openRepository(repoDir)).list({ vm: VM });
  const fresh = records.filter((r) => !known.has(r.backupId));
  if (fresh.length !== 1) {
    throw new Error(`expected one new backup of VM '${VM}' in ${repoDir}, found ${fresh.length}`);
  }
  return fresh[0]!;
}

async function backupPoint(point: Point, work: string, qemu: QemuInstance, known: Set<string>, level: string[]): Promise<void> {
  const repo = join(work, 'repo');
  point.backup = await fleece(['backup', VM, '--qmp', qemu.extraQmpPaths[0]!, '--repo', repo, '--state-dir', join(work, 'state'), ...level], work);
  assertSucceeded(point.backup);
  point.record = await newRecord(repo, known);
  known.add(point.record.backupId);
  say(`      backup ${point.record.backupId}: ${point.record.parentId ? `incremental on ${point.record.parentId}` : 'full'}, `
    + `${formatBytes(point.record.dataBytes)} of data, ${formatBytes(point.record.storedBytes ?? 0)} stored`);
}

async function reference(disk: MixedDisk, work: string, name: string): Promise<string> {
  const out = join(work, 'reference', `${name}.raw`);
  await rawCopy(disk.path, out, signal);
  const sha = await sha256File(out, signal);
  if (process.env.FLEECE_DEMO_KEEP !== '1') await rm(out, { force: true });
  say(`      reference copy (qemu-img convert -U -O raw) sha256 ${sha.slice(0, 16)}…`);
  return sha;
}

async function restoreAndCheck(point: Point, work: string): Promise<void> {
  const out = join(work, 'restore', `${point.label}.raw`);
  const repo = join(work, 'repo');
  point.restore = await fleece(['restore', '--repo', repo, '--backup', point.record!.backupId, '--out', out, '--format', 'raw'], work);
  if (point.restore.exitCode === 0) {
    point.restoredSha = await sha256File(out, signal);
    if (process.env.FLEECE_DEMO_KEEP !== '1') await rm(out, { force: true });
    const same = point.restoredSha === point.referenceSha;
    say(`      restored ${point.label}: sha256 ${point.restoredSha.slice(0, 16)}… ${same ? 'matches the guest disk at that point' : 'DIFFERS from the guest disk at that point'}`);
  } else {
    // A failed restore is a failed verification: carry on so the summary shows every result.
    say(`      RESTORE FAILED: ${describeRun(point.restore.args)} exited with status ${point.restore.exitCode ?? point.restore.signal}`);
  }
  point.verify = await fleece(['verify', '--repo', repo, '--backup', point.record!.backupId], work);
}

function summary(disk: MixedDisk, points: Point[]): { text: string; ok: boolean } {
  let ok = true;
  const rows = points.map((p) => {
    const restoredOk = p.restoredSha !== undefined && p.restoredSha === p.referenceSha;
    const verifyOk = p.verify?.exitCode === 0;
    const levelOk = p.label === 'full' ? p.record?.parentId === null : Boolean(p.record?.parentId);
    ok &&= restoredOk && verifyOk && levelOk;
    const data = p.record?.dataBytes ?? 0;
    const seconds = p.backup?.seconds ?? 0;
    return [
      p.label,
      levelOk ? (p.record?.parentId ? 'incremental' : 'full') : `NOT ${p.label}`,
      formatBytes(data),
      formatBytes(p.record?.storedBytes ?? 0),
      formatSeconds(seconds),
      formatRate(data, seconds),
      p.restore ? formatSeconds(p.restore.seconds) : '-',
      restoredOk ? 'OK' : 'FAILED',
      verifyOk ? 'OK' : 'FAILED',
    ];
  });
  const table = formatTable(
    ['point', 'backup', 'data', 'stored', 'time', 'throughput', 'restore', 'sha256 = guest', 'fleece verify'],
    rows,
  );
  const text = [
    `disk: ${formatBytes(disk.size)} virtual (qcow2), ${formatBytes(disk.allocated)} allocated: ${describeMix(disk)}`,
    '',
    table,
    '',
    'data: bytes fleece stored uncompressed (zeros and holes are not stored); stored: after zstd; time: the whole',
    'fleece command (QMP, fleecing, NBD read, hashing, compression, commit); throughput: data / time.',
  ].join('\n');
  return { text, ok };
}

async function main(): Promise<number> {
  const size = parseSize(process.env.FLEECE_DEMO_SIZE ?? '2G', 'FLEECE_DEMO_SIZE');
  if (!existsSync(CLI_PATH)) {
    throw new Error(`${CLI_PATH} is missing: run \`npm run build\` (or \`npm run demo\`, which builds first)`);
  }
  const work = await mkdtemp(join(tmpdir(), 'fleece-demo-'));
  for (const sub of ['disk', 'qemu', 'reference', 'restore', 'run']) await mkdir(join(work, sub));
  say(`fleece demo: a ${formatBytes(size)} guest disk, a full and an incremental backup, both restored and verified`);
  say(`work directory: ${work}${process.env.FLEECE_DEMO_KEEP === '1' ? ' (kept: FLEECE_DEMO_KEEP=1)' : ' (removed at the end; FLEECE_DEMO_KEEP=1 keeps it)'}`);
  let qemu: QemuInstance | undefined;
  try {
    const disk = await step(`Generating the guest disk (${formatBytes(size)} virtual, qemu-img + qemu-io, offline)`, async () => {
      const created = await createMixedDisk(join(work, 'disk', 'vda.qcow2'), { size, signal });
      say(`      ${describeMix(created)}`);
      return created;
    });
    qemu = await step('Starting the guest (qemu-system-x86_64, TCG, paused CPU; the disk is live on virtio-blk vda)', async () => {
      const started = await startQemuSystem({
        disks: [{ path: disk.path, format: 'qcow2', target: 'vda' }],
        dir: join(work, 'qemu'),
        // A QMP socket takes one client at a time: the demo plays the guest on the first, fleece connects to the second.
        extraQmpSockets: 1,
      });
      say(`      QEMU pid ${started.pid}, QMP socket for fleece ${started.extraQmpPaths[0]}`);
      return started;
    });
    const guest = qemu;
    const known = new Set<string>();
    const full: Point = { label: 'full', referenceSha: '' };
    await step('Full backup (fleece backup --full): fleecing export read over NBD into the repository', async () => {
      full.referenceSha = await reference(disk, work, 'full');
      await backupPoint(full, work, guest, known, ['--full']);
    });
    await step('The guest writes: overwrites, new data in holes, zeroed ranges, scattered 4 KiB writes', async () => {
      const pattern = join(work, 'disk', 'random-4m.bin');
      writeRandomPatternFile(pattern);
      const writes = planGuestActivity(disk.regions, disk.size, pattern);
      for (const w of writes) {
        throwIfAborted(signal, 'the demo');
        await guest.guestWrite('vda', w.command);
      }
      await guest.guestWrite('vda', 'flush');
      say(`      ${writes.length} guest writes covering ${formatBytes(coveredBytes(writes))} (${(100 * coveredBytes(writes) / disk.size).toFixed(1)} % of the disk)`);
    });
    const incremental: Point = { label: 'incremental', referenceSha: '' };
    await step('Second backup (fleece backup, level chosen by fleece: incremental from the checkpoint)', async () => {
      incremental.referenceSha = await reference(disk, work, 'incremental');
      await backupPoint(incremental, work, guest, known, []);
    });
    await step('Stopping the guest', async () => {
      await guest.stop();
    });
    await step('Restoring both points (fleece restore) and checking them byte for byte, then fleece verify', async () => {
      await restoreAndCheck(full, work);
      await restoreAndCheck(incremental, work);
    });
    const result = await step('The repository (fleece list)', async () => {
      const list = await fleece(['list', '--repo', join(work, 'repo')], work);
      assertSucceeded(list);
      return summary(disk, [full, incremental]);
    });
    say(`\nSummary\n${result.text}\n`);
    say(result.ok ? 'Both points restored and verified: OK' : 'VERIFICATION FAILED (see the table above)');
    return result.ok ? 0 : 1;
  } finally {
    await qemu?.stop();
    if (process.env.FLEECE_DEMO_KEEP === '1') say(`kept ${work}`);
    else await rm(work, { recursive: true, force: true });
  }
}

let interrupts = 0;
for (const name of ['SIGINT', 'SIGTERM'] as const) {
  process.on(name, () => {
    interrupts += 1;
    if (interrupts > 1) {
      process.stderr.write('\ninterrupted again: exiting now (QEMU is killed on exit)\n');
      process.exit(130);
    }
    process.stderr.write(`\n${name}: stopping the guest and cleaning up (again to force)\n`);
    controller.abort(new Error(`interrupted by ${name}`));
  });
}

main().then(
  (code) => { process.exitCode = code; },
  (error: unknown) => {
    process.stderr.write(`\nfleece demo failed: ${signal.aborted ? 'interrupted' : describeError(error)}\n`);
    process.exitCode = signal.aborted ? 130 : 1;
  },
);
