// Parses libvirt's backup XML (<domainbackup>) into a BackupDefinition, refusing anything it would have to guess.
import {
  checkAllowed,
  describeElement,
  enumAttribute,
  parseXmlDocument,
  singleChild,
  stringAttribute,
  type XmlElement,
} from '../../checkpoint/checkpoint-xml.js';
import { validateCheckpointName } from '../../checkpoint/model.js';
import { InvalidInputError } from '../../util/errors.js';
import type { BackupDefinition, BackupDiskDefinition, BackupMode, BackupServer } from './types.js';

const MODES = ['push', 'pull'] as const;

/**
 * Parses backup XML. Structure and values are checked here (mode, attributes, element placement, formats, server);
 * whether disks and checkpoints exist is checked by resolveBackupDefinition. A missing `mode` means push, as in libvirt.
 * @throws InvalidInputError naming the element or attribute (and its line) and the fix.
 */
export function parseBackupXml(xml: string): BackupDefinition {
  const root = parseXmlDocument(xml, 'domainbackup', 'backup XML');
  const where = describeElement(root, ['mode']);
  checkAllowed(root, ['mode'], ['incremental', 'server', 'disks'], where);
  const mode: BackupMode = enumAttribute(root, 'mode', MODES, `<domainbackup>${root.line ? ` (line ${root.line})` : ''}`) ?? 'push';
  const def: BackupDefinition = { mode, disks: [] };

  const incremental = singleChild(root, 'incremental', where);
  if (incremental !== undefined) {
    checkAllowed(incremental, [], []);
    validateCheckpointName(incremental.text, `${describeElement(incremental)}: checkpoint name`);
    def.incremental = incremental.text;
  }

  const server = singleChild(root, 'server', where);
  if (server !== undefined) {
    if (mode !== 'pull') {
      throw new InvalidInputError(`${describeElement(server)}: <server> is only used in pull mode`, {
        hint: "remove <server> or use <domainbackup mode='pull'>",
      });
    }
    def.server = parseServer(server);
  }

  const disks = singleChild(root, 'disks', where);
  if (disks !== undefined) {
    checkAllowed(disks, [], ['disk']);
    const seen = new Set<string>();
    for (const disk of disks.children) {
      const parsed = parseDisk(disk, mode);
      if (seen.has(parsed.name)) {
        throw new InvalidInputError(`${describeElement(disk)}: disk '${parsed.name}' is listed twice`, { hint: 'keep one <disk> element per disk' });
      }
      seen.add(parsed.name);
      def.disks.push(parsed);
    }
  }
  return def;
}

function parseServer(server: XmlElement): BackupServer {
  const where = describeElement(server, ['transport']);
  checkAllowed(server, ['transport', 'name', 'port', 'socket', 'tls'], [], where);
  // libvirt's default transport is tcp.
  const transport = enumAttribute(server, 'transport', ['tcp', 'unix'] as const, where) ?? 'tcp';
  if (transport === 'unix') {
    for (const attr of ['name', 'port', 'tls']) {
      if (server.attributes[attr] !== undefined) {
        throw new InvalidInputError(`${where}: ${attr}= is for transport='tcp'`, { hint: `remove ${attr}= or use transport='tcp'` });
      }
    }
    const socket = stringAttribute(server, 'socket', where);
    if (socket === undefined) {
      throw new InvalidInputError(`${where}: socket= is missing`, { hint: "add socket='/run/fleece/vm.sock' (an absolute path)" });
    }
    if (!socket.startsWith('/')) {
      throw new InvalidInputError(`${where}: socket='${socket}' is not an absolute path`, { hint: 'give the socket as an absolute path' });
    }
    return { transport, socket };
  }
  if (server.attributes.socket !== undefined) {
    throw new InvalidInputError(`${where}: socket= is for transport='unix'`, { hint: "remove socket= or use transport='unix'" });
  }
  const name = stringAttribute(server, 'name', where);
  if (name === undefined) {
    throw new InvalidInputError(`${where}: name= is missing`, { hint: "add the address to listen on, e.g. name='localhost'" });
  }
  const result: BackupServer = { transport, name };
  const port = server.attributes.port;
  if (port !== undefined) {
    if (!/^\d{1,5}$/.test(port) || Number(port) < 1 || Number(port) > 65535) {
      throw new InvalidInputError(`${where}: port='${port}' is not a TCP port`, { hint: "use a number from 1 to 65535, e.g. port='10809'" });
    }
    result.port = Number(port);
  }
  const tls = enumAttribute(server, 'tls', ['yes', 'no'] as const, where);
  if (tls !== undefined) result.tls = tls === 'yes';
  return result;
}

