// `fleece provider add` + `fleece backup VM --provider NAME` + `fleece restore --provider NAME` as a user runs them
// (node dist/src/cli/main.js): real restic 0.14 (file-handle) on a bare QEMU and nbdcopy (nbd) on a libvirt domain —
// full, guest writes, incremental reusing the bitmap, the restore byte-identical with the disk at backup time — and
// usage errors and a provider failing through the CLI. Borg, the dsmc-style tool, copy-before-write and every way a
// provider can fail run in-process in test/integration/backup/provider.test.ts (cheaper than a CLI per step).
import { describe, expect, test } from '@jest/globals';
import { execa } from 'execa';
import { readFile, readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { useQemuSystem } from '../harness/jest-qemu.js';
import { createDisk } from '../harness/qemu.js';
import { createImage, defineTestDomain, libvirtAvailability, sharedLibvirt } from '../harness/libvirt.js';
import { makeTempDir, removeTempDir } from '../harness/temp-dir.js';
import { leftovers, sha256File, snapshotRaw } from '../integration/backup/helpers.js';
import { CLI, cliEnv, runCli, runCliJson } from './helpers.js';

const MiB = 1024 * 1024;
const KiB = 1024;
const FIXTURES = join(process.cwd(), 'fixtures', 'providers');

interface ProviderJson {
  backupId: string;
  provider: string;
  mechanism: string;
  checkpoint: string | null;
  controlPlane: string;
  disks: { disk: string; bitmapMode: string; reason: string; incrementalFrom: string | null; dirtyBytes: number }[];
  checkpointsDeleted: string[];
  durationMs: number;
}

/** Pids of provider processes still running with the hang knob (only the killed run's could be). */
async function hangingProviders(): Promise<number[]> {
  const pids: number[] = [];
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const environ = await readFile(`/proc/${entry}/environ`, 'utf8').catch(() => '');
    const cmdline = await readFile(`/proc/${entry}/cmdline`, 'utf8').catch(() => '');
    if (cmdline.includes('restic-provider') && environ.split('\0').includes('FLEECE_FIXTURE_FAIL=backup-vm:hang')) pids.push(Number(entry));
  }
  return pids;
}

const available = libvirtAvailability();
const describeLibvirt = available.ok ? describe : describe.skip;

