// The virsh checkpoint verbs as a user runs them: the built CLI as a child process against real QEMU (no daemon).
import { afterAll, beforeAll, beforeEach, describe, expect, test } from '@jest/globals';
import { execa } from 'execa';
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { CLI } from './helpers.js';
import { useQemuSystem } from '../harness/jest-qemu.js';
import { createDisk } from '../harness/qemu.js';
import { makeTempDir, removeTempDir } from '../harness/temp-dir.js';
import { queryDisks } from '../../src/qemu/block-graph.js';

const root = process.cwd();
const MiB = 1024 * 1024;



const fixture = useQemuSystem(async (dir) => {
  await createDisk(join(dir, 'vda.qcow2'), { size: 16 * MiB });
  return { extraQmpSockets: 1, disks: [{ path: join(dir, 'vda.qcow2'), target: 'vda' }] };
});

let home: string;
let cli: string;

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

async function fleece(...args: string[]): Promise<Run> {
  const result = await execa(process.execPath, [cli, ...args], {
    reject: false,
    stripFinalNewline: false,
    env: {
      FLEECE_STATE_DIR: join(home, 'state'),
      FLEECE_CONFIG_DIR: join(home, 'config'),
      FLEECE_RUN_DIR: join(home, 'run'),
      FLEECE_DAEMON_SOCKET: join(home, 'run', 'fleeced.sock'),
    },
  });
  return { code: result.exitCode ?? -1, stdout: String(result.stdout), stderr: String(result.stderr) };
}

/** Runs a verb on the test VM (ad hoc, --qmp on the spare monitor) and expects success. */
async function ok(...args: string[]): Promise<string> {
  const run = await fleece(...args, '--qmp', fixture.qemu.extraQmpPaths[0]!);
  expect({ code: run.code, stderr: run.stderr }).toEqual({ code: 0, stderr: '' });
  return run.stdout;
}

async function bitmaps(): Promise<string[]> {
  const disk = (await queryDisks(fixture.qemu.client)).find((d) => d.target === 'vda')!;
  return disk.bitmaps.map((b) => b.name).sort();
}

const TIME = '\\d{4}-\\d\\d-\\d\\d \\d\\d:\\d\\d:\\d\\d [+-]\\d{4}';

beforeAll(async () => {
  home = await makeTempDir('cli-virsh');
  cli = CLI;
});
afterAll(async () => {
  await removeTempDir(home);
});
beforeEach(async () => {
  await rm(join(home, 'state'), { recursive: true, force: true });
  await mkdir(join(home, 'run'), { recursive: true });
});

