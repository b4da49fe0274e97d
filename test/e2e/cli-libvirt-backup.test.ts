// `fleece backup DOMAIN --connect URI` as a libvirt user runs it, against a real libvirtd (the harness starts its own)
// and real QEMU under it: full → guest writes → auto incremental, restored byte for byte; two disks in one libvirt
// job; libvirt's own checkpoints; Ctrl-C mid-read; a checkpoint deleted with virsh; libvirtd restarted; shut off.
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import {
  createImage,
  dedicatedLibvirt,
  defineTestDomain,
  libvirtAvailability,
  sharedLibvirt,
  type LibvirtHarness,
  type TestDomain,
} from '../harness/libvirt.js';
import { makeTempDir, removeTempDir } from '../harness/temp-dir.js';
import { sha256File, snapshotRaw } from '../integration/backup/helpers.js';
import { runCli, runCliJson, startCli, type BackupJson } from './helpers.js';

const MiB = 1024 * 1024;
const KiB = 1024;
const available = libvirtAvailability();
const describeLibvirt = available.ok ? describe : describe.skip;
if (!available.ok) console.warn(`libvirt e2e tests skipped: ${available.why}`);

interface DomainFixture {
  dir: string;
  h: LibvirtHarness;
  dom: TestDomain;
  images: Record<string, string>;
}

async function domainFixture(name: string, targets: string[], size = 32 * MiB, h?: LibvirtHarness, readOnly?: string): Promise<DomainFixture> {
  const dir = await makeTempDir(`libvirt-${name}`);
  h ??= await sharedLibvirt();
  const images: Record<string, string> = {};
  for (const t of targets) {
    images[t] = join(dir, `${t}.qcow2`);
    await createImage(images[t]!, 'qcow2', size);
  }
  const extra = readOnly ? [{ target: readOnly, path: join(dir, `${readOnly}.raw`), format: 'raw' as const, readonly: true }] : [];
  for (const d of extra) await createImage(d.path, 'raw', MiB);
  const dom = await defineTestDomain(h, {
    name: `fleece-test-${name}-${process.pid}`,
    disks: [...targets.map((t) => ({ target: t, path: images[t]!, format: 'qcow2' as const })), ...extra],
  });
  return { dir, h, dom, images };
}

/** What libvirt and its QEMU hold after a backup: the job, NBD exports, block jobs (qemu-monitor-command: tests only). */
async function libvirtLeftovers(h: LibvirtHarness, domain: string): Promise<{ job: string; exports: unknown[]; jobs: unknown[] }> {
  const job = (await h.virsh(['domjobinfo', domain])).split('\n')[0]!.replace(/^Job type:\s*/, '').trim();
  const exports = JSON.parse(await h.virsh(['qemu-monitor-command', domain, '{"execute":"query-block-exports"}'])).return as unknown[];
  const jobs = JSON.parse(await h.virsh(['qemu-monitor-command', domain, '{"execute":"query-jobs"}'])).return as unknown[];
  return { job, exports, jobs };
}

async function checkpointNames(h: LibvirtHarness, domain: string): Promise<string[]> {
  return (await h.virsh(['checkpoint-list', domain, '--name'])).split('\n').map((l) => l.trim()).filter(Boolean).sort();
}

async function restoreSha(dir: string, repo: string, backupId: string, out: string): Promise<string> {
  const result = await runCli(dir, ['restore', '--repo', repo, '--backup', backupId, '--out', out, '--format', 'raw']);
  if (result.exitCode !== 0) throw new Error(`restore failed: ${result.stderr}`);
  return sha256File(out);
}

