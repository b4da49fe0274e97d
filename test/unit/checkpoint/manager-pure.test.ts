import { describe, expect, it } from '@jest/globals';
import {
  checkCheckpoints,
  checkpointActions,
  checkpointRemovalActions,
  CheckpointUnusableError,
} from '../../../src/checkpoint/manager.js';
import type { Checkpoint } from '../../../src/checkpoint/model.js';
import { disksFromQuery } from '../../../src/qemu/block-graph.js';
import { transactionArguments } from '../../../src/qemu/transaction.js';
import { loadFixture } from '../qemu/fixtures.js';

const cp = (name: string, extra: Partial<Checkpoint> = {}): Checkpoint => ({
  name,
  creationTime: 1,
  disks: [{ name: 'libvirt-1-format', checkpoint: 'bitmap', bitmap: name }],
  ...extra,
});

describe('checkpoint actions against libvirt 9.0 captures', () => {
  const fx = loadFixture('libvirt-named-nodes-push-full-cp1.json');
  const disks = disksFromQuery(fx['query-named-block-nodes'], []);
  const commands = loadFixture('libvirt-commands.json').commands as Record<string, Array<{ execute: string; arguments: unknown }>>;

  it('create equals capture 01 byte for byte', () => {
    expect(JSON.stringify(transactionArguments(checkpointActions(cp('cp0'), disks)))).toBe(
      JSON.stringify(commands['01-checkpoint-create-cp0.qmp']![0]!.arguments),
    );
  });

  it('delete removes only that bitmap (capture 07) and reports bitmaps already gone', () => {
    const removal = checkpointRemovalActions(cp('cp0'), disks);
    expect(removal).toEqual({ actions: [{ type: 'block-dirty-bitmap-remove', data: { node: 'libvirt-1-format', name: 'cp0' } }], missing: [] });
    expect(checkpointRemovalActions(cp('cp7'), disks)).toEqual({ actions: [], missing: [{ disk: 'libvirt-1-format', bitmap: 'cp7' }] });
  });

  it('skips disks with checkpoint=no and refuses unknown disks', () => {
    expect(checkpointActions(cp('a', { disks: [{ name: 'libvirt-1-format', checkpoint: 'no' }] }), disks)).toEqual([]);
    expect(() => checkpointActions(cp('a', { disks: [{ name: 'vdz', checkpoint: 'bitmap' }] }), disks)).toThrow(/no disk vdz/);
  });
});

describe('checkCheckpoints folds bitmap states, worst first', () => {
  const fx = loadFixture('libvirt-named-nodes-pull-inc-during.json');
  const named = structuredClone(fx['query-named-block-nodes']) as Array<Record<string, unknown>>;
  const live = named.find((n) => n['node-name'] === 'libvirt-1-format')!;
  const bitmaps = live['dirty-bitmaps'] as Array<Record<string, unknown>>;
  bitmaps.find((b) => b.name === 'cp1')!.recording = false;
  bitmaps.find((b) => b.name === 'cp2')!.busy = true;
  bitmaps.find((b) => b.name === 'cp3')!.inconsistent = true;
  bitmaps.find((b) => b.name === 'cp3')!.busy = true;
  const disks = disksFromQuery(named, []);

  it('ok, not-recording, busy, inconsistent, missing', () => {
    const checks = checkCheckpoints(['cp0', 'cp1', 'cp2', 'cp3', 'cp4'].map((n) => cp(n)), disks);
    expect(checks.map((c) => [c.name, c.valid, c.disks[0]!.state])).toEqual([
      ['cp0', true, 'ok'],
      ['cp1', false, 'not-recording'],
      ['cp2', false, 'busy'],
      ['cp3', false, 'inconsistent'],
      ['cp4', false, 'missing'],
    ]);
    const error = new CheckpointUnusableError({ ...checks[2]!.disks[0]!, state: 'busy' }, 'vm1');
    expect(error.code).toBe('CONFLICT');
    expect(error.message).toMatch(/checkpoint cp2 of VM vm1 .*disk libvirt-1-format.*in use.*state: busy/);
  });
});
