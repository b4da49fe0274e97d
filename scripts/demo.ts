// `npm run demo`: a real Linux guest (Debian's kernel, ext4 on its vda, qemu-guest-agent) under libvirt when libvirt can
// run here (else a bare QEMU), a quiesced full and incremental `fleece backup` with the guest writing files between them,
// both points restored and checked byte for byte against the guest's disk, with e2fsck and `fleece verify`; prints a
// summary, leaves nothing running, exits non-zero when a check fails.
import { existsSync, rmSync } from 'node:fs';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openRepository } from '../src/repository/repository.js';
import type { BackupRecord } from '../src/repository/catalog.js';
import { AbortedError, describeError, throwIfAborted } from '../src/util/errors.js';
import { ensureRealGuest, type RealGuestImage } from './guest/real-guest.js';
import { chooseControlPlane, killGuestsNow, startLibvirtGuest, startQemuGuest, type DemoGuest, type PlaneChoice } from './demo/demo-guest.js';
import { createFilledExt4Disk, fsckImage, scratchDirFor, type FilledDisk, type FsckResult } from './demo/ext4-disk.js';
import { planGuestWrites } from './demo/guest-writes.js';
import { compareHashes, hashImage, needsRecovery, type Comparison, type ImageHash } from './demo/image-compare.js';
import { parseSize } from './demo/mixed-disk.js';
import { rawCopy } from './demo/reference.js';
import { CLI_PATH, assertSucceeded, describeRun, runFleece, type FleeceRun } from './demo/run-fleece.js';
import { formatBytes, formatRate, formatSeconds, formatTable } from './demo/table.js';

/** The VM's name: the libvirt harness wants the fleece-test- prefix, and the pid makes every run's processes findable. */
const VM = `fleece-test-demo-${process.pid}`;
const STEPS = 8;
const BOOT_TIMEOUT_MS = 180_000;
const WRITES_TIMEOUT_MS = 600_000;
const KEEP = process.env.FLEECE_DEMO_KEEP === '1';