describeLibvirt('fleece backup of a libvirt domain (real libvirtd)', () => {
  // This suite restarts libvirtd: a daemon of its own, so that other test files' calls to the shared one go on.
  let f: DomainFixture;
  let own: (LibvirtHarness & { stop(): Promise<void> }) | undefined;
  beforeAll(async () => {
    own = await dedicatedLibvirt('e2e');
    f = await domainFixture('one', ['vda'], 32 * MiB, own);
  }, 120_000);
  afterAll(async () => {
    await f?.dom.remove();
    await own?.stop();
    if (f) await removeTempDir(f.dir);
  }, 60_000);
  const repo = () => join(f.dir, 'repo');
  const backup = (extra: string[] = []) => runCliJson<BackupJson>(f.dir, ['backup', f.dom.name, '--connect', f.h.uri, '--repo', repo(), ...extra]);
  const write = async (offset: number, length: number, pattern: number) => {
    await f.dom.write('vda', offset, length, pattern);
    await f.dom.qemuIo('vda', 'flush');
  };
  const snapshot = async (name: string) => {
    await snapshotRaw(f.images.vda!, join(f.dir, name));
    return sha256File(join(f.dir, name));
  };

  test('full, guest writes, auto incremental: both restore byte-identical; libvirt shows the checkpoints; nothing left', async () => {
    await write(0, 4 * MiB, 0x11);
    await write(20 * MiB, MiB, 0x12);
    const sha0 = await snapshot('p0.raw');
    const full = await backup();
    expect(full.controlPlane).toBe('libvirt');
    expect(full.level).toBe('full');
    expect(full.vm).toBe(f.dom.name);
    expect(full.disks.map((d) => d.disk)).toEqual(['vda']);
    expect(full.disks[0]!.bytesRead).toBe(5 * MiB);
    expect(await checkpointNames(f.h, f.dom.name)).toEqual([full.checkpoint]);
    expect(await libvirtLeftovers(f.h, f.dom.name)).toEqual({ job: 'None', exports: [], jobs: [] });

    await write(MiB, 64 * KiB, 0x21);
    await write(30 * MiB, 128 * KiB, 0x22);
    const sha1 = await snapshot('p1.raw');
    const inc = await backup();
    expect(inc.level).toBe('incremental');
    expect(inc.incrementalFrom).toBe(full.checkpoint);
    expect(inc.reason).toContain(`checkpoint ${full.checkpoint}`);
    expect(inc.disks[0]!.parentId).toBe(full.disks[0]!.backupId);
    expect(inc.disks[0]!.bytesRead).toBe(192 * KiB);
    expect(await checkpointNames(f.h, f.dom.name)).toEqual([full.checkpoint, inc.checkpoint].sort());
    expect(await libvirtLeftovers(f.h, f.dom.name)).toEqual({ job: 'None', exports: [], jobs: [] });

    expect(await restoreSha(f.dir, repo(), full.disks[0]!.backupId, join(f.dir, 'r0.raw'))).toBe(sha0);
    expect(await restoreSha(f.dir, repo(), inc.disks[0]!.backupId, join(f.dir, 'r1.raw'))).toBe(sha1);

    const list = await runCliJson<{ vm: string; disk: string }[]>(f.dir, ['list', '--repo', repo()]);
    expect(list.map((r) => [r.vm, r.disk])).toEqual([[f.dom.name, 'vda'], [f.dom.name, 'vda']]);
  }, 180_000);

  test('checkpoints deleted with virsh make the next backup full, naming them; libvirtd restarted keeps incrementals', async () => {
    // Every libvirt checkpoint's bitmap keeps recording, so deleting the newest one still leaves an older one to
    // start from: the next backup is incremental since that one.
    await backup();
    const first = await backup();
    const older = await checkpointNames(f.h, f.dom.name);
    await f.h.virsh(['checkpoint-delete', f.dom.name, first.checkpoint!]);
    const after = await backup();
    expect(after.level).toBe('incremental');
    expect(after.incrementalFrom).toBe(first.incrementalFrom);
    expect(older).toContain(after.incrementalFrom);
    // With none left, the next one is full and says where the chain ended.
    for (const name of await checkpointNames(f.h, f.dom.name)) await f.h.virsh(['checkpoint-delete', f.dom.name, name]);
    const second = await backup();
    expect(second.level).toBe('full');
    expect(second.reason).toContain(`checkpoint ${after.checkpoint}`);
    expect(second.reason).toContain('no longer exists');

    await f.h.restart();
    await write(2 * MiB, 64 * KiB, 0x31);
    const sha = await snapshot('p2.raw');
    const third = await backup();
    expect(third.level).toBe('incremental');
    expect(third.incrementalFrom).toBe(second.checkpoint);
    expect(third.disks[0]!.bytesRead).toBe(64 * KiB);
    expect(await restoreSha(f.dir, repo(), third.disks[0]!.backupId, join(f.dir, 'r2.raw'))).toBe(sha);
  }, 180_000);

  test('Ctrl-C mid-read: exit 130, the libvirt job and the new checkpoint are gone, the next backup works', async () => {
    const before = await checkpointNames(f.h, f.dom.name);
    await write(0, 24 * MiB, 0x41);
    const child = startCli(f.dir, ['backup', f.dom.name, '--connect', f.h.uri, '--repo', repo(), '--full', '--bandwidth', '2M', '--json']);
    // Wait until the libvirt job runs, then interrupt.
    // (virsh domjobinfo of a running pull backup fails with "backup job data missing" on libvirt 9.0.)
    for (let i = 0; i < 100; i++) {
      const info = await f.h.virsh(['domjobinfo', f.dom.name]).catch((error: unknown) => String(error));
      if (!/Job type:\s*None/.test(info)) break;
      await delay(100);
    }
    await delay(500);
    child.kill('SIGINT');
    const result = await child;
    expect(result.exitCode).toBe(130);
    expect(await libvirtLeftovers(f.h, f.dom.name)).toEqual({ job: 'None', exports: [], jobs: [] });
    expect(await checkpointNames(f.h, f.dom.name)).toEqual(before);
    const next = await backup();
    expect(next.level).toBe('incremental');
  }, 180_000);

  test('bad input: an unknown domain and an unreachable libvirt each say what is wrong', async () => {
    const missing = await runCli(f.dir, ['backup', 'fleece-test-no-such-domain', '--connect', f.h.uri, '--repo', repo()]);
    expect(missing.exitCode).not.toBe(0);
    expect(missing.stderr).toMatch(/fleece-test-no-such-domain/);
    const down = await runCli(f.dir, ['backup', f.dom.name, '--connect', 'qemu+unix:///system?socket=/nonexistent/libvirt-sock', '--repo', repo()]);
    expect(down.exitCode).not.toBe(0);
    expect(down.stderr).toMatch(/\/nonexistent\/libvirt-sock/);
  }, 60_000);
});

