// virsh's output shapes against what virsh 9.0 printed here (test:///default driver), byte for byte.
import { describe, expect, test } from '@jest/globals';
import type { JobInfo } from '../../../src/daemon/api-types.js';
import {
  formatCheckpointList,
  formatDomJobInfo,
  formatVirshTime,
  formatVshTable,
  prettyCapacity,
  stripDomainElement,
} from '../../../src/cli/virsh-format.js';

process.env.TZ = 'UTC';

// virsh -c test:///default: checkpoint-create-as test cp1; cp2; checkpoint-create test cp.xml (cpx); Cp0.
const chain = [
  { name: 'cp1', parent: null, creationTime: 1795429333 },
  { name: 'cp2', parent: 'cp1', creationTime: 1795429334 },
  { name: 'cpx', parent: 'cp2', creationTime: 1795429334 },
  { name: 'Cp0', parent: 'cpx', creationTime: 1795429334 },
];

describe('checkpoint-list', () => {
  test('the table is virsh 9.0 byte for byte, sorted by name case-insensitively', () => {
    expect(formatCheckpointList(chain)).toBe(
      ' Name   Creation Time\n' +
        '-----------------------------------\n' +
        ' Cp0    2026-11-23 10:22:14 +0000\n' +
        ' cp1    2026-11-23 10:22:13 +0000\n' +
        ' cp2    2026-11-23 10:22:14 +0000\n' +
        ' cpx    2026-11-23 10:22:14 +0000\n' +
        '\n',
    );
  });

  test('--parent adds the Parent column; a root has an empty cell after the padding', () => {
    expect(formatCheckpointList(chain, { parent: true })).toBe(
      ' Name   Creation Time               Parent\n' +
        '--------------------------------------------\n' +
        ' Cp0    2026-11-23 10:22:14 +0000   cpx\n' +
        ' cp1    2026-11-23 10:22:13 +0000   \n' +
        ' cp2    2026-11-23 10:22:14 +0000   cp1\n' +
        ' cpx    2026-11-23 10:22:14 +0000   cp2\n' +
        '\n',
    );
  });

  test('--name, --leaves, --roots --name', () => {
    expect(formatCheckpointList(chain, { name: true })).toBe('Cp0\ncp1\ncp2\ncpx\n\n');
    expect(formatCheckpointList(chain, { leaves: true })).toBe(
      ' Name   Creation Time\n-----------------------------------\n Cp0    2026-11-23 10:22:14 +0000\n\n',
    );
    expect(formatCheckpointList(chain, { roots: true, name: true })).toBe('cp1\n\n');
    expect(formatCheckpointList(chain, { noLeaves: true, name: true })).toBe('cp1\ncp2\ncpx\n\n');
  });

  test('an empty list is the header and the dashes of the header alone', () => {
    expect(formatCheckpointList([])).toBe(' Name   Creation Time\n-----------------------\n\n');
  });

  test('--tree is vshTreePrint', () => {
    expect(formatCheckpointList(chain, { tree: true })).toBe(
      'cp1\n  |\n  +- cp2\n      |\n      +- cpx\n          |\n          +- Cp0\n            \n\n',
    );
  });

  test('options virsh refuses together are bad input with virsh\'s words', () => {
    expect(() => formatCheckpointList(chain, { tree: true, name: true })).toThrow('Options --tree and --name are mutually exclusive');
    expect(() => formatCheckpointList(chain, { tree: true, name: true })).toThrow(expect.objectContaining({ code: 'INVALID_INPUT' }) as unknown as Error);
    expect(() => formatCheckpointList(chain, { parent: true, roots: true })).toThrow('Options --parent and --roots are mutually exclusive');
    expect(() => formatCheckpointList(chain, { tree: true, leaves: true })).toThrow(/^--leaves and --tree are mutually exclusive/);
    expect(() => formatCheckpointList(chain, { tree: true, noLeaves: true })).toThrow(/^--no-leaves and --tree are mutually exclusive/);
  });

  test('--name wins over --parent; --leaves with --no-leaves selects nothing (virsh 9.0)', () => {
    expect(formatCheckpointList(chain, { name: true, parent: true })).toBe('Cp0\ncp1\ncp2\ncpx\n\n');
    expect(formatCheckpointList(chain, { leaves: true, noLeaves: true })).toBe(' Name   Creation Time\n-----------------------\n\n');
  });
});

