import { describe, expect, it } from '@jest/globals';
import {
  bitmapAdd,
  bitmapClear,
  bitmapDisable,
  bitmapEnable,
  bitmapMerge,
  bitmapRemove,
  blockdevBackup,
} from '../../../src/qemu/actions.js';
import { fileNodeOptions, formatNodeOptions, qcow2CreateOptions } from '../../../src/qemu/blockdev.js';
import { blockExportAddArguments, nbdServerStartArguments } from '../../../src/qemu/nbd-export.js';
import { transactionArguments } from '../../../src/qemu/transaction.js';
import { InvalidInputError } from '../../../src/util/errors.js';
import { loadFixture } from './fixtures.js';

type Command = { execute: string; arguments: Record<string, unknown>; id: string };
const commands = loadFixture('libvirt-commands.json').commands as Record<string, Command[]>;

function sent(capture: string, execute: string, index = 0): Record<string, unknown> {
  const found = commands[capture]!.filter((c) => c.execute === execute)[index];
  if (!found) throw new Error(`${capture} has no ${execute} #${index}`);
  return found.arguments;
}

/** JSON text, so that key order is compared too (libvirt's order is ours). */
const text = (value: unknown): string => JSON.stringify(value);

describe('transaction actions equal libvirt 9.0 byte for byte', () => {
  it('01 checkpoint create', () => {
    const args = transactionArguments([bitmapAdd({ node: 'libvirt-1-format', name: 'cp0', persistent: true })]);
    expect(text(args)).toBe(text(sent('01-checkpoint-create-cp0.qmp', 'transaction')));
  });

  it('02 push full + checkpoint', () => {
    const args = transactionArguments([
      bitmapAdd({ node: 'libvirt-1-format', name: 'cp1', persistent: true, disabled: false }),
      blockdevBackup({
        jobId: 'backup-vda-libvirt-1-format',
        device: 'libvirt-1-format',
        target: 'libvirt-2-format',
        sync: 'full',
      }),
    ]);
    expect(text(args)).toBe(text(sent('02-push-full-cp1.qmp', 'transaction')));
  });

  it('04 push incremental since cp1 + cp2', () => {
    const args = transactionArguments([
      bitmapAdd({ node: 'libvirt-1-format', name: 'cp2', persistent: true }),
      bitmapAdd({ node: 'libvirt-1-format', name: 'backup-vda', persistent: false, disabled: true, granularity: 65536 }),
      bitmapMerge({ node: 'libvirt-1-format', target: 'backup-vda', sources: [{ node: 'libvirt-1-format', name: 'cp1' }] }),
      blockdevBackup({
        jobId: 'backup-vda-libvirt-1-format',
        device: 'libvirt-1-format',
        target: 'libvirt-3-format',
        sync: 'incremental',
        bitmap: 'backup-vda',
        autoFinalize: true,
        autoDismiss: false,
      }),
    ]);
    expect(text(args)).toBe(text(sent('04-push-inc-cp1-cp2.qmp', 'transaction')));
  });

  it('05 pull incremental with scratch', () => {
    const args = transactionArguments([
      bitmapAdd({ node: 'libvirt-1-format', name: 'cp3', persistent: true }),
      bitmapAdd({ node: 'libvirt-4-format', name: 'backup-vda', persistent: false, disabled: true, granularity: 65536 }),
      bitmapMerge({ node: 'libvirt-4-format', target: 'backup-vda', sources: [{ node: 'libvirt-1-format', name: 'cp2' }] }),
      blockdevBackup({ jobId: 'backup-vda-libvirt-1-format', device: 'libvirt-1-format', target: 'libvirt-4-format', sync: 'none' }),
    ]);
    expect(text(args)).toBe(text(sent('05-pull-inc-cp2-cp3-scratch.qmp', 'transaction')));
  });

  it('07 checkpoint delete and 10 temporary size bitmap', () => {
    expect(text(transactionArguments([bitmapRemove({ node: 'libvirt-1-format', name: 'cp1' })]))).toBe(
      text(sent('07-checkpoint-delete-cp1-middle.qmp', 'transaction')),
    );
    const size = transactionArguments([
      bitmapAdd({ node: 'libvirt-1-format', name: 'libvirt-tmp-size-xml', persistent: false, disabled: true, granularity: 65536 }),
      bitmapMerge({
        node: 'libvirt-1-format',
        target: 'libvirt-tmp-size-xml',
        sources: [{ node: 'libvirt-1-format', name: 'virtnbdbackup.0' }],
      }),
    ]);
    expect(text(size)).toBe(text(sent('10-vnb-full-small.qmp', 'transaction', 1)));
    expect(text(transactionArguments([bitmapRemove({ node: 'libvirt-1-format', name: 'libvirt-tmp-size-xml' })]))).toBe(
      text(sent('10-vnb-full-small.qmp', 'transaction', 2)),
    );
  });

  it('adds completion-mode only when asked', () => {
    const a = [bitmapClear({ node: 'n', name: 'b' })];
    expect(transactionArguments(a, 'grouped')).toEqual({
      actions: [{ type: 'block-dirty-bitmap-clear', data: { node: 'n', name: 'b' } }],
      properties: { 'completion-mode': 'grouped' },
    });
    expect(bitmapDisable({ node: 'n', name: 'b' }).type).toBe('block-dirty-bitmap-disable');
    expect(bitmapEnable({ node: 'n', name: 'b' }).type).toBe('block-dirty-bitmap-enable');
  });
});