/** Removes a bitmap behind libvirt's back, as a crash or a storage move loses one (qemu-monitor-command: tests only). */
async function dropBitmap(h: LibvirtHarness, domain: string, image: string, bitmap: string): Promise<void> {
  const nodes = JSON.parse(await h.virsh(['qemu-monitor-command', domain, '{"execute":"query-named-block-nodes","arguments":{"flat":true}}']))
    .return as { 'node-name': string; drv: string; file: string; 'dirty-bitmaps'?: { name: string }[] }[];
  const node = nodes.find((n) => n.drv === 'qcow2' && n.file === image && n['dirty-bitmaps']?.some((b) => b.name === bitmap));
  if (!node) throw new Error(`no qcow2 node of ${image} has bitmap ${bitmap}`);
  const command = { execute: 'block-dirty-bitmap-remove', arguments: { node: node['node-name'], name: bitmap } };
  await h.virsh(['qemu-monitor-command', domain, JSON.stringify(command)]);
}

describeLibvirt('fleece backup of a two-disk libvirt domain, running and shut off', () => {
  let f: DomainFixture;
  beforeAll(async () => {
    f = await domainFixture('two', ['vda', 'vdb'], 16 * MiB, undefined, 'vdc');
  }, 120_000);
  afterAll(async () => {
    await f?.dom.remove();
    if (f) await removeTempDir(f.dir);
  });

  test('two disks in one libvirt job; registered with `fleece vm add --connect`; shut off: full then incremental', async () => {
    const repo = join(f.dir, 'repo');
    const add = await runCli(f.dir, ['vm', 'add', f.dom.name, '--connect', f.h.uri]);
    expect(add.exitCode).toBe(0);
    await f.dom.write('vda', 0, 2 * MiB, 0x51);
    await f.dom.write('vdb', 4 * MiB, MiB, 0x52);
    for (const t of ['vda', 'vdb']) await f.dom.qemuIo(t, 'flush');
    const full = await runCliJson<BackupJson>(f.dir, ['backup', f.dom.name, '--repo', repo]);
    expect(full.disks.map((d) => [d.disk, d.bytesRead])).toEqual([['vda', 2 * MiB], ['vdb', MiB]]);
    expect(full.skipped).toEqual([{ disk: 'vdc', reason: 'it is read-only' }]);
    expect(new Set(full.disks.map(() => full.groupId)).size).toBe(1);

    // Bitmaps lost behind libvirt's back: that disk alone is full, with libvirt's reason; the other incremental.
    const lost = await runCliJson<BackupJson>(f.dir, ['backup', f.dom.name, '--repo', repo]);
    expect(lost.level).toBe('incremental');
    // (Every checkpoint's bitmap records, so an older checkpoint would still do: drop them all on vdb.)
    for (const cp of [lost.checkpoint!, full.checkpoint!]) await dropBitmap(f.h, f.dom.name, f.images.vdb!, cp);
    await f.dom.write('vda', 0, 64 * KiB, 0x54);
    await f.dom.qemuIo('vda', 'flush');
    const mixed = await runCliJson<BackupJson>(f.dir, ['backup', f.dom.name, '--repo', repo]);
    expect(mixed.disks.map((d) => [d.disk, d.level])).toEqual([['vda', 'incremental'], ['vdb', 'full']]);
    expect(mixed.disks[0]!.bytesRead).toBe(64 * KiB);
    expect(mixed.disks[1]!.reason).toMatch(new RegExp(`checkpoint ${lost.checkpoint} is not valid \\(disk vdb: bitmap ${lost.checkpoint} (missing|inconsistent)`));
    expect(mixed.disks[1]!.reason).toContain(`checkpoint ${full.checkpoint} is not valid`);

    await f.dom.write('vdb', 8 * MiB, 64 * KiB, 0x53);
    await f.dom.qemuIo('vdb', 'flush');
    await f.h.virsh(['destroy', f.dom.name]);
    const shas: Record<string, string> = {};
    for (const t of ['vda', 'vdb']) {
      await snapshotRaw(f.images[t]!, join(f.dir, `${t}-off.raw`));
      shas[t] = await sha256File(join(f.dir, `${t}-off.raw`));
    }
    const offline = await runCliJson<BackupJson>(f.dir, ['backup', f.dom.name, '--repo', repo]);
    expect(offline.controlPlane).toBe('offline');
    expect(offline.skipped).toEqual([{ disk: 'vdc', reason: 'it is read-only' }]);
    expect(offline.level).toBe('incremental');
    expect(offline.incrementalFrom).toBe(mixed.checkpoint);
    expect(offline.checkpoint).toBeNull();
    expect(offline.disks.map((d) => [d.disk, d.bytesRead])).toEqual([['vda', 0], ['vdb', 64 * KiB]]);
    for (const d of offline.disks) {
      expect(await restoreSha(f.dir, repo, d.backupId, join(f.dir, `${d.disk}-r.raw`))).toBe(shas[d.disk]);
    }
    const offlineFull = await runCliJson<BackupJson>(f.dir, ['backup', f.dom.name, '--repo', repo, '--full']);
    expect(offlineFull.disks.map((d) => d.bytesRead)).toEqual([2 * MiB, MiB + 64 * KiB]);

    // VM-level restore: every disk of the group, and a new domain defined from the domain XML kept with the backup.
    const copy = `${f.dom.name}-copy`;
    const restored = await runCliJson<{ disks: { disk: string; out: string }[]; defined: { name: string } | null }>(f.dir, [
      'restore', '--repo', repo, '--group', offline.groupId, '--out-dir', join(f.dir, 'restored'), '--define', copy, '--connect', f.h.uri,
    ]);
    try {
      expect(restored.defined?.name).toBe(copy);
      expect(restored.disks.map((d) => d.disk)).toEqual(['vda', 'vdb']);
      const xml = await f.h.virsh(['dumpxml', copy]);
      expect(xml).not.toContain(f.images.vda!);
      for (const d of restored.disks) expect(xml).toContain(d.out);
      const uuid = await f.h.virsh(['domuuid', copy]);
      expect(uuid).not.toBe(await f.h.virsh(['domuuid', f.dom.name]));
      await f.h.virsh(['start', copy]);
      expect(await f.h.virsh(['domstate', copy])).toBe('running');
      await f.h.virsh(['destroy', copy]);
      for (const d of restored.disks) {
        await snapshotRaw(d.out, join(f.dir, `${d.disk}-copy.raw`));
        expect(await sha256File(join(f.dir, `${d.disk}-copy.raw`))).toBe(shas[d.disk]);
      }
      const again = await runCli(f.dir, ['restore', '--repo', repo, '--group', offline.groupId, '--out-dir', join(f.dir, 'again'), '--define', copy, '--connect', f.h.uri]);
      expect(again.exitCode).not.toBe(0);
      expect(again.stderr).toContain(copy);
    } finally {
      await f.h.virsh(['destroy', copy]).catch(() => undefined);
      await f.h.virsh(['undefine', copy]).catch(() => undefined);
    }
  }, 240_000);
});
