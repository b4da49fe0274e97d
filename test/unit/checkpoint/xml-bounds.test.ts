// Hostile XML: a DOCTYPE with entities (billion laughs), an undefined entity, a document over the size limit; the
// five predefined entities still read as before.
import { MAX_XML_BYTES, parseXmlDocument } from '../../../src/checkpoint/checkpoint-xml.js';
import { parseBackupXml } from '../../../src/backup/definition/parse-backup-xml.js';

const laughs = `<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>
<domainbackup mode="push"><disks><disk name="vda" type="file"><target file="/tmp/&lol2;.qcow2"/></disk></disks></domainbackup>`;

it('refuses a DOCTYPE, naming its line', () => {
  expect(() => parseBackupXml(laughs)).toThrow(/backup XML has a DOCTYPE declaration \(line 2\): fleece reads no DTD/);
});

it('refuses an undefined entity instead of keeping it literally', () => {
  const xml = '<domainbackup mode="push"><disks><disk name="vda" type="file"><target file="/tmp/&lol9;.qcow2"/></disk></disks></domainbackup>';
  expect(() => parseBackupXml(xml)).toThrow(/refers to the entity '&lol9;'/);
});

it('still reads the predefined entities; refuses character references the parser would keep literally', () => {
  const root = parseXmlDocument('<a b="x&amp;y&lt;&quot;"/>', 'a', 'test XML');
  expect(root.attributes.b).toBe('x&y<"');
  expect(() => parseXmlDocument('<a b="&#65;"/>', 'a', 'test XML')).toThrow(/entity '&#65;'/);
});

it('refuses a document over the size limit before parsing it', () => {
  const big = `<domainbackup>${' '.repeat(MAX_XML_BYTES)}</domainbackup>`;
  expect(() => parseBackupXml(big)).toThrow(/backup XML is larger than 10 MiB/);
});
