// The provider consumer against real QEMU (no CLI): copy-before-write fleecing (the point in time under guest
// writes, reads outside the bitmap refused, discard shrinking the scratch — the figures printed), the nbdcopy `nbd`
// provider through it, the virtual file's dirty-region filter, and a provider failing every way there is: each time
// the error names the provider and the verb, backup-cleanup was called, nothing is left in QEMU, and the next backup
// reuses the bitmap of the last backup that succeeded.
import { describe, expect, test } from '@jest/globals';
import { execa } from 'execa';
import { mkdir, readFile, readdir, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { useQemuSystem } from '../../harness/jest-qemu.js';
import { createDisk } from '../../harness/qemu.js';
import { leftovers, sha256File, snapshotRaw } from './helpers.js';
import { CheckpointManager } from '../../../src/checkpoint/manager.js';
import { CheckpointStore } from '../../../src/checkpoint/store.js';
import { QmpControlPlane } from '../../../src/backup/control/qmp-control-plane.js';
import { backupVmToProvider } from '../../../src/backup/consume/provider-consumer.js';
import { ExecProvider, type ProviderEndpoint } from '../../../src/backup/consume/provider-client.js';
import { ToolDriver } from '../../../src/backup/consume/tool-driver.js';
import { backupVmToRepository } from '../../../src/backup/repository-backup.js';
import { mountVirtualFile } from '../../../src/backup/consume/nbdfuse-mount.js';
import { restoreFromProvider } from '../../../src/backup/consume/provider-restore.js';
import { readProviderState } from '../../../src/backup/consume/provider-state.js';
import { ProviderError } from '../../../src/backup/consume/provider-contract.js';
import { NbdSource } from '../../../src/nbd/nbd-source.js';

const MiB = 1024 * 1024;
const FIXTURES = join(process.cwd(), 'fixtures', 'providers');

describe('providers against real QEMU', () => {
  const fixture = useQemuSystem(async (dir) => {
    await createDisk(join(dir, 'a.qcow2'), { size: 64 * MiB });
    return { disks: [{ path: join(dir, 'a.qcow2'), target: 'vda' }] };
  });
  const write = async (command: string) => {
    await fixture.qemu.guestWrite('vda', command);
    await fixture.qemu.guestWrite('vda', 'flush');
  };
  const plane = (fleecing: 'overlay' | 'cbw') => {
    const { dir, qemu } = fixture;
    const checkpoints = new CheckpointManager({ qmp: qemu.client, store: new CheckpointStore(join(dir, 'state')), vm: 'vm1' });
    return new QmpControlPlane({ vm: 'vm1', qmp: qemu.client, checkpoints, scratchDir: join(dir, 'scratch'), runDir: join(dir, 'run'), fleecing });
  };
  const nbdcopy = async (env: NodeJS.ProcessEnv = process.env, timeouts: Record<string, number> = {}) => {
    const config = join(fixture.dir, 'nbdcopy.json');
    await writeFile(config, JSON.stringify({ directory: join(fixture.dir, 'nbdcopy-store') }));
    return new ExecProvider({ name: 'nc', exec: join(FIXTURES, 'nbdcopy-provider'), config, env, timeouts });
  };
  const restic = async () => {
    const { dir } = fixture;
    await writeFile(join(dir, 'restic.pass'), 'fleece-test\n');
    const config = join(dir, 'restic.json');
    await writeFile(config, JSON.stringify({
      repository: join(dir, 'restic-repo'), 'password-file': join(dir, 'restic.pass'), 'state-dir': join(dir, 'restic-state'), 'cache-dir': join(dir, 'restic-cache'), discard: true,
    }));
    return new ExecProvider({ name: 'rs', exec: join(FIXTURES, 'restic-provider'), config });
  };
  const consume = (p: QmpControlPlane, endpoint: ProviderEndpoint, extra: { level?: 'full' } = {}) =>
    backupVmToProvider({ plane: p, endpoint, stateDir: join(fixture.dir, 'state'), workDir: join(fixture.dir, 'run', 'work'), ...extra });
  const restoreSha = async (endpoint: ProviderEndpoint, backupId: string, name: string) => {
    const out = join(fixture.dir, `${name}.raw`);
    await restoreFromProvider({ endpoint, backupId, out, format: 'raw', workDir: join(fixture.dir, 'run', 'restore') });
    return sha256File(out);
  };

  test('copy-before-write fleecing: the scratch with and without discard while the guest writes (figures printed)', async () => {
    const { dir, qemu } = fixture;
    await write('write -P 0x11 0 48M');
    const chunk = 8 * MiB;
    const figures: Record<string, { peak: number; end: number }> = {};
    for (const [label, fleecing, discard] of [['overlay + trim', 'overlay', true], ['cbw, no discard', 'cbw', false], ['cbw + discard', 'cbw', true]] as const) {
      await write('write -P 0x11 0 48M');
      const point = await plane(fleecing).begin({ disks: [{ target: 'vda' }], exportWritable: true });
      const exp = point.exports[0]!;
      const scratch = join(dir, 'scratch', (await readdir(join(dir, 'scratch')))[0]!);
      const usage = async () => (await stat(scratch)).blocks * 512;
      const source = await NbdSource.open({ socket: exp.socket!, exportName: exp.exportName }, { connections: 1 });
      let peak = 0;
      try {
        for (let i = 0; i < 6; i++) {
          // The guest writes ahead of the reader (the old data must be copied) and behind it (already read).
          if (i + 1 < 6) await qemu.guestWrite('vda', `write -P 0x${(0x20 + i).toString(16)} ${(i + 1) * 8}M 8M`);
          const data = await source.read(i * chunk, chunk);
          expect(data.every((b) => b === 0x11)).toBe(true); // the point in time holds
          if (discard) await source.trim(i * chunk, chunk);
          await qemu.guestWrite('vda', `write -P 0x${(0x30 + i).toString(16)} ${i * 8}M 8M`);
          peak = Math.max(peak, await usage());
        }
        figures[label] = { peak, end: await usage() };
      } finally {
        await source.close();
        await point.finish();
      }
      expect(await readdir(join(dir, 'scratch'))).toEqual([]);
    }
    const mib = (n: number) => `${(n / MiB).toFixed(1)} MiB`;
    console.log(`scratch growth, 48 MiB read in 8 MiB steps, guest rewriting every step ahead of and behind the reader:\n${
      Object.entries(figures).map(([k, v]) => `  ${k.padEnd(16)} peak ${mib(v.peak)}, at the end ${mib(v.end)}`).join('\n')}`);
    expect(figures['cbw + discard']!.peak).toBeLessThan(figures['cbw, no discard']!.peak / 2);
    expect(figures['cbw + discard']!.end).toBeLessThan(2 * MiB);
    expect(figures['cbw, no discard']!.end).toBeGreaterThanOrEqual(40 * MiB);
    const after = await leftovers(qemu.client);
    expect(after.fleeceNodes).toEqual([]);
    expect(after.exports).toEqual([]);
  });

  test('nbd provider (nbdcopy) through copy-before-write: full, incremental of only the dirty extents, restore; reads outside the bitmap are refused', async () => {
    const { dir, qemu } = fixture;
    const endpoint = await nbdcopy();
    await write('write -P 0x11 0 4M');
    await snapshotRaw(join(dir, 'a.qcow2'), join(dir, 'p0.raw'));
    const full = await consume(plane('cbw'), endpoint);
    expect(full.mechanism).toBe('nbd');
    expect(full.disks[0]!.bitmapMode).toBe('new');
    await write('write -P 0x22 1M 64k');
    await write('write -P 0x23 40M 128k');
    await snapshotRaw(join(dir, 'a.qcow2'), join(dir, 'p1.raw'));
    const inc = await consume(plane('cbw'), endpoint);
    expect(inc.disks[0]).toMatchObject({ bitmapMode: 'reuse', incrementalFrom: full.checkpoint, dirtyBytes: 192 * 1024 });
    expect(inc.stats['bytes-read']).toBe(192 * 1024);
    expect(await restoreSha(endpoint, full.backupId, 'r0')).toBe(await sha256File(join(dir, 'p0.raw')));
    expect(await restoreSha(endpoint, inc.backupId, 'r1')).toBe(await sha256File(join(dir, 'p1.raw')));

    // The snapshot-access export of an incremental: inside the bitmap readable, outside refused by QEMU.
    await write('write -P 0x24 8M 64k');
    const point = await plane('cbw').begin({ disks: [{ target: 'vda', incrementalFrom: inc.checkpoint! }] });
    const exp = point.exports[0]!;
    const source = await NbdSource.open({ socket: exp.socket!, exportName: exp.exportName }, { metaContexts: [exp.context], connections: 1 });
    try {
      expect((await source.read(8 * MiB, 64 * 1024)).every((b) => b === 0x24)).toBe(true);
      await expect(source.read(0, 64 * 1024)).rejects.toThrow(/Invalid argument|Permission denied|EACCES|EINVAL/);
    } finally {
      await source.close();
      await point.abort();
    }
    expect((await leftovers(qemu.client)).bitmaps.vda).toEqual([full.checkpoint, inc.checkpoint].sort());
  });

  test('the virtual file of a dirty-region view refuses reads outside the regions (the default overlay export allows them)', async () => {
    const { dir } = fixture;
    await write('write -P 0x31 0 1M');
    const point = await plane('overlay').begin({ disks: [{ target: 'vda' }], exportWritable: true });
    const work = join(dir, 'run', 'mnt');
    await mkdir(work, { recursive: true, mode: 0o700 });
    await writeFile(join(work, 'vda.regions'), `${MiB} ${MiB}\n`);
    const file = await mountVirtualFile({ dir: work, name: 'vda', uri: point.exports[0]!.uri, regions: join(work, 'vda.regions'), discard: true });
    try {
      const read = (offset: number) => execa('dd', [`if=${file.path}`, 'bs=64k', 'count=1', `skip=${offset / 65536}`, 'status=none', 'of=/dev/null'], { reject: false });
      expect((await read(MiB)).exitCode).toBe(0);
      const outside = await read(0);
      expect(outside.exitCode).not.toBe(0);
      expect(outside.stderr).toMatch(/Operation not permitted/);
      const write = await execa('dd', ['if=/dev/zero', `of=${file.path}`, 'bs=4k', 'count=1', 'seek=256', 'conv=notrunc', 'status=none'], { reject: false });
      expect(write.exitCode).not.toBe(0);
    } finally {
      await file.unmount();
      await point.abort();
    }
    expect(await readdir(work)).toEqual(['vda.regions']);
  });

  test('a provider failing (exit 1, bad JSON, unknown field, timeout, killed): a clear error, cleanup called, nothing left, the bitmap not consumed', async () => {
    const { dir, qemu } = fixture;
    await write('write -P 0x41 0 2M');
    const good = await nbdcopy();
    const first = await consume(plane('overlay'), good);
    const clean = await leftovers(qemu.client);
    const cases: [string, RegExp][] = [
      ['backup-vm:exit1', /backup provider 'nc' exited with status 1.*nbdcopy-provider: failing backup-vm on purpose.*\(verb backup-vm\)/],
      ['get-mechanism:badjson', /backup provider 'nc' answered with bad JSON .*not.*closed.*\(verb get-mechanism\)/],
      ['query-incremental:unknown-field', /backup provider 'nc' answered against contract 1: its answer has unknown field 'surprise' \(verb query-incremental\)/],
      ['backup-vm:hang', /backup provider 'nc' did not answer within 2 s and was stopped.*\(verb backup-vm\)/],
      ['backup-vm:kill', /backup provider 'nc' was killed by SIGKILL.*\(verb backup-vm\)/],
    ];
    for (const [knob, message] of cases) {
      await write(`write -P 0x42 ${cases.findIndex((c) => c[0] === knob) + 4}M 64k`);
      const broken = await nbdcopy({ ...process.env, FLEECE_FIXTURE_FAIL: knob }, knob.endsWith(':hang') ? { 'backup-vm': 2 } : {});
      const error = await consume(plane('overlay'), broken).then(() => undefined, (e: unknown) => e);
      expect(error).toBeInstanceOf(ProviderError);
      expect((error as Error).message).toMatch(message);
      expect(await leftovers(qemu.client)).toEqual(clean); // no new checkpoint, nodes, exports or jobs
      const catalog = JSON.parse(await readFile(join(dir, 'nbdcopy-store', 'catalog.json'), 'utf8')) as { backups: Record<string, { complete: boolean }> };
      expect(Object.values(catalog.backups).every((b) => b.complete)).toBe(true); // backup-cleanup {success: false} ran
      expect(await readdir(join(dir, 'nbdcopy-store', 'images'))).toEqual([first.backupId]);
      expect((await readProviderState(join(dir, 'state'), 'nc', 'vm1'))!.checkpoint).toBe(first.checkpoint);
    }
    // The next backup works and starts from the checkpoint of the last backup that succeeded.
    await snapshotRaw(join(dir, 'a.qcow2'), join(dir, 'now.raw'));
    const next = await consume(plane('overlay'), good);
    expect(next.disks[0]).toMatchObject({ bitmapMode: 'reuse', incrementalFrom: first.checkpoint, dirtyBytes: 5 * 64 * 1024 });
    expect(await restoreSha(good, next.backupId, 'next')).toBe(await sha256File(join(dir, 'now.raw')));
    expect(await readdir(join(dir, 'run', 'work'))).toEqual([]);
  }, 90_000);

  test('restic (file-handle, discarding what it read): full, guest writes, incremental reusing the bitmap, restore byte-identical; timed beside fleece\'s repository', async () => {
    const { dir } = fixture;
    const endpoint = await restic();
    await write('write -P 0x11 0 16M');
    await write('write -P 0x12 40M 4M');
    await snapshotRaw(join(dir, 'a.qcow2'), join(dir, 'p0.raw'));
    const full = await consume(plane('cbw'), endpoint);
    expect(full).toMatchObject({ mechanism: 'file-handle', providerKind: 'exec' });
    expect(full.disks[0]).toMatchObject({ bitmapMode: 'new', dirtyBytes: 64 * MiB });
    const repo = join(dir, 'repo');
    const repoFull = await backupVmToRepository({ plane: plane('overlay'), repo });
    await write('write -P 0x21 1M 64k');
    await write('write -P 0x22 30M 1M');
    await snapshotRaw(join(dir, 'a.qcow2'), join(dir, 'p1.raw'));
    const inc = await consume(plane('cbw'), endpoint);
    expect(inc.disks[0]).toMatchObject({ bitmapMode: 'reuse', incrementalFrom: full.checkpoint, dirtyBytes: MiB + 64 * 1024 });
    expect(inc.stats['bytes-read']).toBe(MiB + 64 * 1024);
    const repoInc = await backupVmToRepository({ plane: plane('overlay'), repo });
    expect(repoInc.level).toBe('incremental');
    expect(await restoreSha(endpoint, full.backupId, 'r0')).toBe(await sha256File(join(dir, 'p0.raw')));
    expect(await restoreSha(endpoint, inc.backupId, 'r1')).toBe(await sha256File(join(dir, 'p1.raw')));
    const s = (ms: number) => `${(ms / 1000).toFixed(2)} s`;
    console.log(`same guest (64 MiB disk, 20 MiB data, then 1.06 MiB changed), in-process:\n  restic provider    full ${s(full.durationMs)}, incremental ${s(inc.durationMs)}\n  fleece repository  full ${s(repoFull.durationMs)}, incremental ${s(repoInc.durationMs)}`);
  }, 90_000);

  test('tool drivers: borg (image mode), the dsmc-style fixture (file mode); a failed output check names the tool output and keeps it', async () => {
    const { dir, qemu } = fixture;
    await writeFile(join(dir, 'secret'), 'fleece-test-secret\n');
    const borgEnv = { BORG_REPO: join(dir, 'borg-repo'), BORG_PASSPHRASE: 'fleece-test-secret', BORG_BASE_DIR: join(dir, 'borg-base') };
    await execa('borg', ['init', '--encryption=repokey'], { env: { ...process.env, ...borgEnv } });
    const borg = JSON.parse(await readFile(join(FIXTURES, 'borg-tool.json'), 'utf8')) as { env: Record<string, unknown> };
    borg.env = { ...borg.env, BORG_REPO: borgEnv.BORG_REPO, BORG_BASE_DIR: borgEnv.BORG_BASE_DIR, BORG_PASSPHRASE: { file: join(dir, 'secret') } };
    await writeFile(join(dir, 'borg.json'), JSON.stringify(borg));
    const dsmc = JSON.parse(await readFile(join(FIXTURES, 'dsmc-tool.json'), 'utf8')) as Record<string, { argv: string[] }> & { env: Record<string, unknown> };
    dsmc.env = { FAKE_DSMC_STORE: join(dir, 'dsmc-store'), FAKE_DSMC_PASSWORD: { file: join(dir, 'secret') } };
    for (const op of ['backup', 'restore', 'delete']) dsmc[op]!.argv[0] = join(FIXTURES, 'fake-dsmc');
    await writeFile(join(dir, 'dsmc.json'), JSON.stringify(dsmc));
    const stateDir = join(dir, 'state');
    const borgDriver = new ToolDriver({ name: 'borg1', configPath: join(dir, 'borg.json'), stateDir });
    const dsmcDriver = (env: NodeJS.ProcessEnv = process.env) => new ToolDriver({ name: 'dsmc1', configPath: join(dir, 'dsmc.json'), stateDir, env });

    await write('write -P 0x31 0 8M');
    await snapshotRaw(join(dir, 'a.qcow2'), join(dir, 'p0.raw'));
    const b0 = await consume(plane('overlay'), borgDriver);
    expect(b0.disks[0]).toMatchObject({ bitmapMode: 'none' });
    expect(b0.checkpoint).toBeNull(); // a tool reads whole volumes: no checkpoint is made for it
    await write('write -P 0x32 20M 2M');
    await snapshotRaw(join(dir, 'a.qcow2'), join(dir, 'p1.raw'));
    const b1 = await consume(plane('overlay'), borgDriver);
    const d1 = await consume(plane('overlay'), dsmcDriver());
    expect(await restoreSha(borgDriver, b0.backupId, 'b0')).toBe(await sha256File(join(dir, 'p0.raw')));
    expect(await restoreSha(borgDriver, b1.backupId, 'b1')).toBe(await sha256File(join(dir, 'p1.raw')));
    expect(await restoreSha(dsmcDriver(), d1.backupId, 'd1')).toBe(await sha256File(join(dir, 'p1.raw')));
    const record = JSON.parse(await readFile(join(stateDir, 'providers', 'borg1', 'records', `${b1.backupId}.json`), 'utf8')) as { state: string; runs: { op: string; stderr: string; argv: string[] }[] };
    expect(record.state).toBe('complete');
    expect(record.runs[0]!.stderr).toMatch(/Number of files: 1/);
    expect(JSON.stringify(record)).not.toContain('fleece-test-secret'); // the passphrase never on a command line

    // dsmc's habit: an object failed and the exit code is 0; the output check catches it, the record keeps it.
    const error = await consume(plane('overlay'), dsmcDriver({ ...process.env, FAKE_DSMC_MODE: 'object-failed' })).then(() => undefined, (e: unknown) => e as Error);
    expect(error?.message).toMatch(/backup provider 'dsmc1' failed the backup of disk vda: fake-dsmc: its output says 'Total number of objects backed up : 0', less than 1; stdout: .*ANS1228E.*\(verb backup-vm\); the whole output is in .*records\/vm1-.*\.json/);
    const failed = (await readdir(join(stateDir, 'providers', 'dsmc1', 'records'))).length;
    expect(failed).toBe(2);
    const after = await leftovers(qemu.client);
    expect(after.exports).toEqual([]);
    expect(after.fleeceNodes).toEqual([]);
  }, 90_000);
});
