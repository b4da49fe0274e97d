// Figures for docs/providers.md, on the real guest (scripts/guest/real-guest.ts) under a bare QEMU, through the CLI
// as a user runs it (node dist/src/cli/main.js):
//   1. restic through the provider contract (fixtures/providers/restic-provider, file-handle) next to fleece's own
//      repository: full, then the guest changes 16 MiB, then incremental; side by side in one run.
//   2. the fleecing scratch's peak while the guest rewrites its data during a full backup that the provider reads at
//      --bandwidth: the scratch overlay, copy-before-write without discard, copy-before-write with the provider
//      discarding each part after reading it.
// Build first (npx tsc -p tsconfig.json), then: node dist/scripts/bench-provider.js [--data-mib 96] [--bandwidth-mib 12]
// Ratios measured side by side in one run are what to compare; absolute times depend on the machine's load.
import { execa } from 'execa';
import { mkdtemp, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ensureRealGuest, makeExt4Disk } from './guest/real-guest.js';
import { SocketGuest, startBareRealGuest } from '../test/e2e/real-guest-vms.js';

const MiB = 1024 * 1024;
const ROOT = process.cwd();
const CLI = join(ROOT, 'dist', 'src', 'cli', 'main.js');

function arg(name: string, fallback: number): number {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? Number(process.argv[i + 1]) : fallback;
}

const dataMiB = arg('data-mib', 96);
const bandwidthMiB = arg('bandwidth-mib', 12);

async function main(): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'fleece-bench-provider-'));
  const env = { ...process.env, FLEECE_STATE_DIR: join(dir, 'state'), FLEECE_CONFIG_DIR: join(dir, 'config'), FLEECE_RUN_DIR: join(dir, 'run'), FLEECE_LOG_LEVEL: 'silent' };
  const fleece = async <T>(args: string[]): Promise<T> => {
    const r = await execa(process.execPath, [CLI, ...args, '--json'], { env, reject: false });
    if (r.exitCode !== 0) throw new Error(`fleece ${args.join(' ')}: ${r.stderr}`);
    return JSON.parse(r.stdout) as T;
  };
  const disk = join(dir, 'vda.qcow2');
  await makeExt4Disk(disk, 4 * dataMiB * MiB, 'qcow2');
  const guestVm = await startBareRealGuest(dir, await ensureRealGuest(), 'fleece-bench-provider', disk).catch(async (error: unknown) => {
    await rm(dir, { recursive: true, force: true });
    throw error;
  });
  const guest = new SocketGuest(guestVm.agentSocket);
  const qmp = guestVm.fleeceQmp;
  try {
    await guest.waitReady(180_000);
    const dd = (seekMiB: number, countMiB: number) => `dd if=/dev/urandom of=/mnt/data bs=1M seek=${seekMiB} count=${countMiB} conv=notrunc,fsync 2>/dev/null`;
    await guest.exec(dd(0, dataMiB), 600_000);
    for (const [name, discard] of [['restic', true], ['restic-nodiscard', false]] as const) {
      await writeFile(join(dir, 'restic.pass'), 'bench\n');
      await writeFile(join(dir, `${name}.json`), JSON.stringify({
        repository: join(dir, `${name}-repo`), 'password-file': join(dir, 'restic.pass'), 'state-dir': join(dir, `${name}-state`), 'cache-dir': join(dir, 'restic-cache'), discard,
      }));
      const added = await execa(process.execPath, [CLI, 'provider', 'add', name, '--exec', join(ROOT, 'fixtures', 'providers', 'restic-provider'), '--config', join(dir, `${name}.json`)], { env, reject: false });
      if (added.exitCode !== 0) throw new Error(added.stderr);
    }
    const repo = join(dir, 'repo');

    // 1. restic beside fleece's repository.
    type Summary = { durationMs: number };
    const times: Record<string, number[]> = { 'restic provider (cbw)': [], 'fleece repository': [] };
    times['restic provider (cbw)']!.push((await fleece<Summary>(['backup', 'vm1', '--qmp', qmp, '--provider', 'restic'])).durationMs);
    times['fleece repository']!.push((await fleece<Summary>(['backup', 'vm1', '--qmp', qmp, '--repo', repo])).durationMs);
    await guest.exec(dd(8, 16), 300_000);
    times['restic provider (cbw)']!.push((await fleece<Summary>(['backup', 'vm1', '--qmp', qmp, '--provider', 'restic'])).durationMs);
    times['fleece repository']!.push((await fleece<Summary>(['backup', 'vm1', '--qmp', qmp, '--repo', repo])).durationMs);

    // 2. The scratch's peak with the guest rewriting its data while the provider reads (full backups, --bandwidth).
    const scratchDir = join(dir, 'state', 'scratch');
    const peaks: Record<string, { peak: number; written: number; ms: number }> = {};
    for (const [label, provider, fleecing] of [
      ['scratch overlay, provider discards', 'restic', 'overlay'],
      ['copy-before-write, no discard', 'restic-nodiscard', 'cbw'],
      ['copy-before-write, provider discards', 'restic', 'cbw'],
    ] as const) {
      const writer = await guest.spawn(`i=0; while true; do ${dd(0, dataMiB)}; i=$((i+1)); echo $i > /run/rounds; done`);
      let peak = 0;
      let sampling = true;
      const sampler = (async () => {
        while (sampling) {
          let bytes = 0;
          for (const f of await readdir(scratchDir).catch(() => [] as string[])) bytes += await stat(join(scratchDir, f)).then((s) => s.blocks * 512, () => 0);
          peak = Math.max(peak, bytes);
          await new Promise((resolve) => setTimeout(resolve, 200));
        }
      })();
      const summary = await fleece<Summary>(['backup', 'vm1', '--qmp', qmp, '--provider', provider, '--full', '--fleecing', fleecing, '--bandwidth', `${bandwidthMiB}M`]);
      sampling = false;
      await sampler;
      await guest.exec(`kill ${writer}; sleep 1`);
      const rounds = Number((await guest.exec('cat /run/rounds 2>/dev/null || echo 0')).stdout.trim() || 0);
      await guest.exec('rm -f /run/rounds');
      peaks[label] = { peak, written: rounds * dataMiB * MiB, ms: summary.durationMs };
    }

    const s = (ms: number) => `${(ms / 1000).toFixed(1)} s`;
    const m = (b: number) => `${(b / MiB).toFixed(1)} MiB`;
    console.log(`real guest (TCG), ${4 * dataMiB} MiB ext4 disk, ${dataMiB} MiB of data, then 16 MiB changed; one run, side by side:`);
    for (const [k, [full, inc]] of Object.entries(times)) console.log(`  ${k.padEnd(24)} full ${s(full!)}, incremental ${s(inc!)}`);
    console.log(`scratch peak during a full backup read at ${bandwidthMiB} MiB/s while the guest rewrites its ${dataMiB} MiB in a loop:`);
    for (const [k, v] of Object.entries(peaks)) console.log(`  ${k.padEnd(38)} peak ${m(v.peak)} (the guest wrote >= ${m(v.written)} during the ${s(v.ms)} backup)`);
  } finally {
    guest.release();
    await guestVm.stop();
    await rm(dir, { recursive: true, force: true });
  }
}

main().catch((error: unknown) => {
  console.error(error);
  process.exitCode = 1;
});