describe('vshTable and time', () => {
  test('columns padded to the widest cell plus two, dashes width + 3 each, last column not padded', () => {
    expect(formatVshTable(['Id', 'Name', 'State'], [['1', 'vm1', 'running']])).toBe(
      ' Id   Name   State\n----------------------\n 1    vm1    running\n\n',
    );
  });

  test('%z is the local offset', () => {
    expect(formatVirshTime(0)).toBe('1970-01-01 00:00:00 +0000');
  });
});

function job(over: Partial<JobInfo>): JobInfo {
  return {
    id: 'j1',
    vm: 'vm1',
    kind: 'pull',
    state: 'ready',
    startedAt: '2026-11-23T10:00:00.000Z',
    dataTotal: 64 * 1024 * 1024,
    dataProcessed: 1024 * 1024,
    dataRemaining: 63 * 1024 * 1024,
    elapsedMs: 1234,
    disks: [],
    ...over,
  };
}

describe('domjobinfo', () => {
  test('no job: Job type None padded as %-12s', () => {
    expect(formatDomJobInfo(null)).toBe('Job type:         None        \n');
  });

  test('an active backup job: Unbounded, Backup, elapsed ms, file counters, scratch use', () => {
    expect(formatDomJobInfo(job({ scratchBytes: 1536 }))).toBe(
      'Job type:         Unbounded   \n' +
        'Operation:        Backup      \n' +
        'Time elapsed:     1234         ms\n' +
        'File processed:   1.000 MiB\n' +
        'File remaining:   63.000 MiB\n' +
        'File total:       64.000 MiB\n' +
        'Temporary disk space use: 1.500 KiB\n',
    );
  });

  test('completed, failed and cancelled jobs', () => {
    expect(formatDomJobInfo(job({ state: 'completed', dataRemaining: 0, dataProcessed: 64 << 20 }))).toMatch(/^Job type: {9}Completed {3}\n/);
    const failed = formatDomJobInfo(job({ state: 'failed', error: 'disk vda: No space left on device' }));
    expect(failed).toMatch(/^Job type: {9}Failed {6}\n/);
    expect(failed).toContain('Error message:    disk vda: No space left on device\n');
    expect(formatDomJobInfo(job({ state: 'cancelled' }))).toMatch(/^Job type: {9}Cancelled {3}\n/);
    // No data counters at all: no File lines (libvirt leaves them out).
    expect(formatDomJobInfo(job({ dataTotal: 0, dataProcessed: 0, dataRemaining: 0 }))).not.toContain('File');
  });

  test('vshPrettyCapacity', () => {
    expect(prettyCapacity(1023)).toEqual({ value: 1023, unit: 'B' });
    expect(prettyCapacity(1024)).toEqual({ value: 1, unit: 'KiB' });
    expect(prettyCapacity(3 * 1024 ** 3)).toEqual({ value: 3, unit: 'GiB' });
  });
});

test('--no-domain removes the <domain> element only', () => {
  const xml =
    "<domaincheckpoint>\n  <name>cp1</name>\n  <creationTime>1</creationTime>\n  <disks>\n    <disk name='vda' checkpoint='bitmap' bitmap='cp1'/>\n  </disks>\n" +
    "  <domain type='kvm'>\n    <name>vm1</name>\n    <devices>\n      <disk/>\n    </devices>\n  </domain>\n</domaincheckpoint>\n";
  expect(stripDomainElement(xml)).toBe(
    "<domaincheckpoint>\n  <name>cp1</name>\n  <creationTime>1</creationTime>\n  <disks>\n    <disk name='vda' checkpoint='bitmap' bitmap='cp1'/>\n  </disks>\n</domaincheckpoint>\n",
  );
  expect(stripDomainElement('<domaincheckpoint>\n  <name>x</name>\n</domaincheckpoint>\n')).toBe('<domaincheckpoint>\n  <name>x</name>\n</domaincheckpoint>\n');
});