describe('node, image and export arguments equal libvirt 9.0', () => {
  it('02: file node, qcow2 create without backing, format node with backing null', () => {
    expect(text(fileNodeOptions({ nodeName: 'libvirt-2-storage', filename: '/tmp/lv/push/full-cp1.qcow2' }))).toBe(
      text(sent('02-push-full-cp1.qmp', 'blockdev-add', 0)),
    );
    expect(text({ 'job-id': 'create-libvirt-2-format', options: qcow2CreateOptions({ fileNode: 'libvirt-2-storage', size: 1073741824 }) })).toBe(
      text(sent('02-push-full-cp1.qmp', 'blockdev-create')),
    );
    expect(text(formatNodeOptions({ nodeName: 'libvirt-2-format', fileNode: 'libvirt-2-storage', backing: null }))).toBe(
      text(sent('02-push-full-cp1.qmp', 'blockdev-add', 1)),
    );
  });

  it('05: scratch with backing file, NBD server on a unix socket, export with a bitmap', () => {
    const create = qcow2CreateOptions({
      fileNode: 'libvirt-4-storage',
      size: 1073741824,
      clusterSize: 65536,
      backingFile: '/tmp/lv/img/small.qcow2',
      backingFmt: 'qcow2',
    });
    expect(text({ 'job-id': 'create-libvirt-4-format', options: create })).toBe(
      text(sent('05-pull-inc-cp2-cp3-scratch.qmp', 'blockdev-create')),
    );
    expect(text(formatNodeOptions({ nodeName: 'libvirt-4-format', fileNode: 'libvirt-4-storage', backing: 'libvirt-1-format' }))).toBe(
      text(sent('05-pull-inc-cp2-cp3-scratch.qmp', 'blockdev-add', 1)),
    );
    expect(text(nbdServerStartArguments({ addr: { type: 'unix', path: '/tmp/lv/pull.sock' } }))).toBe(
      text(sent('05-pull-inc-cp2-cp3-scratch.qmp', 'nbd-server-start')),
    );
    expect(
      text(blockExportAddArguments({ id: 'libvirt-nbd-libvirt-4-format', node: 'libvirt-4-format', name: 'vda', writable: false, bitmaps: ['backup-vda'] })),
    ).toBe(text(sent('05-pull-inc-cp2-cp3-scratch.qmp', 'block-export-add')));
    expect(text(blockExportAddArguments({ id: 'libvirt-nbd-libvirt-6-format', node: 'libvirt-6-format', name: 'vda', writable: false }))).toBe(
      text(sent('06-pull-full-noscratch.qmp', 'block-export-add')),
    );
  });

  it('tcp NBD server with TLS', () => {
    expect(nbdServerStartArguments({ addr: { type: 'inet', host: '::', port: 10809 }, tlsCreds: 'tls0' })).toEqual({
      addr: { type: 'inet', data: { host: '::', port: '10809' } },
      'tls-creds': 'tls0',
    });
    expect(() => nbdServerStartArguments({ addr: { type: 'inet', host: 'h', port: 0 } })).toThrow(InvalidInputError);
  });
});

describe('builder validation', () => {
  it('refuses what QEMU would refuse later, naming the thing', () => {
    expect(() => bitmapAdd({ node: '', name: 'x', persistent: true })).toThrow(/bitmap node/);
    expect(() => bitmapAdd({ node: 'n', name: 'x', persistent: true, granularity: 1000 })).toThrow(/granularity 1000/);
    expect(() => bitmapMerge({ node: 'n', target: 't', sources: [] })).toThrow(/at least one source/);
    expect(() => blockdevBackup({ jobId: 'j', device: 'd', target: 't', sync: 'incremental' })).toThrow(/needs a bitmap/);
    expect(() => blockdevBackup({ jobId: 'j', device: 'd', target: 't', sync: 'full', bitmap: 'b' })).toThrow(/only goes with/);
    expect(() => qcow2CreateOptions({ fileNode: 'f', size: 1000 })).toThrow(/multiple of 512/);
  });

  it('passes optional backup knobs with QEMU names', () => {
    const action = blockdevBackup({
      jobId: 'j',
      device: 'd',
      target: 't',
      sync: 'bitmap',
      bitmap: 'b',
      bitmapMode: 'never',
      speed: 1024,
      onTargetError: 'stop',
      perf: { maxWorkers: 8, maxChunk: 1048576 },
    });
    expect(action.data).toEqual({
      device: 'd',
      'job-id': 'j',
      target: 't',
      sync: 'bitmap',
      bitmap: 'b',
      'bitmap-mode': 'never',
      'auto-finalize': true,
      'auto-dismiss': false,
      speed: 1024,
      'on-target-error': 'stop',
      'x-perf': { 'max-workers': 8, 'max-chunk': 1048576 },
    });
  });
});