interface Point {
  label: 'full' | 'incremental';
  backup?: FleeceRun;
  record?: BackupRecord;
  /** The guest's disk right after the backup (see referenceCopy). */
  reference?: ImageHash;
  restore?: FleeceRun;
  restored?: ImageHash;
  comparison?: Comparison;
  fsck?: FsckResult;
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

function describeDisk(disk: FilledDisk): string {
  const t = disk.totals;
  return `${t.files} files: ${formatBytes(t.random)} of random data, ${formatBytes(t.text)} of text (logs, notes), `
    + `${formatBytes(t.zeros)} zero-filled (sparse); the rest free`;
}

/** Runs fleece with the demo's environment; the user sees its output (progress bar on a terminal). */
function fleece(args: string[], work: string): Promise<FleeceRun> {
  say(`      $ ${describeRun(args)}`);
  return runFleece(args, {
    output: 'inherit',
    signal,
    env: {
      ...process.env,
      FLEECE_RUN_DIR: join(work, 'run'),
      FLEECE_STATE_DIR: join(work, 'state'),
      FLEECE_CONFIG_DIR: join(work, 'config'),
    },
  });
}

async function newRecord(repoDir: string, vm: string, known: ReadonlySet<string>): Promise<BackupRecord> {
  const records = await (await openRepository(repoDir)).list({ vm });
  const fresh = records.filter((r) => !known.has(r.backupId));
  if (fresh.length !== 1) throw new Error(`expected one new backup of VM '${vm}' in ${repoDir}, found ${fresh.length}`);
  return fresh[0]!;
}

async function backupPoint(point: Point, work: string, guest: DemoGuest, known: Set<string>, level: string[]): Promise<void> {
  const repo = join(work, 'repo');
  guest.agent.release(); // a bare QEMU's agent socket takes one client: fleece's, for the freeze
  point.backup = await fleece(['backup', guest.vm, ...guest.fleeceArgs, '--repo', repo, '--quiesce', ...level], work);
  assertSucceeded(point.backup);
  point.record = await newRecord(repo, guest.vm, known);
  known.add(point.record.backupId);
  say(`      backup ${point.record.backupId}: ${point.record.parentId ? `incremental on ${point.record.parentId}` : 'full'}, `
    + `${formatBytes(point.record.dataBytes)} of data, ${formatBytes(point.record.storedBytes ?? 0)} stored`);
}

/**
 * The guest's disk as the backup's point in time left it, to compare the restored image with. The guest is idle
 * (nothing writes between the backups but the script of step 4, which has finished and synced), so its disk stays
 * as it was at the point in time, but for one write: --quiesce froze the file system for the point in time (ext4
 * flushed its journal and wrote its superblock, needs_recovery cleared) and thawed it right after, and the thaw
 * writes the superblock again. A copy taken before the backup would miss what the freeze wrote; a copy taken after
 * it has the thaw's write, and image-compare.ts masks exactly the superblock fields a thaw writes. `qemu-img convert
 * -U` reads the qcow2 the running QEMU holds open (it flushed at the freeze, and the idle guest writes nothing since).
 */
async function referenceCopy(diskPath: string, work: string, name: string): Promise<ImageHash> {
  const out = join(work, 'reference', `${name}.raw`);
  await rawCopy(diskPath, out, signal);
  const hash = await hashImage(out, signal);
  if (!KEEP) await rm(out, { force: true });
  say(`      the guest's disk after it (the guest idle; qemu-img convert -U -O raw): sha256 ${hash.sha256.slice(0, 16)}… (thaw fields masked)`
    + `${needsRecovery(hash.superblock) ? ', needs_recovery set again by the thaw (the guest has it mounted)' : ''}`);
  return hash;
}

async function restoreAndCheck(point: Point, work: string): Promise<void> {
  const out = join(work, 'restore', `${point.label}.raw`);
  const repo = join(work, 'repo');
  point.restore = await fleece(['restore', '--repo', repo, '--backup', point.record!.backupId, '--out', out, '--format', 'raw'], work);
  if (point.restore.exitCode === 0) {
    let started = performance.now();
    point.restored = await hashImage(out, signal);
    const hashSeconds = (performance.now() - started) / 1000;
    point.comparison = compareHashes(point.restored, point.reference!);
    const c = point.comparison;
    const verdict = !c.same
      ? `DIFFERS from the guest's disk at that point (${c.why})`
      : c.thawFields.length === 0
        ? `= the guest's disk at that point, every byte`
        : `= the guest's disk at that point: every byte, but for the superblock fields its thaw wrote after it (${c.thawFields.join(', ')})`;
    say(`      restored ${point.label}: sha256 ${point.restored.sha256.slice(0, 16)}… (${formatSeconds(hashSeconds)}) ${verdict}`);
    started = performance.now();
    point.fsck = await fsckImage(out, signal);
    const fsckSeconds = (performance.now() - started) / 1000;
    const journal = needsRecovery(point.restored.superblock)
      ? 'needs_recovery set: checked without replaying the journal'
      : 'needs_recovery clear: consistent as it is, no journal to replay (quiesced)';
    say(`      $ e2fsck -fn ${point.label}.raw (${formatSeconds(fsckSeconds)}): ${point.fsck.ok ? 'clean' : `FAILED (exit ${point.fsck.exitCode})`}, ${journal}: ${point.fsck.summary}`);
    if (!point.fsck.ok) say(point.fsck.output.trim().split('\n').slice(-15).map((l) => `        ${l}`).join('\n'));
    if (!KEEP) await rm(out, { force: true });
  } else {
    // A failed restore is a failed check: carry on so the summary shows every result.
    say(`      RESTORE FAILED: ${describeRun(point.restore.args)} exited with status ${point.restore.exitCode ?? point.restore.signal}`);
  }
  point.verify = await fleece(['verify', '--repo', repo, '--backup', point.record!.backupId], work);
}

interface Facts {
  disk: FilledDisk;
  image: RealGuestImage;
  guest: DemoGuest;
  choice: PlaneChoice;
  bootSeconds: number;
  guestWrote: number;
}

function summary(facts: Facts, points: Point[]): { text: string; ok: boolean } {
  let ok = true;
  const rows = points.map((p) => {
    const sameOk = p.comparison?.same === true;
    const fsckOk = p.fsck?.ok === true;
    const verifyOk = p.verify?.exitCode === 0;
    const levelOk = p.label === 'full' ? p.record?.parentId === null : Boolean(p.record?.parentId);
    ok &&= sameOk && fsckOk && verifyOk && levelOk;
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
      sameOk ? 'OK' : 'FAILED',
      fsckOk ? 'OK' : 'FAILED',
      verifyOk ? 'OK' : 'FAILED',
    ];
  });
  const table = formatTable(
    ['point', 'backup', 'data', 'stored', 'time', 'throughput', 'restore', '= guest disk', 'e2fsck -fn', 'fleece verify'],
    rows,
  );
  const { guest, choice } = facts;
  const plane = guest.plane === 'libvirt'
    ? `libvirt: domain ${guest.vm} on a private libvirtd, fleece backup --connect (${choice.why})`
    : `bare QEMU through QMP: fleece backup --qmp --guest-agent (${choice.why})`;
  const text = [
    `control plane: ${plane}`,
    `guest: Linux ${facts.image.kernelVersion} under TCG, booted in ${formatSeconds(facts.bootSeconds)}; it wrote ${formatBytes(facts.guestWrote)} between the backups`,
    `disk: ${formatBytes(facts.disk.size)} ext4 (qcow2), ${describeDisk(facts.disk)}`,
    '',
    table,
    '',
    'data: bytes fleece stored uncompressed (free space and zeros are not read); stored: after zstd; time: the whole',
    'fleece command (freeze and thaw, the backup job, NBD read, hashing, compression, commit); throughput: data / time.',
    '= guest disk: the restored raw image against the guest\'s disk right after the backup, byte for byte but for the',
    'ext4 superblock fields that the guest\'s thaw rewrote after the point in time (see scripts/demo/image-compare.ts).',
  ].join('\n');
  return { text, ok };
}

