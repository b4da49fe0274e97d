// Every fixture under fixtures/libvirt-xml is tested: valid ones round-trip, invalid ones fail with their message.
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { parseBackupXml, formatBackupXml, resolveBackupDefinition, type ResolveBackupContext } from '../../../../src/backup/definition/index.js';
import { parseCheckpointXml, formatCheckpointXml } from '../../../../src/checkpoint/checkpoint-xml.js';
import { alignCheckpointDisks } from '../../../../src/checkpoint/model.js';
import { InvalidInputError } from '../../../../src/util/errors.js';

const root = join(process.cwd(), 'fixtures', 'libvirt-xml');
const validDir = join(root, 'valid');
const invalidDir = join(root, 'invalid');
const read = (dir: string, file: string): string => readFileSync(join(dir, file), 'utf8');

const vmDisks = [
  { target: 'vda', format: 'qcow2', sizeBytes: 1 << 30 },
  { target: 'vdb', format: 'qcow2', sizeBytes: 2 << 30 },
  { target: 'vdc', format: 'raw', sizeBytes: 512 << 20 },
];
const strictContext: ResolveBackupContext = {
  disks: vmDisks,
  checkpoints: ['cp0', 'cp1', 'cp2'],
  exists: (path) => path.startsWith('/exists/') || path.startsWith('/dev/'),
  reuseExternal: false,
};
const defaultsContext: ResolveBackupContext = {
  ...strictContext,
  defaultTargetDir: '/var/lib/fleece/targets',
  defaultScratchDir: '/var/lib/fleece/scratch',
  defaultSocket: '/run/fleece/default.sock',
};
const checkpointVmDisks = vmDisks.map((disk) => ({ name: disk.target, format: disk.format }));

const validFiles = readdirSync(validDir).filter((file) => file.endsWith('.xml')).sort();
const invalidFiles = readdirSync(invalidDir).filter((file) => file.endsWith('.xml')).sort();
const expected = JSON.parse(read(invalidDir, 'expected.json')) as Record<string, string>;

describe('valid libvirt XML fixtures', () => {
  it('exist in both kinds', () => {
    expect(validFiles.filter((f) => f.startsWith('backup-')).length).toBeGreaterThanOrEqual(8);
    expect(validFiles.filter((f) => f.startsWith('checkpoint-')).length).toBeGreaterThanOrEqual(3);
  });

  it.each(validFiles)('%s parses, round-trips and resolves', (file) => {
    const xml = read(validDir, file);
    if (file.startsWith('checkpoint-')) {
      const cp = parseCheckpointXml(xml);
      const again = parseCheckpointXml(formatCheckpointXml(cp));
      expect(again).toEqual(cp);
      // The output is stable: formatting the re-parsed value gives the same text.
      expect(formatCheckpointXml(again)).toBe(formatCheckpointXml(cp));
      if (file.startsWith('checkpoint-virsh-')) expect(formatCheckpointXml(cp)).toBe(xml);
      return;
    }
    expect(file.startsWith('backup-')).toBe(true);
    const def = parseBackupXml(xml);
    const text = formatBackupXml(def);
    expect(parseBackupXml(text)).toEqual(def);
    expect(formatBackupXml(parseBackupXml(text))).toBe(text);
    const resolved = resolveBackupDefinition(def, defaultsContext);
    expect(resolved.disks.map((disk) => disk.name)).toEqual(['vda', 'vdb', 'vdc']);
  });
});

describe('invalid libvirt XML fixtures', () => {
  it('have an expected message each, and there are at least 12', () => {
    expect(invalidFiles.length).toBeGreaterThanOrEqual(12);
    expect(Object.keys(expected).sort()).toEqual(invalidFiles);
  });

  it.each(invalidFiles)('%s is refused with its message', (file) => {
    const xml = read(invalidDir, file);
    const attempt = (): unknown =>
      file.startsWith('checkpoint-')
        ? alignCheckpointDisks(parseCheckpointXml(xml), checkpointVmDisks)
        : resolveBackupDefinition(parseBackupXml(xml), strictContext);
    let error: unknown;
    try {
      attempt();
    } catch (caught) {
      error = caught;
    }
    expect(error).toBeInstanceOf(InvalidInputError);
    expect((error as Error).message).toContain(expected[file]);
    // Every message says what to do about it.
    expect((error as InvalidInputError).hint).toBeTruthy();
  });
});
