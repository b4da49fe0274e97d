// Checkpoint XML in libvirt's output shape, name validation, line numbers in errors, and disk alignment.
import { formatCheckpointXml, parseCheckpointXml } from '../../../src/checkpoint/checkpoint-xml.js';
import { alignCheckpointDisks, validateCheckpointName } from '../../../src/checkpoint/model.js';
import { InvalidInputError } from '../../../src/util/errors.js';

describe('checkpoint XML', () => {
  it('formats like virsh checkpoint-dumpxml, with sizes when asked', () => {
    const xml = formatCheckpointXml(
      { name: 'cp1', parent: 'cp0', creationTime: 1700000010, disks: [{ name: 'vda', checkpoint: 'bitmap', bitmap: 'cp1' }, { name: 'vdb', checkpoint: 'no' }] },
      { sizes: { vda: 65536 } },
    );
    expect(xml).toBe(
      "<domaincheckpoint>\n  <name>cp1</name>\n  <parent>\n    <name>cp0</name>\n  </parent>\n  <creationTime>1700000010</creationTime>\n  <disks>\n    <disk name='vda' checkpoint='bitmap' bitmap='cp1' size='65536'/>\n    <disk name='vdb' checkpoint='no'/>\n  </disks>\n</domaincheckpoint>\n",
    );
    const parsed = parseCheckpointXml(xml);
    expect(parsed.disks).toEqual([{ name: 'vda', checkpoint: 'bitmap', bitmap: 'cp1' }, { name: 'vdb', checkpoint: 'no' }]);
  });

  it('defaults a disk to a bitmap named after the checkpoint, and leaves the creation time unset', () => {
    expect(parseCheckpointXml("<domaincheckpoint><name>cp3</name><disks><disk name='vda'/></disks></domaincheckpoint>")).toEqual({
      name: 'cp3',
      disks: [{ name: 'vda', checkpoint: 'bitmap', bitmap: 'cp3' }],
    });
  });

  it('names the line of the offending element', () => {
    expect(() => parseCheckpointXml("<domaincheckpoint>\n  <name>cp1</name>\n  <!-- <disk name='x'/> -->\n  <disks>\n    <disk name='vda' bitmap='a/b'/>\n  </disks>\n</domaincheckpoint>")).toThrow(
      "<disk name='vda'> (line 5): bitmap name 'a/b' contains '/'",
    );
    expect(() => parseCheckpointXml('<domaincheckpoint>\n<name>cp1</name>\n<colour/></domaincheckpoint>')).toThrow('unexpected element <colour> (line 3)');
    expect(() => parseCheckpointXml("<domaincheckpoint><name>a</name><disks><disk name='vda' checkpoint='no' bitmap='x'/></disks></domaincheckpoint>")).toThrow(
      "bitmap='x' is set but checkpoint='no'",
    );
  });

  it.each(['', 'a/b', '.x', '-x', 'backup-vda', 'sp ace', 'x'.repeat(201)])('refuses the name %j', (name) => {
    expect(() => validateCheckpointName(name)).toThrow(InvalidInputError);
  });

  it.each(['cp0', '1700000000', 'nightly.2024-01-01_00:00', 'a+b@c', 'x'.repeat(200)])('accepts the name %j', (name) => {
    expect(() => validateCheckpointName(name)).not.toThrow();
  });
});

describe('alignCheckpointDisks', () => {
  const vm = [
    { name: 'vda', format: 'qcow2' },
    { name: 'vdb', format: 'qcow2' },
    { name: 'vdc', format: 'raw' },
  ];
  it('gives every qcow2 disk a bitmap when no disk is listed', () => {
    const def = Object.freeze(parseCheckpointXml('<domaincheckpoint><name>cp1</name></domaincheckpoint>'));
    expect(alignCheckpointDisks(def, vm).disks).toEqual([
      { name: 'vda', checkpoint: 'bitmap', bitmap: 'cp1' },
      { name: 'vdb', checkpoint: 'bitmap', bitmap: 'cp1' },
      { name: 'vdc', checkpoint: 'no' },
    ]);
    expect(def.disks).toEqual([]);
  });

  it('gives unlisted disks checkpoint=no when disks are listed, in VM order', () => {
    const def = parseCheckpointXml("<domaincheckpoint><name>cp1</name><disks><disk name='vdb' bitmap='bm'/><disk name='vdc' checkpoint='no'/></disks></domaincheckpoint>");
    expect(alignCheckpointDisks(def, vm).disks).toEqual([
      { name: 'vda', checkpoint: 'no' },
      { name: 'vdb', checkpoint: 'bitmap', bitmap: 'bm' },
      { name: 'vdc', checkpoint: 'no' },
    ]);
  });
});
