// Writes a BackupDefinition as libvirt backup XML (backup-dumpxml), in libvirt's output style.
import { formatXmlElement, xmlElement, type XmlElement } from '../../checkpoint/checkpoint-xml.js';
import type { BackupDefinition, BackupDiskDefinition, BackupServer } from './types.js';

/** Options of formatBackupXml. */
export interface FormatBackupOptions {
  /** Node index per disk name, written as `index=` on the disk's target or scratch (overrides the definition's). */
  indexes?: Record<string, number>;
}

/**
 * Formats a definition so that parseBackupXml gives it back unchanged. Only what the definition says is written;
 * format a definition from definitionFromResolved() to show every default, as backup-dumpxml does.
 */
export function formatBackupXml(def: BackupDefinition, options: FormatBackupOptions = {}): string {
  const children: XmlElement[] = [];
  if (def.incremental !== undefined) children.push(xmlElement('incremental', {}, def.incremental));
  if (def.server !== undefined) children.push(formatServer(def.server));
  if (def.disks.length > 0) {
    children.push(xmlElement('disks', {}, def.disks.map((disk) => formatDisk(disk, def.mode, options.indexes?.[disk.name]))));
  }
  return formatXmlElement(xmlElement('domainbackup', { mode: def.mode }, children));
}

function formatServer(server: BackupServer): XmlElement {
  if (server.transport === 'unix') return xmlElement('server', { transport: 'unix', socket: server.socket });
  return xmlElement('server', {
    transport: 'tcp',
    name: server.name,
    port: server.port,
    tls: server.tls === undefined ? undefined : server.tls ? 'yes' : 'no',
  });
}

function formatDisk(disk: BackupDiskDefinition, mode: BackupDefinition['mode'], index: number | undefined): XmlElement {
  const attributes = {
    name: disk.name,
    backup: disk.backup === undefined ? undefined : disk.backup ? 'yes' : 'no',
    backupmode: disk.backupMode,
    incremental: disk.incremental,
    type: disk.type,
    exportname: disk.exportName,
    exportbitmap: disk.exportBitmap,
  };
  const children: XmlElement[] = [];
  if (disk.format !== undefined) children.push(xmlElement('driver', { type: disk.format }));
  if (disk.path !== undefined) {
    const pathAttribute = disk.type === 'block' ? 'dev' : 'file';
    children.push(xmlElement(mode === 'push' ? 'target' : 'scratch', { [pathAttribute]: disk.path, index: index ?? disk.index }));
  }
  return xmlElement('disk', attributes, children);
}
