// VM-level restore on a real repository in a temp dir: every disk of a group byte for byte, the refusals that come
// before anything is written, the undo of a failed disk, and defining the domain through a fake libvirt.
import { readFileSync } from 'node:fs';
import { mkdir, readFile, readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import { restoreGroup, type DomainDefiner } from '../../../src/app/restore-group.js';
import { openRepository, type Repository } from '../../../src/repository/index.js';
import { ConflictError, FleeceError, IntegrityError, InvalidInputError, NotFoundError } from '../../../src/util/errors.js';
import { makeTempDir, removeTempDir } from '../../harness/temp-dir.js';
import { allocatedExtents, mixedDisk, sha } from '../repository/disk-images.js';

const DOMAIN_XML = readFileSync(join(process.cwd(), 'fixtures', 'libvirt-xml', 'domain-live-two-disks.xml'), 'utf8');
const GROUP = '5b0f2a4e-7c1d-4e8f-9a2b-3c4d5e6f7a8b';
const SIZES = { vda: 3 * 1024 * 1024 + 4096, vdb: 1024 * 1024 + 512 };

let dir: string;
let repoDir: string;
let repo: Repository;
const disks: Record<string, Buffer> = {};
const backupIds: Record<string, string> = {};

async function backup(disk: string, data: Buffer, options: { groupId: string; guestConfig?: boolean; vm?: string }): Promise<string> {
  const writer = await repo.startBackup({
    vm: options.vm ?? 'web1', disk, volumeId: `vol-${options.vm ?? 'web1'}-${disk}`, size: data.length, groupId: options.groupId, workers: 1, chunkSize: 512 * 1024,
    ...(options.guestConfig !== false ? { guestConfig: { format: 'libvirt-domain-xml' as const, text: DOMAIN_XML } } : {}),
  });
  for (const e of allocatedExtents(data)) await writer.write(e);
  return (await writer.finish()).backupId;
}

/** A fake libvirt: the domains it has, and every call in order (into `log`, shared with the restore's hooks). */
function fakeLibvirt(log: string[], options: { existing?: string[]; defineError?: Error } = {}) {
  const defined: string[] = [];
  const open = async (uri: string): Promise<DomainDefiner> => {
    log.push(`open ${uri}`);
    return {
      domainExists: async (name) => { log.push(`exists ${name}`); return (options.existing ?? []).includes(name); },
      defineXml: async (xml) => {
        log.push('define');
        if (options.defineError) throw options.defineError;
        defined.push(xml);
        return /<name>([^<]*)<\/name>/.exec(xml)![1]!;
      },
      close: async () => { log.push('close'); },
    };
  };
  return { open, defined };
}

beforeAll(async () => {
  dir = await makeTempDir('restore-group');
  repoDir = join(dir, 'repo');
  repo = await openRepository(repoDir);
  for (const [disk, size] of Object.entries(SIZES)) {
    disks[disk] = mixedDisk(size, size);
    backupIds[disk] = await backup(disk, disks[disk]!, { groupId: GROUP });
  }
});

afterAll(async () => {
  await removeTempDir(dir);
});

describe('restoreGroup', () => {
  it('restores every disk of the group byte for byte, one after another with progress', async () => {
    const out = join(dir, 'raw');
    const events: string[] = [];
    const result = await restoreGroup(repoDir, GROUP, out, { format: 'raw' }, {
      onDisk: ({ disk, index, count }) => events.push(`disk ${disk} ${index + 1}/${count}`),
      onProgress: (disk, done, total) => { if (done === total) events.push(`done ${disk}`); },
    });
    expect(events.filter((e, i) => e !== events[i - 1])).toEqual(['disk vda 1/2', 'done vda', 'disk vdb 2/2', 'done vdb']);
    expect(result).toMatchObject({ groupId: GROUP, vm: 'web1', outDir: out, warnings: [] });
    expect(result.defined).toBeUndefined();
    expect(result.disks.map((d) => [d.disk, d.backupId, d.out, d.format, d.summary.verified])).toEqual([
      ['vda', backupIds.vda, join(out, 'vda.raw'), 'raw', true],
      ['vdb', backupIds.vdb, join(out, 'vdb.raw'), 'raw', true],
    ]);
    for (const disk of ['vda', 'vdb']) expect(sha(await readFile(join(out, `${disk}.raw`)))).toBe(sha(disks[disk]!));
    expect((await readdir(out)).sort()).toEqual(['vda.raw', 'vdb.raw']);
  });

  it('restores to qcow2 by default', async () => {
    const version = await execa('qemu-img', ['--version']).catch(() => undefined);
    if (!version) return; // qemu-img (qemu-utils) is needed for qcow2 output
    const out = join(dir, 'qcow2');
    const result = await restoreGroup(repo, GROUP, out);
    expect(result.disks.map((d) => d.out)).toEqual([join(out, 'vda.qcow2'), join(out, 'vdb.qcow2')]);
    for (const disk of ['vda', 'vdb']) {
      const info = JSON.parse((await execa('qemu-img', ['info', '--output=json', join(out, `${disk}.qcow2`)])).stdout) as { format: string };
      expect(info.format).toBe('qcow2');
      await execa('qemu-img', ['convert', '-f', 'qcow2', '-O', 'raw', join(out, `${disk}.qcow2`), join(out, `${disk}.check`)]);
      expect(sha(await readFile(join(out, `${disk}.check`)))).toBe(sha(disks[disk]!));
    }
  });

  it('names a missing group and how to list the groups', async () => {
    const call = restoreGroup(repoDir, 'no-such-group', join(dir, 'missing'), { format: 'raw' });
    await expect(call).rejects.toThrow(NotFoundError);
    await expect(restoreGroup(repoDir, 'no-such-group', join(dir, 'missing'))).rejects.toThrow(
      `the repository ${repoDir} has no backup group 'no-such-group'; list the backups and their groups with \`fleece list --repo ${repoDir}\``,
    );
    await expect(readdir(join(dir, 'missing'))).rejects.toThrow(/ENOENT/);
  });

  it('refuses existing images before restoring any disk, and replaces them with overwrite', async () => {
    const out = join(dir, 'existing');
    await mkdir(out);
    await writeFile(join(out, 'vdb.raw'), 'old');
    await expect(restoreGroup(repoDir, GROUP, out, { format: 'raw' })).rejects.toThrow(ConflictError);
    await expect(restoreGroup(repoDir, GROUP, out, { format: 'raw' })).rejects.toThrow(`the restore target ${join(out, 'vdb.raw')} already exists; choose another --out-dir, or pass --force`);
    expect(await readdir(out)).toEqual(['vdb.raw']);
    await restoreGroup(repoDir, GROUP, out, { format: 'raw', overwrite: true });
    expect(sha(await readFile(join(out, 'vdb.raw')))).toBe(sha(disks.vdb!));
  });

  it('removes the images it made when a later disk fails, and keeps the original error', async () => {
    const group = 'c0ffee00-0000-4000-8000-000000000001';
    await backup('vda', disks.vda!, { groupId: group, vm: 'web2' });
    const vdb = await backup('vdb', disks.vdb!, { groupId: group, vm: 'web2' });
    const { record, metadata } = await repo.load(vdb);
    await repo.store.put(record.container, metadata.objects[0]!.name, Buffer.from('damaged'));
    const out = join(dir, 'damaged');
    const restored: string[] = [];
    const call = restoreGroup(repoDir, group, out, { format: 'raw' }, { onDisk: ({ disk }) => restored.push(disk) });
    await expect(call).rejects.toThrow(IntegrityError);
    expect(restored).toEqual(['vda', 'vdb']);
    await expect(readdir(out)).rejects.toThrow(/ENOENT/); // vda.raw removed, and the directory it created
  });

  describe('with define', () => {
    it('checks the name, restores, then defines the rewritten domain XML on the restored images', async () => {
      const out = join(dir, 'define');
      const log: string[] = [];
      const libvirt = fakeLibvirt(log);
      const result = await restoreGroup(repoDir, GROUP, out, { format: 'raw', define: { name: 'web1-restored', connect: 'test:///x', openDefiner: libvirt.open } }, {
        onDisk: ({ disk }) => log.push(`restore ${disk}`),
      });
      expect(log).toEqual([
        'open test:///x', 'exists web1-restored', 'close', 'restore vda', 'restore vdb', 'open test:///x', 'exists web1-restored', 'define', 'close',
      ]);
      expect(libvirt.defined).toHaveLength(1);
      const xml = libvirt.defined[0]!;
      expect(result.defined).toEqual({ name: 'web1-restored', connect: 'test:///x', xml });
      expect(xml).toContain('<name>web1-restored</name>');
      expect(xml).not.toMatch(/<uuid>|<mac /);
      expect(xml).toContain(`<driver name='qemu' type='raw' cache='none' discard='unmap'/>\n      <source file='${join(out, 'vda.raw')}'/>\n      <target dev='vda' bus='virtio'/>`);
      expect(xml).toContain(`<driver name='qemu' type='raw' io='native' cache='none'/>\n      <source file='${join(out, 'vdb.raw')}'/>\n      <target dev='vdb' bus='virtio'/>`);
      expect(xml).toContain("<source file='/var/lib/libvirt/images/debian-12.2.0-amd64-netinst.iso'/>");
      for (const disk of ['vda', 'vdb']) expect(sha(await readFile(join(out, `${disk}.raw`)))).toBe(sha(disks[disk]!));
    });

    it('refuses a name libvirt already has before restoring anything', async () => {
      const out = join(dir, 'clash');
      const log: string[] = [];
      const libvirt = fakeLibvirt(log, { existing: ['web1'] });
      const call = restoreGroup(repoDir, GROUP, out, { format: 'raw', define: { name: 'web1', connect: 'test:///x', openDefiner: libvirt.open } }, {
        onDisk: ({ disk }) => log.push(`restore ${disk}`),
      });
      await expect(call).rejects.toThrow(ConflictError);
      await expect(call).rejects.toThrow("libvirt at test:///x already has a domain 'web1'");
      expect(log.slice(0, 3)).toEqual(['open test:///x', 'exists web1', 'close']);
      expect(log).not.toContain('restore vda');
      await expect(readdir(out)).rejects.toThrow(/ENOENT/);
    });

    it('refuses a group without domain XML, and a domain XML that cannot be rewritten, before restoring anything', async () => {
      const group = 'c0ffee00-0000-4000-8000-000000000002';
      await backup('vda', disks.vda!, { groupId: group, vm: 'bare', guestConfig: false });
      const log: string[] = [];
      const libvirt = fakeLibvirt(log);
      const out = join(dir, 'no-xml');
      const call = restoreGroup(repoDir, group, out, { format: 'raw', define: { name: 'bare2', connect: 'test:///x', openDefiner: libvirt.open } });
      await expect(call).rejects.toThrow(InvalidInputError);
      await expect(call).rejects.toThrow(`the backups of group '${group}' carry no domain XML`);
      const badName = restoreGroup(repoDir, GROUP, out, { format: 'raw', define: { name: 'a/b', connect: 'test:///x', openDefiner: libvirt.open } });
      await expect(badName).rejects.toThrow(InvalidInputError);
      expect(log).toEqual([]);
      await expect(readdir(out)).rejects.toThrow(/ENOENT/);
    });

    it('keeps the restored images and writes the XML beside them when defining fails', async () => {
      const out = join(dir, 'define-fails');
      const log: string[] = [];
      const libvirt = fakeLibvirt(log, { defineError: new InvalidInputError('XML error: unsupported configuration') });
      const call = restoreGroup(repoDir, GROUP, out, { format: 'raw', define: { name: 'web1-copy', connect: 'test:///x', openDefiner: libvirt.open } });
      await expect(call).rejects.toThrow(FleeceError);
      const error = await call.then(() => undefined, (e: unknown) => e as FleeceError);
      if (!error) throw new Error('the restore did not fail');
      expect(error.code).toBe('INVALID_INPUT');
      expect(error.message).toContain(`the disks of group '${GROUP}' were restored to ${out}, but defining domain 'web1-copy' failed: XML error: unsupported configuration`);
      expect(error.message).toContain(`virsh -c 'test:///x' define ${join(out, 'web1-copy.xml')}`);
      expect(log.at(-1)).toBe('close');
      expect((await readdir(out)).sort()).toEqual(['vda.raw', 'vdb.raw', 'web1-copy.xml']);
      expect(await readFile(join(out, 'web1-copy.xml'), 'utf8')).toContain('<name>web1-copy</name>');
    });

    it('warns when the domain has a writable disk the group did not back up', async () => {
      const group = 'c0ffee00-0000-4000-8000-000000000003';
      await backup('vda', disks.vda!, { groupId: group, vm: 'web3' });
      const libvirt = fakeLibvirt([]);
      const result = await restoreGroup(repoDir, group, join(dir, 'one-disk'), { format: 'raw', define: { name: 'web3-copy', connect: 'test:///x', openDefiner: libvirt.open } });
      expect(result.disks.map((d) => d.disk)).toEqual(['vda']);
      expect(result.warnings).toEqual([
        "disk vdb was not in the backup: domain 'web3-copy' still uses /var/lib/libvirt/images/web1-data.qcow2, the original VM's image; do not run both at once",
      ]);
      expect(libvirt.defined[0]).toContain("<source file='/var/lib/libvirt/images/web1-data.qcow2'/>");
    });
  });
});
