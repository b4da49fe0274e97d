// Checkpoints survive a QEMU restart: full push + cp1 through the checkpoint manager, QEMU stopped and started again on
// the same images, the chain still listed and valid, and an incremental since cp1 restores identically.
import { afterEach, describe, expect, test } from '@jest/globals';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { createDisk, startQemuSystem, type QemuInstance } from '../../harness/qemu.js';
import { makeTempDir, removeTempDir } from '../../harness/temp-dir.js';
import { CheckpointManager } from '../../../src/checkpoint/manager.js';
import { CheckpointStore } from '../../../src/checkpoint/store.js';
import { queryDisks } from '../../../src/qemu/block-graph.js';
import { runPushBackup } from '../../../src/backup/push-backup.js';
import { leftovers, ownDataRanges, sameContent, snapshotRaw } from './helpers.js';

const MiB = 1024 * 1024;

let dir: string | undefined;
let qemu: QemuInstance | undefined;

afterEach(async () => {
  await qemu?.stop();
  qemu = undefined;
  if (dir) await removeTempDir(dir);
  dir = undefined;
});

async function backup(manager: CheckpointManager, instance: QemuInstance, checkpoint: string, target: string, since?: { from: string; onto: string }) {
  const prepared = await manager.prepareCreate(checkpoint);
  const [vda] = await queryDisks(instance.client);
  return runPushBackup({
    vm: 'vm1',
    qmp: instance.client,
    disks: [{
      disk: vda,
      push: { path: target, format: 'qcow2', create: true },
      ...(since ? { incrementalFrom: since.from, rebaseOnto: since.onto } : {}),
    }],
    checkpointActions: prepared.actions,
    recordCheckpoint: () => manager.commitCreated(prepared.checkpoint),
  });
}

describe('checkpoints across a QEMU restart', () => {
  test('the chain stays valid and an incremental since the last checkpoint restores identically', async () => {
    dir = await makeTempDir('restart');
    const image = join(dir, 'a.qcow2');
    const out = join(dir, 'out');
    await mkdir(out);
    await createDisk(image, { size: 16 * MiB });
    const store = new CheckpointStore(join(dir, 'state'));
    const start = () => startQemuSystem({ dir, disks: [{ path: image, target: 'vda' }] });

    qemu = await start();
    let manager = new CheckpointManager({ qmp: qemu.client, store, vm: 'vm1' });
    await qemu.guestWrite('vda', 'write -P 0x11 0 2M');
    await qemu.guestWrite('vda', 'flush');
    await snapshotRaw(image, join(out, 'ref1.raw'));
    await backup(manager, qemu, 'cp1', join(out, 'full.qcow2'));
    expect((await sameContent(join(out, 'ref1.raw'), join(out, 'full.qcow2'))).same).toBe(true);
    await qemu.guestWrite('vda', 'write -P 0x22 4M 192k');
    await qemu.stop();

    // A new QEMU on the same image, a new manager over the same state directory (as after restarting both).
    qemu = await start();
    manager = new CheckpointManager({ qmp: qemu.client, store: new CheckpointStore(join(dir, 'state')), vm: 'vm1' });
    expect((await manager.list()).map((cp) => cp.name)).toEqual(['cp1']);
    expect((await manager.validate()).map((check) => [check.name, check.valid])).toEqual([['cp1', true]]);

    await qemu.guestWrite('vda', 'write -P 0x33 8M 64k');
    await qemu.guestWrite('vda', 'flush');
    await snapshotRaw(image, join(out, 'ref2.raw'));
    const inc = await backup(manager, qemu, 'cp2', join(out, 'inc.qcow2'), { from: 'cp1', onto: join(out, 'full.qcow2') });
    expect(inc.disks[0]).toMatchObject({ sync: 'incremental', incrementalFrom: 'cp1' });
    // Both writes since cp1 (before and after the restart) are in the incremental, and nothing else.
    expect(await ownDataRanges(join(out, 'inc.qcow2'))).toEqual([
      { start: 4 * MiB, length: 192 * 1024 },
      { start: 8 * MiB, length: 64 * 1024 },
    ]);
    expect((await sameContent(join(out, 'ref2.raw'), join(out, 'inc.qcow2'))).same).toBe(true);
    expect((await sameContent(join(out, 'ref1.raw'), join(out, 'inc.qcow2'))).same).toBe(false);
    expect((await manager.list()).map((cp) => [cp.name, cp.parent])).toEqual([['cp1', undefined], ['cp2', 'cp1']]);
    expect((await leftovers(qemu.client)).bitmaps.vda).toEqual(['cp1', 'cp2']);
  });
});
