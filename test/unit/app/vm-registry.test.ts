import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { VmRegistry } from '../../../src/app/vm-registry.js';
import { resolveStateDir } from '../../../src/app/paths.js';
import { makeTempDir, removeTempDir } from '../../harness/temp-dir.js';

describe('VmRegistry', () => {
  let dir: string;
  beforeEach(async () => { dir = await makeTempDir('registry'); });
  afterEach(async () => { await removeTempDir(dir); });

  it('adds, lists, gets and removes VMs, and the file survives a new registry object', async () => {
    await new VmRegistry(dir).add({ name: 'vm1', qmp: '/run/vm1.qmp' });
    await new VmRegistry(dir).add({ name: 'vm2', qmp: '/run/vm2.qmp', guestAgent: '/run/vm2.qga' });
    const registry = new VmRegistry(dir);
    expect((await registry.list()).map((vm) => vm.name)).toEqual(['vm1', 'vm2']);
    expect(await registry.get('vm2')).toEqual({ name: 'vm2', qmp: '/run/vm2.qmp', guestAgent: '/run/vm2.qga' });
    await registry.remove('vm1');
    expect((await registry.list()).map((vm) => vm.name)).toEqual(['vm2']);
  });

  it('refuses duplicates, bad names, unknown VMs and a corrupt file with messages that say what to do', async () => {
    const registry = new VmRegistry(dir);
    await registry.add({ name: 'vm1', qmp: '/a' });
    await expect(registry.add({ name: 'vm1', qmp: '/b' })).rejects.toThrow("VM 'vm1' is already registered; remove it first");
    await expect(registry.add({ name: '../etc', qmp: '/b' })).rejects.toThrow("VM name '../etc' is not valid");
    await expect(registry.get('nope')).rejects.toThrow("VM 'nope' is not registered; register it with `fleece vm add nope");
    await writeFile(join(dir, 'vms.json'), '{ not json');
    await expect(registry.list()).rejects.toThrow(`the VM registry ${join(dir, 'vms.json')} is not valid JSON`);
  });

  it('takes the state directory from the flag, then FLEECE_STATE_DIR, then /var/lib/fleece', () => {
    expect(resolveStateDir('/x', { FLEECE_STATE_DIR: '/y' })).toBe('/x');
    expect(resolveStateDir(undefined, { FLEECE_STATE_DIR: '/y' })).toBe('/y');
    expect(resolveStateDir(undefined, {})).toBe('/var/lib/fleece');
  });
});
