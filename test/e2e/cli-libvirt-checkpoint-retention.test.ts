// Checkpoint pruning through libvirt (virDomainCheckpointDelete), against the harness's real libvirtd: after N+3
// backups `virsh checkpoint-list` holds N of fleece's checkpoints, a checkpoint fleece did not make is left alone, the
// next incremental restores byte-identically.
import { afterAll, beforeAll, expect, describe, test } from '@jest/globals';
import { join } from 'node:path';
import { createImage, defineTestDomain, libvirtAvailability, sharedLibvirt, type LibvirtHarness, type TestDomain } from '../harness/libvirt.js';
import { makeTempDir, removeTempDir } from '../harness/temp-dir.js';
import { sha256File, snapshotRaw } from '../integration/backup/helpers.js';
import { runCli, runCliJson, type BackupJson } from './helpers.js';

const MiB = 1024 * 1024;
const KEEP = 1;
const available = libvirtAvailability();
const describeLibvirt = available.ok ? describe : describe.skip;
if (!available.ok) console.warn(`libvirt e2e tests skipped: ${available.why}`);

describeLibvirt('checkpoint pruning through libvirt', () => {
  let dir: string;
  let h: LibvirtHarness;
  let dom: TestDomain;
  let image: string;
  beforeAll(async () => {
    dir = await makeTempDir('libvirt-cpret');
    h = await sharedLibvirt();
    image = join(dir, 'vda.qcow2');
    await createImage(image, 'qcow2', 4 * MiB);
    dom = await defineTestDomain(h, { name: `fleece-test-cpret-${process.pid}`, disks: [{ target: 'vda', path: image, format: 'qcow2' }] });
  }, 120_000);
  afterAll(async () => {
    await dom?.remove();
    if (dir) await removeTempDir(dir);
  }, 60_000);
  const repo = () => join(dir, 'repo');
  const backup = () => runCliJson<BackupJson & { checkpointsDeleted?: string[] }>(dir, ['backup', dom.name, '--connect', h.uri, '--repo', repo(), '--keep-checkpoints', String(KEEP)]);
  const checkpoints = async () => (await h.virsh(['checkpoint-list', dom.name, '--name'])).split('\n').map((l) => l.trim()).filter(Boolean).sort();

  test(`after ${KEEP + 3} backups libvirt holds ${KEEP} of fleece's checkpoints and not one of another's less`, async () => {
    const made: string[] = [];
    for (let i = 0; i < KEEP + 3; i++) {
      await dom.write('vda', i * 256 * 1024, 64 * 1024, 0x30 + i);
      await dom.qemuIo('vda', 'flush');
      const json = await backup();
      made.push(json.checkpoint!);
      if (i === 0) await h.virsh(['checkpoint-create-as', dom.name, 'mine']);
      const now = await checkpoints();
      expect(now.filter((c) => c.startsWith('fleece-')).length).toBeLessThanOrEqual(KEEP);
      expect(now).toContain('mine');
    }
    expect(await checkpoints()).toEqual(['mine', ...made.slice(-KEEP)].sort());

    await dom.write('vda', 3 * MiB, 64 * 1024, 0x7e);
    await dom.qemuIo('vda', 'flush');
    await snapshotRaw(image, join(dir, 'last.raw'));
    const last = await backup();
    expect([last.level, last.incrementalFrom]).toEqual(['incremental', made.at(-1)]);
    const out = join(dir, 'restored.raw');
    const restored = await runCli(dir, ['restore', '--repo', repo(), '--backup', last.disks[0]!.backupId, '--out', out, '--format', 'raw']);
    expect([restored.exitCode, restored.stderr]).toEqual([0, expect.anything()]);
    expect(await sha256File(out)).toBe(await sha256File(join(dir, 'last.raw')));
  }, 400_000);
});