describe('fleece checkpoint-* (virsh verbs, direct QMP)', () => {
  test('checkpoint-create-as, checkpoint-create from XML; checkpoint-list flat, --parent, --name and --tree as virsh prints them', async () => {
    expect(await ok('checkpoint-create-as', 'vm1', 'cp1', 'first one')).toBe('Domain checkpoint cp1 created\n');
    expect(await ok('checkpoint-create-as', 'vm1', 'cp2')).toBe('Domain checkpoint cp2 created\n');
    const xmlFile = join(home, 'cpx.xml');
    await writeFile(xmlFile, '<domaincheckpoint><name>cpx</name><description>from file</description></domaincheckpoint>\n');
    expect(await ok('checkpoint-create', 'vm1', xmlFile)).toBe(`Domain checkpoint cpx created from '${xmlFile}'\n`);
    // --quiet drops the confirmation, as virsh -q does.
    expect(await ok('checkpoint-create-as', 'vm1', 'Cp0', '--quiet')).toBe('');
    expect(await bitmaps()).toEqual(['Cp0', 'cp1', 'cp2', 'cpx']);

    expect(await ok('checkpoint-list', 'vm1')).toMatch(
      new RegExp(`^ Name   Creation Time\\n-{35}\\n Cp0    ${TIME}\\n cp1    ${TIME}\\n cp2    ${TIME}\\n cpx    ${TIME}\\n\\n$`),
    );
    expect(await ok('checkpoint-list', 'vm1', '--parent')).toMatch(
      new RegExp(`^ Name   Creation Time               Parent\\n-{44}\\n Cp0    ${TIME}   cpx\\n cp1    ${TIME}   \\n cp2    ${TIME}   cp1\\n cpx    ${TIME}   cp2\\n\\n$`),
    );
    expect(await ok('checkpoint-list', 'vm1', '--name')).toBe('Cp0\ncp1\ncp2\ncpx\n\n');
    expect(await ok('checkpoint-list', 'vm1', '--leaves', '--name')).toBe('Cp0\n\n');
    expect(await ok('checkpoint-list', 'vm1', '--roots', '--name')).toBe('cp1\n\n');
    // Byte for byte what virsh 9.0 printed for the same chain (test:///default).
    expect(await ok('checkpoint-list', 'vm1', '--tree')).toBe(
      'cp1\n  |\n  +- cp2\n      |\n      +- cpx\n          |\n          +- Cp0\n            \n\n',
    );
    const json = JSON.parse(await ok('checkpoint-list', 'vm1', '--json')) as { current: string; checkpoints: { name: string }[] };
    expect(json.current).toBe('Cp0');
    expect(json.checkpoints.map((c) => c.name).sort()).toEqual(['Cp0', 'cp1', 'cp2', 'cpx']);
    const dump = await ok('checkpoint-dumpxml', 'vm1', 'cpx');
    expect(dump).toMatch(/^<domaincheckpoint>\n  <name>cpx<\/name>\n  <description>from file<\/description>\n  <parent>\n    <name>cp2<\/name>\n  <\/parent>\n  <creationTime>\d+<\/creationTime>\n  <disks>\n    <disk name='vda' checkpoint='bitmap' bitmap='cpx'\/>\n  <\/disks>\n<\/domaincheckpoint>\n\n$/);
  }, 60_000);

  test('checkpoint-dumpxml --size counts what the guest wrote since the checkpoint', async () => {
    await ok('checkpoint-create-as', 'vm1', 'cp1');
    expect(await ok('checkpoint-dumpxml', 'vm1', 'cp1', '--size')).toContain("<disk name='vda' checkpoint='bitmap' bitmap='cp1' size='0'/>");
    await fixture.qemu.guestWrite('vda', 'write -P 0x33 1M 64k');
    await fixture.qemu.guestWrite('vda', 'write -P 0x44 8M 128k');
    expect(await ok('checkpoint-dumpxml', 'vm1', 'cp1', '--size', '--no-domain')).toContain(
      `<disk name='vda' checkpoint='bitmap' bitmap='cp1' size='${192 * 1024}'/>`,
    );
    // The measurement leaves no temporary bitmap behind.
    expect(await bitmaps()).toEqual(['cp1']);
  }, 60_000);

  test('checkpoint-delete of a middle checkpoint removes only its bitmap and re-parents its child', async () => {
    for (const name of ['cp1', 'cp2', 'cp3']) await ok('checkpoint-create-as', 'vm1', name);
    expect(await ok('checkpoint-delete', 'vm1', 'cp2')).toBe('Domain checkpoint cp2 deleted\n\n');
    expect(await bitmaps()).toEqual(['cp1', 'cp3']);
    expect(await ok('checkpoint-list', 'vm1', '--parent')).toMatch(
      new RegExp(`^ Name   Creation Time               Parent\\n-{44}\\n cp1    ${TIME}   \\n cp3    ${TIME}   cp1\\n\\n$`),
    );
    expect(await ok('checkpoint-list', 'vm1', '--tree')).toBe('cp1\n  |\n  +- cp3\n    \n\n');
    // --metadata leaves the bitmap in QEMU.
    expect(await ok('checkpoint-delete', 'vm1', 'cp3', '--metadata')).toBe('Domain checkpoint cp3 deleted\n\n');
    expect(await bitmaps()).toEqual(['cp1', 'cp3']);
    expect(await ok('checkpoint-list', 'vm1', '--name')).toBe('cp1\n\n');
  }, 60_000);

  test('checkpoint-create --redefine (and checkpoint-redefine) restore the chain after the state dir was wiped', async () => {
    await ok('checkpoint-create-as', 'vm1', 'cp1', 'base');
    await ok('checkpoint-create-as', 'vm1', 'cp2');
    const before = await ok('checkpoint-list', 'vm1', '--parent');
    const xml1 = join(home, 'cp1.xml');
    const xml2 = join(home, 'cp2.xml');
    await writeFile(xml1, await ok('checkpoint-dumpxml', 'vm1', 'cp1'));
    await writeFile(xml2, await ok('checkpoint-dumpxml', 'vm1', 'cp2'));
    await rm(join(home, 'state'), { recursive: true, force: true });
    expect(await ok('checkpoint-list', 'vm1', '--name')).toBe('\n');

    expect(await ok('checkpoint-create', 'vm1', xml1, '--redefine')).toBe(`Domain checkpoint cp1 created from '${xml1}'\n`);
    expect(await ok('checkpoint-redefine', 'vm1', xml2)).toBe(`Domain checkpoint cp2 created from '${xml2}'\n`);
    expect(await ok('checkpoint-list', 'vm1', '--parent')).toBe(before);
    expect(await ok('checkpoint-dumpxml', 'vm1', 'cp1')).toBe(readFileSync(xml1, 'utf8'));
    // The newest redefined checkpoint is current again: the next one hangs below it.
    await ok('checkpoint-create-as', 'vm1', 'cp3');
    expect(await ok('checkpoint-list', 'vm1', '--tree')).toBe('cp1\n  |\n  +- cp2\n      |\n      +- cp3\n        \n\n');
    // Redefining a checkpoint whose bitmap is gone is refused, naming the bitmap.
    await ok('checkpoint-delete', 'vm1', 'cp3');
    const xml3 = join(home, 'cp3.xml');
    await writeFile(xml3, '<domaincheckpoint><name>cp3</name><creationTime>1</creationTime><disks><disk name="vda" checkpoint="bitmap"/></disks></domaincheckpoint>');
    const refused = await fleece('checkpoint-create', 'vm1', xml3, '--redefine', '--qmp', fixture.qemu.extraQmpPaths[0]!);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toContain('no bitmap cp3');
  }, 60_000);

  test('bad input exits 2 with a message naming the thing and the fix', async () => {
    const qmp = fixture.qemu.extraQmpPaths[0]!;
    const unknown = await fleece('checkpoint-list', 'nosuchvm');
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toMatch(/VM 'nosuchvm' is not registered.*--qmp/);

    const missingSocket = await fleece('checkpoint-list', 'vm1', '--qmp', join(home, 'nope.sock'));
    expect(missingSocket.code).toBe(2);
    expect(missingSocket.stderr).toContain(`the QMP socket '${join(home, 'nope.sock')}' of VM 'vm1' does not exist`);

    const missingFile = await fleece('checkpoint-create', 'vm1', join(home, 'absent.xml'), '--qmp', qmp);
    expect(missingFile.code).toBe(2);
    expect(missingFile.stderr).toContain(`cannot read the checkpoint XML file '${join(home, 'absent.xml')}': no such file; give the path of a <domaincheckpoint> XML file`);

    const bad = join(home, 'bad.xml');
    await writeFile(bad, '<domaincheckpoint><name>cp1</name><disks><disk name="vda" checkpoint="maybe"/></disks>');
    const malformed = await fleece('checkpoint-create', 'vm1', bad, '--qmp', qmp);
    expect(malformed.code).toBe(2);
    expect(malformed.stderr).toContain(`the checkpoint XML file '${bad}' is not valid`);

    const badName = await fleece('checkpoint-create-as', 'vm1', 'backup-x', '--qmp', qmp);
    expect(badName.code).toBe(2);
    expect(badName.stderr).toContain("'backup-x'");

    const exclusive = await fleece('checkpoint-list', 'vm1', '--tree', '--name', '--qmp', qmp);
    expect(exclusive.code).toBe(2);
    expect(exclusive.stderr).toContain('Options --tree and --name are mutually exclusive');

    const noCheckpoint = await fleece('checkpoint-dumpxml', 'vm1', 'ghost', '--qmp', qmp);
    expect(noCheckpoint.code).toBe(1);
    expect(noCheckpoint.stderr).toContain("checkpoint 'ghost' does not exist");
    // Nothing was created by any of these.
    expect(await bitmaps()).toEqual([]);
  }, 60_000);
});