describe('fleece backup --provider (bare QEMU)', () => {
  const fixture = useQemuSystem(async (dir) => {
    await createDisk(join(dir, 'a.qcow2'), { size: 64 * MiB });
    return { disks: [{ path: join(dir, 'a.qcow2'), target: 'vda' }], extraQmpSockets: 1 };
  });
  const write = async (command: string) => {
    await fixture.qemu.guestWrite('vda', command);
    await fixture.qemu.guestWrite('vda', 'flush');
  };
  const qmp = () => fixture.qemu.extraQmpPaths[0]!;
  const point = async (name: string) => {
    await snapshotRaw(join(fixture.dir, 'a.qcow2'), join(fixture.dir, `${name}.raw`));
    return sha256File(join(fixture.dir, `${name}.raw`));
  };
  const viaProvider = (name: string, extra: string[] = []) => runCliJson<ProviderJson>(fixture.dir, ['backup', 'vm1', '--qmp', qmp(), '--provider', name, ...extra]);
  const restoreSha = async (provider: string, backupId: string, out: string, extra: string[] = []) => {
    const result = await runCli(fixture.dir, ['restore', '--provider', provider, '--backup', backupId, '--out', join(fixture.dir, out), ...extra]);
    if (result.exitCode !== 0) throw new Error(`restore failed: ${result.stderr}`);
    return sha256File(join(fixture.dir, out));
  };

  test('restic (file-handle): full, guest writes, incremental reusing the bitmap, restore byte-identical; fleece SIGKILLed mid-read cleaned up after', async () => {
    const { dir } = fixture;
    await writeFile(join(dir, 'restic.pass'), 'fleece-test\n');
    await writeFile(join(dir, 'restic.json'), JSON.stringify({
      repository: join(dir, 'restic-repo'), 'password-file': join(dir, 'restic.pass'), 'state-dir': join(dir, 'restic-state'), 'cache-dir': join(dir, 'restic-cache'),
    }));
    const added = await runCli(dir, ['provider', 'add', 'restic1', '--exec', join(FIXTURES, 'restic-provider'), '--config', join(dir, 'restic.json')]);
    expect(added.exitCode).toBe(0);

    await write('write -P 0x11 0 16M');
    await write('write -P 0x12 40M 4M');
    const sha0 = await point('p0');
    const full = await viaProvider('restic1');
    expect(full).toMatchObject({ provider: 'restic1', mechanism: 'file-handle', controlPlane: 'qmp' });
    expect(full.disks[0]).toMatchObject({ bitmapMode: 'new', dirtyBytes: 64 * MiB });

    await write('write -P 0x21 1M 64k');
    await write('write -P 0x22 30M 1M');
    const sha1 = await point('p1');
    const inc = await viaProvider('restic1');
    expect(inc.disks[0]).toMatchObject({ bitmapMode: 'reuse', incrementalFrom: full.checkpoint, dirtyBytes: MiB + 64 * KiB });
    // The provider's chain starts from the newest checkpoint only: the one before is deleted (no pile of bitmaps).
    expect(inc.checkpointsDeleted).toEqual([full.checkpoint]);
    const clean = await leftovers(fixture.qemu.client);
    expect(clean).toMatchObject({ fleeceNodes: [], jobs: [], exports: [], bitmaps: { vda: [inc.checkpoint] } });

    // The incremental restores through its chain (the full image, then the delta).
    expect(await restoreSha('restic1', inc.backupId, 'r1.raw')).toBe(sha1);
    expect(sha0).not.toBe(sha1);
    expect(await readdir(join(dir, 'run'))).toEqual([]); // private directories, sockets and mounts gone

    // fleece SIGKILLed while the provider reads the virtual file, fleeced by copy-before-write (the default for a
    // provider on QEMU >= 7.1): `fleece recover` sets the guest's drive back and removes the filter, the
    // snapshot-access node, the export and the scratch, unmounts the file, stops the provider, tells it
    // (backup-cleanup {success: false}); the next backup starts again from the last checkpoint that succeeded.
    await write('write -P 0x23 5M 64k');
    const killed = execa(process.execPath, [CLI, 'backup', 'vm1', '--qmp', qmp(), '--provider', 'restic1', '-v'], {
      env: { ...cliEnv(dir), FLEECE_FIXTURE_FAIL: 'backup-vm:hang' }, reject: false,
    });
    await new Promise<void>((resolve, reject) => {
      let text = '';
      killed.stderr!.on('data', (chunk: Buffer) => {
        text += chunk.toString();
        if (text.includes('hanging in backup-vm on purpose')) resolve();
      });
      void killed.then(() => reject(new Error(`fleece ended first: ${text}`)));
    });
    expect(await readFile('/proc/mounts', 'utf8')).toContain(join(dir, 'run'));
    const during = await fixture.qemu.client.execute<{ 'node-name': string; drv: string }[]>('query-named-block-nodes', { flat: true });
    expect(during.filter((n) => n['node-name'].startsWith('fl-')).map((n) => n.drv).sort()).toEqual(['copy-before-write', 'file', 'qcow2', 'snapshot-access']);
    killed.kill('SIGKILL');
    await killed;
    const recovered = await runCli(dir, ['recover', 'vm1']);
    expect(recovered.exitCode).toBe(0);
    expect(recovered.stdout).toMatch(/cleaned up after an interrupted backup of VM 'vm1' .*FUSE mount .*export fleece-nbd-vda-.*node fl-.*-vda-access; device .* set back; node fl-.*-vda-cbw.*backup-cleanup \{success: false\} of backup vm1-.*job-cleanup \{success: false\}/);
    expect(await leftovers(fixture.qemu.client)).toEqual(clean);
    expect(await readdir(join(dir, 'state', 'scratch'))).toEqual([]);
    expect(await readFile('/proc/mounts', 'utf8')).not.toContain(join(dir, 'run'));
    expect(await hangingProviders()).toEqual([]);
    const again = await runCli(dir, ['backup', 'vm1', '--qmp', qmp(), '--provider', 'restic1', '--json']);
    expect(again.exitCode).toBe(0);
    const summary = JSON.parse(again.stdout) as ProviderJson & { warnings: string[] };
    expect(summary.disks[0]).toMatchObject({ bitmapMode: 'reuse', incrementalFrom: inc.checkpoint });
    expect(summary.checkpointsDeleted).toEqual([inc.checkpoint]);
    expect(await readFile('/proc/mounts', 'utf8')).not.toContain(join(dir, 'run'));
    expect(await hangingProviders()).toEqual([]); // the provider fleece left behind was stopped
    const catalog = JSON.parse(await readFile(join(dir, 'restic-state', 'catalog.json'), 'utf8')) as { backups: Record<string, { complete: boolean }> };
    expect(Object.values(catalog.backups).map((b) => b.complete)).toEqual([true, true, true]);
  }, 120_000);

  test('usage errors and a provider failing through the CLI: exit codes, the provider and the verb named, QEMU clean, the next backup incremental', async () => {
    const { dir } = fixture;
    await writeFile(join(dir, 'nbdcopy.json'), JSON.stringify({ directory: join(dir, 'store') }));
    expect((await runCli(dir, ['provider', 'add', 'nc1', '--exec', join(FIXTURES, 'nbdcopy-provider'), '--config', join(dir, 'nbdcopy.json')])).exitCode).toBe(0);
    const both = await runCli(dir, ['backup', 'vm1', '--qmp', qmp(), '--provider', 'nc1', '--repo', join(dir, 'repo')]);
    expect(both.exitCode).toBe(2);
    expect(both.stderr).toContain('--repo and --provider exclude each other');
    const ghost = await runCli(dir, ['backup', 'vm1', '--qmp', qmp(), '--provider', 'ghost']);
    expect(ghost.exitCode).toBe(1);
    expect(ghost.stderr).toContain("no backup provider 'ghost' is registered");

    await write('write -P 0x51 0 1M');
    const full = await viaProvider('nc1');
    const clean = await leftovers(fixture.qemu.client);
    await write('write -P 0x52 2M 64k');
    const broken = await execa(process.execPath, [CLI, 'backup', 'vm1', '--qmp', qmp(), '--provider', 'nc1'], {
      env: { ...cliEnv(dir), FLEECE_FIXTURE_FAIL: 'backup-vm:exit1' }, reject: false,
    });
    expect(broken.exitCode).toBe(1);
    expect(broken.stderr).toMatch(/\nfleece: backup provider 'nc1' exited with status 1; its last stderr lines: .*failing backup-vm on purpose \(verb backup-vm\)/);
    expect(await leftovers(fixture.qemu.client)).toEqual(clean);
    const sha = await point('now');
    const next = await viaProvider('nc1');
    expect(next.disks[0]).toMatchObject({ bitmapMode: 'reuse', incrementalFrom: full.checkpoint, dirtyBytes: 64 * KiB });
    expect(await restoreSha('nc1', next.backupId, 'next.qcow2', ['--format', 'qcow2']).then(async () => {
      await execa('qemu-img', ['convert', '-f', 'qcow2', '-O', 'raw', join(dir, 'next.qcow2'), join(dir, 'next.raw')]);
      return sha256File(join(dir, 'next.raw'));
    })).toBe(sha);
  }, 90_000);
});