async function startGuest(choice: PlaneChoice, disk: FilledDisk, image: RealGuestImage, work: string): Promise<{ guest: DemoGuest; choice: PlaneChoice }> {
  const options = { name: VM, disk: disk.path, image, dir: join(work, 'qemu'), signal, say };
  say(`      control plane: ${choice.plane === 'libvirt' ? 'libvirt' : 'a bare QEMU through QMP'} (${choice.why}${choice.forced ? '' : '; FLEECE_DEMO_MODE=libvirt|qmp to choose'})`);
  if (choice.plane === 'qmp') return { guest: await startQemuGuest(options), choice };
  try {
    return { guest: await startLibvirtGuest(options), choice };
  } catch (error) {
    if (choice.forced || error instanceof AbortedError || signal.aborted) throw error;
    const why = describeError(error).split('\n')[0]!;
    say(`      libvirt did not work here (${why}): a bare QEMU instead`);
    const fallback: PlaneChoice = { plane: 'qmp', forced: false, why: `libvirtd failed: ${why}` };
    return { guest: await startQemuGuest(options), choice: fallback };
  }
}

async function main(): Promise<number> {
  const size = parseSize(process.env.FLEECE_DEMO_SIZE ?? '2G', 'FLEECE_DEMO_SIZE');
  let choice = chooseControlPlane(process.env.FLEECE_DEMO_MODE);
  if (!existsSync(CLI_PATH)) {
    throw new Error(`${CLI_PATH} is missing: run \`npm run build\` (or \`npm run demo\`, which builds first)`);
  }
  const work = await mkdtemp(join(tmpdir(), 'fleece-demo-'));
  workDir = work;
  for (const sub of ['disk', 'qemu', 'reference', 'restore', 'run', 'state', 'config']) await mkdir(join(work, sub));
  say(`fleece demo: a real Linux guest with a ${formatBytes(size)} ext4 disk, a quiesced full and incremental backup while it `
    + 'writes files, both points restored and checked');
  say(`work directory: ${work}${KEEP ? ' (kept: FLEECE_DEMO_KEEP=1)' : ' (removed at the end; FLEECE_DEMO_KEEP=1 keeps it)'}`);
  let guest: DemoGuest | undefined;
  try {
    const { image, disk } = await step(`Preparing the guest: kernel + initramfs, and a ${formatBytes(size)} ext4 disk filled with files (offline)`, async () => {
      const built = await ensureRealGuest({ log: (line) => say(`      ${line}`) });
      say(`      Linux ${built.kernelVersion} (Debian's cloud kernel), a busybox initramfs, qemu-guest-agent: ${built.kernel}, ${built.initrd}`);
      scratchDir = await scratchDirFor(size, join(work, 'disk', 'scratch'));
      let filled: FilledDisk;
      try {
        filled = await createFilledExt4Disk(join(work, 'disk', 'vda.qcow2'), { size, scratch: scratchDir, signal });
      } finally {
        await rm(scratchDir, { recursive: true, force: true });
        scratchDir = undefined;
      }
      say(`      vda.qcow2: mkfs.ext4 -d with ${describeDisk(filled)}`);
      return { image: built, disk: filled };
    });
    let bootSeconds = 0;
    const running = await step('Starting the guest and waiting for its agent (it mounts vda on /mnt, then starts qemu-ga)', async () => {
      const started = await startGuest(choice, disk, image, work);
      guest = started.guest; // stopped in the finally below from here on
      choice = started.choice;
      for (const line of started.guest.described) say(`      ${line}`);
      const booting = performance.now();
      await started.guest.agent.waitReady(BOOT_TIMEOUT_MS, signal);
      bootSeconds = (performance.now() - booting) / 1000;
      const df = await started.guest.agent.exec('df -k /mnt | tail -n 1', { timeoutMs: 60_000, signal });
      const [, blocks, used] = df.stdout.trim().split(/\s+/);
      say(`      the guest answered after ${formatSeconds(bootSeconds)}: /dev/vda on /mnt, ${formatBytes(Number(used) * 1024)} used of ${formatBytes(Number(blocks) * 1024)}`);
      return started.guest;
    });
    const known = new Set<string>();
    const full: Point = { label: 'full' };
    await step('Full backup (fleece backup --full --quiesce): frozen for the point in time, thawed, read over NBD', async () => {
      await backupPoint(full, work, running, known, ['--full']);
      full.reference = await referenceCopy(disk.path, work, 'full');
    });
    const writes = planGuestWrites(disk.files, disk.size);
    await step(`The guest writes ${formatBytes(writes.bytes)} through its own kernel onto /mnt, then syncs`, async () => {
      for (const line of writes.steps) say(`      - ${line}`);
      const result = await running.agent.exec(writes.script, { timeoutMs: WRITES_TIMEOUT_MS, signal });
      if (result.exitCode !== 0 || result.stdout.trim() !== 'ok') {
        throw new Error(`the guest's writes failed (exit ${result.exitCode}): ${(result.stderr || result.stdout).trim()}`);
      }
    });
    const incremental: Point = { label: 'incremental' };
    await step('Second backup (fleece backup --quiesce; fleece picks the level: incremental since the full\'s checkpoint)', async () => {
      await backupPoint(incremental, work, running, known, []);
      incremental.reference = await referenceCopy(disk.path, work, 'incremental');
    });
    await step(running.plane === 'libvirt' ? 'Stopping the guest (virsh destroy + undefine) and the private libvirtd' : 'Stopping the guest (QEMU)', async () => {
      await running.stop();
    });
    await step('Restoring both points (fleece restore --format raw), checking them (sha256, e2fsck -fn, fleece verify)', async () => {
      await restoreAndCheck(full, work);
      await restoreAndCheck(incremental, work);
    });
    const result = await step('The repository (fleece list)', async () => {
      const list = await fleece(['list', '--repo', join(work, 'repo')], work);
      assertSucceeded(list);
      return summary({ disk, image, guest: running, choice, bootSeconds, guestWrote: writes.bytes }, [full, incremental]);
    });
    say(`\nSummary\n${result.text}\n`);
    say(result.ok ? 'Both points restored and verified: OK' : 'VERIFICATION FAILED (see the table above)');
    return result.ok ? 0 : 1;
  } finally {
    await guest?.stop().catch((error: unknown) => {
      process.stderr.write(`could not stop the guest: ${describeError(error)}\n`);
      killGuestsNow();
    });
    if (KEEP) say(`kept ${work}`);
    else await rm(work, { recursive: true, force: true });
  }
}

/** The work directory and the disk's scratch directory (maybe in /dev/shm), for a forced exit. */
let workDir: string | undefined;
let scratchDir: string | undefined;
let interrupts = 0;
for (const name of ['SIGINT', 'SIGTERM'] as const) {
  process.on(name, () => {
    interrupts += 1;
    if (interrupts > 1) {
      process.stderr.write('\ninterrupted again: killing the guest (and libvirtd) now and exiting\n');
      killGuestsNow();
      if (scratchDir) rmSync(scratchDir, { recursive: true, force: true });
      if (workDir && !KEEP) rmSync(workDir, { recursive: true, force: true });
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
