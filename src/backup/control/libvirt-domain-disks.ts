// The disks of a libvirt domain, read from its XML (pure): which ones a backup can take, and why the others not.
import { parseXmlDocument, type XmlElement } from '../../checkpoint/checkpoint-xml.js';

export interface LibvirtDisk {
  /** `<target dev=…>`: vda, sdb. */
  target: string;
  /** `<driver type=…>`: qcow2, raw. */
  format: string;
  /** `file` or `block`, or `network` … */
  type: string;
  /** The image: `<source file=…>` or `<source dev=…>`. */
  path?: string;
}

export interface DomainDisks {
  disks: LibvirtDisk[];
  skipped: { target: string; reason: string }[];
}

const child = (e: XmlElement, name: string) => e.children.find((c) => c.name === name);

/**
 * Splits the domain's disks into those a backup can take and those it skips (cdrom and floppy, read-only, network
 * disks without a qcow2 image, empty sources), each with the reason.
 * @throws InvalidInputError when the XML is not a `<domain>`.
 */
export function domainDisks(xml: string): DomainDisks {
  const domain = parseXmlDocument(xml, 'domain', 'domain XML');
  const devices = child(domain, 'devices');
  const result: DomainDisks = { disks: [], skipped: [] };
  for (const disk of devices?.children.filter((c) => c.name === 'disk') ?? []) {
    const target = child(disk, 'target')?.attributes.dev;
    if (!target) continue;
    const device = disk.attributes.device ?? 'disk';
    const type = disk.attributes.type ?? 'file';
    const format = child(disk, 'driver')?.attributes.type ?? 'raw';
    const source = child(disk, 'source');
    const path = source?.attributes.file ?? source?.attributes.dev ?? source?.attributes.name;
    const skip = (reason: string) => result.skipped.push({ target, reason });
    if (device !== 'disk' && device !== 'lun') skip(`it is a ${device}`);
    else if (child(disk, 'readonly')) skip('it is read-only');
    else if (child(disk, 'transient')) skip('it is transient (its changes are discarded when the domain stops)');
    else if (!source || path === undefined) skip('it has no source image');
    else if (type === 'network' && format !== 'qcow2') skip(`it is a network disk (${source.attributes.protocol ?? 'network'}) without a qcow2 image`);
    else result.disks.push({ target, format, type, ...(path !== undefined ? { path } : {}) });
  }
  return result;
}