describeLibvirt('fleece backup --provider of a libvirt domain', () => {
  test('nbdcopy (nbd) through libvirt: full, guest writes, incremental reusing libvirt\'s checkpoint, restore byte-identical', async () => {
    const dir = await makeTempDir('libvirt-provider');
    const h = await sharedLibvirt();
    const image = join(dir, 'vda.qcow2');
    await createImage(image, 'qcow2', 32 * MiB);
    const dom = await defineTestDomain(h, { name: `fleece-test-provider-${process.pid}`, disks: [{ target: 'vda', path: image, format: 'qcow2' }] });
    try {
      await writeFile(join(dir, 'nbdcopy.json'), JSON.stringify({ directory: join(dir, 'store') }));
      expect((await runCli(dir, ['provider', 'add', 'nc1', '--exec', join(FIXTURES, 'nbdcopy-provider'), '--config', join(dir, 'nbdcopy.json')])).exitCode).toBe(0);
      const backup = () => runCliJson<ProviderJson>(dir, ['backup', dom.name, '--connect', h.uri, '--provider', 'nc1']);
      const sha = async (name: string) => {
        await dom.qemuIo('vda', 'flush');
        await snapshotRaw(image, join(dir, `${name}.raw`));
        return sha256File(join(dir, `${name}.raw`));
      };
      await dom.write('vda', 0, 4 * MiB, 0x61);
      const sha0 = await sha('p0');
      const full = await backup();
      expect(full).toMatchObject({ controlPlane: 'libvirt', mechanism: 'nbd' });
      await dom.write('vda', 8 * MiB, 128 * KiB, 0x62);
      const sha1 = await sha('p1');
      const inc = await backup();
      expect(inc.disks[0]).toMatchObject({ bitmapMode: 'reuse', incrementalFrom: full.checkpoint, dirtyBytes: 128 * KiB });
      const r = await runCli(dir, ['restore', '--provider', 'nc1', '--backup', inc.backupId, '--out', join(dir, 'r1.raw')]);
      expect(r.exitCode).toBe(0);
      expect(await sha256File(join(dir, 'r1.raw'))).toBe(sha1);
      expect(sha0).not.toBe(sha1);
      const checkpoints = (await h.virsh(['checkpoint-list', dom.name, '--name'])).split('\n').map((l) => l.trim()).filter(Boolean).sort();
      // libvirt's checkpoint of the provider's previous backup is deleted once the incremental is recorded.
      expect(inc.checkpointsDeleted).toEqual([full.checkpoint]);
      expect(checkpoints).toEqual([inc.checkpoint]);
      expect((await h.virsh(['domjobinfo', dom.name])).split('\n')[0]).toMatch(/None/);
    } finally {
      await dom.remove();
      await removeTempDir(dir);
    }
  }, 120_000);
});