function parseDisk(disk: XmlElement, mode: BackupMode): BackupDiskDefinition {
  const where = describeElement(disk);
  checkAllowed(disk, ['name', 'backup', 'backupmode', 'incremental', 'type', 'exportname', 'exportbitmap'], ['target', 'scratch', 'driver'], where);
  const name = stringAttribute(disk, 'name', where);
  if (name === undefined) throw new InvalidInputError(`${where}: name= is missing`, { hint: "name the VM disk, e.g. <disk name='vda'>" });
  const out: BackupDiskDefinition = { name };

  const backup = enumAttribute(disk, 'backup', ['yes', 'no'] as const, where);
  if (backup !== undefined) out.backup = backup === 'yes';
  if (backup === 'no') {
    const extra = [...Object.keys(disk.attributes).filter((key) => key !== 'name' && key !== 'backup'), ...disk.children.map((child) => `<${child.name}>`)];
    if (extra.length > 0) {
      throw new InvalidInputError(`${where}: backup='no' but ${extra.join(', ')} given`, { hint: `remove ${extra.join(', ')} or use backup='yes'` });
    }
    return out;
  }

  const backupMode = enumAttribute(disk, 'backupmode', ['full', 'incremental'] as const, where);
  if (backupMode !== undefined) out.backupMode = backupMode;
  const incremental = stringAttribute(disk, 'incremental', where);
  if (incremental !== undefined) {
    if (backupMode === 'full') {
      throw new InvalidInputError(`${where}: incremental='${incremental}' contradicts backupmode='full'`, { hint: "remove one of them" });
    }
    validateCheckpointName(incremental, `${where}: incremental checkpoint name`);
    out.incremental = incremental;
  }

  for (const attr of ['exportname', 'exportbitmap'] as const) {
    const value = stringAttribute(disk, attr, where);
    if (value === undefined) continue;
    if (mode !== 'pull') throw new InvalidInputError(`${where}: ${attr}= is only used in pull mode`, { hint: `remove ${attr}=` });
    if (attr === 'exportname') out.exportName = value;
    else out.exportBitmap = value;
  }

  const type = enumAttribute(disk, 'type', ['file', 'block'] as const, where);
  if (type !== undefined) out.type = type;

  const storageName = mode === 'push' ? 'target' : 'scratch';
  const wrongName = mode === 'push' ? 'scratch' : 'target';
  const wrong = singleChild(disk, wrongName, where);
  if (wrong !== undefined) {
    throw new InvalidInputError(`${where}: <${wrongName}>${wrong.line ? ` (line ${wrong.line})` : ''} is not used in ${mode} mode`, {
      hint: `use <${storageName}> in ${mode} mode`,
    });
  }
  const storage = singleChild(disk, storageName, where);
  if (storage !== undefined) {
    const storageWhere = `${where} <${storageName}>`;
    checkAllowed(storage, ['file', 'dev', 'index'], [], storageWhere);
    const file = stringAttribute(storage, 'file', storageWhere);
    const dev = stringAttribute(storage, 'dev', storageWhere);
    if (file !== undefined && dev !== undefined) {
      throw new InvalidInputError(`${storageWhere}: both file= and dev= are given`, { hint: "use file= with type='file', dev= with type='block'" });
    }
    const path = file ?? dev;
    if (path === undefined) {
      throw new InvalidInputError(`${storageWhere}: no path given`, { hint: `add file='/path/image.qcow2' (or dev='/dev/…' with type='block')` });
    }
    const pathType = file !== undefined ? 'file' : 'block';
    if (out.type !== undefined && out.type !== pathType) {
      throw new InvalidInputError(`${storageWhere}: ${file !== undefined ? 'file=' : 'dev='} does not match type='${out.type}'`, {
        hint: out.type === 'file' ? "use file= for type='file'" : "use dev= for type='block'",
      });
    }
    if (!path.startsWith('/')) {
      throw new InvalidInputError(`${storageWhere}: '${path}' is not an absolute path`, { hint: 'give an absolute path' });
    }
    out.type = pathType;
    out.path = path;
    const index = storage.attributes.index;
    if (index !== undefined) {
      if (!/^\d{1,9}$/.test(index)) throw new InvalidInputError(`${storageWhere}: index='${index}' is not a number`, { hint: 'remove index= (it is output only)' });
      out.index = Number(index);
    }
  }

  const driver = singleChild(disk, 'driver', where);
  if (driver !== undefined) {
    const driverWhere = `${where} <driver>`;
    checkAllowed(driver, ['type'], [], driverWhere);
    const format = enumAttribute(driver, 'type', ['qcow2', 'raw'] as const, driverWhere);
    if (format === undefined) throw new InvalidInputError(`${driverWhere}: type= is missing`, { hint: "use <driver type='qcow2'/> or <driver type='raw'/>" });
    out.format = format;
  }
  return out;
}
