import { execa } from 'execa';
import { stat } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from '@jest/globals';
import { bitmapDisable, blockdevBackup } from '../../../src/qemu/actions.js';
import { addBitmap, queryBitmaps, removeBitmap } from '../../../src/qemu/bitmaps.js';
import { queryDisks } from '../../../src/qemu/block-graph.js';
import { closeImage, createQcow2Image, openImage } from '../../../src/qemu/blockdev.js';
import { QemuJobError } from '../../../src/qemu/errors.js';
import { cancelJob, dismissJob, prepareJobWatch, queryJobs, runCreateJob, type JobProgress } from '../../../src/qemu/jobs.js';
import { blockExportAdd, blockExportDel, nbdServerStart, nbdServerStop, queryBlockExports } from '../../../src/qemu/nbd-export.js';
import { transaction } from '../../../src/qemu/transaction.js';
import { useQemuSystem } from '../../harness/jest-qemu.js';
import { createDisk, qemuImg, qemuIo } from '../../harness/qemu.js';

const MiB = 1024 * 1024;

async function virtualSize(path: string): Promise<number> {
  const info = JSON.parse(await qemuImg(['info', '--output=json', '-U', path])) as { 'virtual-size': number };
  return info['virtual-size'];
}

describe('qemu layer on qemu-system-x86_64 with two disks', () => {
  const fx = useQemuSystem(async (dir) => {
    await createDisk(join(dir, 'vda.qcow2'), { size: 32 * MiB, format: 'qcow2' });
    await createDisk(join(dir, 'vdb.raw'), { size: 16 * MiB, format: 'raw' });
    return {
      disks: [
        { path: join(dir, 'vda.qcow2'), format: 'qcow2', target: 'vda' },
        { path: join(dir, 'vdb.raw'), format: 'raw', target: 'vdb' },
      ],
    };
  });

  it('lists both disks with their nodes, sizes and formats; bitmaps appear once added', async () => {
    const qmp = fx.qemu.client;
    const disks = await queryDisks(qmp);
    expect(disks.map((d) => [d.target, d.qdev, d.formatNode, d.fileNode, d.format, d.filename])).toEqual([
      ['vda', '/machine/peripheral/vda/virtio-backend', 'disk-vda', 'disk-vda-file', 'qcow2', join(fx.dir, 'vda.qcow2')],
      ['vdb', '/machine/peripheral/vdb/virtio-backend', 'disk-vdb', 'disk-vdb-file', 'raw', join(fx.dir, 'vdb.raw')],
    ]);
    expect(disks[0]!.virtualSize).toBe(await virtualSize(join(fx.dir, 'vda.qcow2')));
    expect(disks[1]!.virtualSize).toBe((await stat(join(fx.dir, 'vdb.raw'))).size);
    expect(disks.every((d) => d.bitmaps.length === 0)).toBe(true);

    await addBitmap(qmp, { node: 'disk-vda', name: 'cp0', persistent: true });
    await fx.qemu.guestWrite('vda', 'write -P 0x33 1M 64k');
    const after = await queryDisks(qmp);
    expect(after[0]!.bitmaps).toEqual([
      { name: 'cp0', recording: true, busy: false, persistent: true, inconsistent: false, granularity: 65536, count: 65536 },
    ]);
    await removeBitmap(qmp, { node: 'disk-vda', name: 'cp0' });
    expect((await queryBitmaps(qmp)).get('disk-vda')).toEqual([]);
  });

  it('a full blockdev-backup into a created qcow2 is watched to concluded with progress, dismissed, and copies the data', async () => {
    const qmp = fx.qemu.client;
    await fx.qemu.guestWrite('vda', 'write -P 0x5a 0 8M');
    await fx.qemu.guestWrite('vda', 'write -P 0x33 20M 1M');
    const target = join(fx.dir, 'full.qcow2');
    const nodes = await createQcow2Image(qmp, { filename: target, size: 32 * MiB, jobIdPrefix: 't1', backing: null });
    expect(nodes).toEqual({ formatNode: 't1-format', fileNode: 't1-storage' });
    expect(await queryJobs(qmp)).toEqual([]); // create jobs were dismissed

    const jobId = 'backup-vda';
    const watch = prepareJobWatch(qmp, jobId);
    await transaction(qmp, [blockdevBackup({ jobId, device: 'disk-vda', target: nodes.formatNode, sync: 'full', speed: 16 * MiB })]);
    const progress: JobProgress[] = [];
    const started = Date.now();
    const result = await watch.wait({ onProgress: (p) => progress.push(p), progressIntervalMs: 200 });
    const elapsed = Date.now() - started;
    expect(result).toEqual({ status: 'completed', offset: 32 * MiB, len: 32 * MiB });
    expect(progress.length).toBeGreaterThan(0);
    for (const p of progress) {
      expect(p.jobId).toBe(jobId);
      expect(p.total).toBe(32 * MiB);
      expect(p.current).toBeLessThanOrEqual(p.total);
    }
    // progress never goes back, and polls are spaced by the interval
    expect(progress.map((p) => p.current)).toEqual([...progress.map((p) => p.current)].sort((a, b) => a - b));
    expect(progress.length).toBeLessThanOrEqual(Math.ceil(elapsed / 200) + 1);
    expect((await queryJobs(qmp)).map((j) => [j.id, j.status])).toEqual([[jobId, 'concluded']]);
    await dismissJob(qmp, jobId);
    expect(await queryJobs(qmp)).toEqual([]);
    await closeImage(qmp, nodes);
    // the live image is not flushed for outside readers: check the target's bytes against the written patterns
    await qemuIo(target, ['read -P 0x5a 0 8M', 'read -P 0 8M 12M', 'read -P 0x33 20M 1M', 'read -P 0 21M 11M'], 'qcow2');
    await expect(qemuIo(target, ['read -P 0x5a 20M 1M'], 'qcow2')).rejects.toThrow(/Pattern verification failed/);
  });

  it('a cancelled backup job is reported as cancelled', async () => {
    const qmp = fx.qemu.client;
    await fx.qemu.guestWrite('vda', 'write -P 0x11 0 16M');
    const nodes = await createQcow2Image(qmp, { filename: join(fx.dir, 'cancel.qcow2'), size: 32 * MiB, jobIdPrefix: 't2', backing: null });
    const watch = prepareJobWatch(qmp, 'slow');
    await transaction(qmp, [blockdevBackup({ jobId: 'slow', device: 'disk-vda', target: nodes.formatNode, sync: 'full', speed: MiB })]);
    await cancelJob(qmp, 'slow');
    const result = await watch.wait();
    expect(result.status).toBe('cancelled');
    expect(result.len).toBe(32 * MiB);
    expect(result.offset).toBeLessThan(32 * MiB);
    await dismissJob(qmp, 'slow');
    await closeImage(qmp, nodes);
  });

  it('a failing create job throws QemuJobError with QEMU error text, and is dismissed', async () => {
    const qmp = fx.qemu.client;
    const nodes = await openImage(qmp, { filename: join(fx.dir, 'vdb.raw'), formatNode: 'ro-fmt', fileNode: 'ro-file', format: 'raw', readOnly: true });
    // qcow2 cannot be created on a read-only node
    const failure = runCreateJob(qmp, 'bad-create', { driver: 'qcow2', file: 'ro-file', size: MiB }).catch((e: unknown) => e);
    const error = await failure;
    expect(error).toBeInstanceOf(QemuJobError);
    expect((error as QemuJobError).jobError).toMatch(/read.only|permission/i);
    expect(await queryJobs(qmp)).toEqual([]);
    await closeImage(qmp, nodes);
  });

  it('exports a node over NBD with a bitmap, lists it, and removes it waiting for BLOCK_EXPORT_DELETED', async () => {
    const qmp = fx.qemu.client;
    const sock = join(fx.dir, 'nbd.sock');
    await addBitmap(qmp, { node: 'disk-vda', name: 'cpx', persistent: false });
    await fx.qemu.guestWrite('vda', 'write -P 0x77 2M 128k');
    await transaction(qmp, [bitmapDisable({ node: 'disk-vda', name: 'cpx' })]); // read-only exports need a disabled bitmap
    await nbdServerStart(qmp, { addr: { type: 'unix', path: sock } });
    await blockExportAdd(qmp, { id: 'exp-vda', node: 'disk-vda', name: 'vda', writable: false, bitmaps: ['cpx'] });
    expect(await queryBlockExports(qmp)).toEqual([{ id: 'exp-vda', type: 'nbd', nodeName: 'disk-vda', shuttingDown: false }]);
    const map = await execa('nbdinfo', ['--map=qemu:dirty-bitmap:cpx', `nbd+unix:///vda?socket=${sock}`]);
    const dirty = map.stdout
      .split('\n')
      .map((l) => l.trim().split(/\s+/))
      .filter((f) => f[2] === '1')
      .map((f) => [Number(f[0]), Number(f[1])]);
    expect(dirty).toEqual([[2 * MiB, 128 * 1024]]);
    await blockExportDel(qmp, 'exp-vda');
    expect(await queryBlockExports(qmp)).toEqual([]);
    await nbdServerStop(qmp);
  });
});
