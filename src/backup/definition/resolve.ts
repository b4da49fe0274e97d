// Resolves a backup definition against the VM: every disk accounted for, defaults filled, contradictions refused.
import { join } from 'node:path';
import { TEMPORARY_BITMAP_PREFIX } from '../../checkpoint/model.js';
import { InvalidInputError } from '../../util/errors.js';
import type {
  BackupDefinition,
  BackupDiskDefinition,
  BackupImageFormat,
  IncludedBackupDisk,
  ResolveBackupContext,
  ResolvedBackup,
  ResolvedBackupDisk,
} from './types.js';

const SUFFIX_PATTERN = /^[A-Za-z0-9_][A-Za-z0-9_.+:@-]*$/;

/**
 * Turns a definition into the plan's input, following libvirt's rules (virDomainBackupAlignDisks):
 * - no `<disks>`: every VM disk is backed up; with `<disks>`: listed disks are (unless `backup='no'`), others not;
 * - a disk is incremental when it names a checkpoint or the definition does, unless `backupmode='full'`;
 * - push targets and pull scratch images left out go to `defaultTargetDir` / `defaultScratchDir` as
 *   `<disk>.<fileSuffix>.qcow2` / `<disk>.<fileSuffix>.scratch.qcow2`; images default to qcow2;
 * - pull: `<server>` defaults to `defaultSocket`, a tcp port to `defaultTcpPort`, `tls=` on tcp to yes when TLS
 *   credentials are configured (`tlsConfigured`) and no otherwise; export names default to the disk name, exported
 *   bitmaps to `backup-<disk>`.
 * The definition is not modified; the result shares no objects with it.
 * @throws InvalidInputError naming the element or attribute and the fix, for: an unknown or duplicate disk, an
 * unknown checkpoint, incremental on a disk that cannot hold bitmaps, `backupmode='incremental'` with no
 * checkpoint, a missing target/scratch/server/port with no default, an existing target file without
 * `reuseExternal`, a missing block device, two disks sharing a path or export name, and no disk to back up.
 */
export function resolveBackupDefinition(def: BackupDefinition, context: ResolveBackupContext): ResolvedBackup {
  if (def.mode !== 'push' && def.mode !== 'pull') {
    throw new InvalidInputError(`<domainbackup mode='${String(def.mode)}'>: unknown mode`, { hint: "use mode='push' or mode='pull'" });
  }
  const suffix = context.fileSuffix ?? 'backup';
  if (!SUFFIX_PATTERN.test(suffix)) {
    throw new InvalidInputError(`file name suffix '${suffix}' is not allowed`, { hint: 'use characters from A-Z a-z 0-9 _ . + : @ -' });
  }
  const vmDiskNames = context.disks.map((disk) => disk.target);
  const checkpoints = new Set(context.checkpoints);
  const checkpointList = context.checkpoints.join(', ') || 'none';

  if (def.incremental !== undefined && !checkpoints.has(def.incremental)) {
    throw new InvalidInputError(`<incremental>${def.incremental}</incremental>: no such checkpoint (checkpoints: ${checkpointList})`, {
      hint: 'name an existing checkpoint, or leave <incremental> out for a full backup',
    });
  }

  const listed = new Map<string, BackupDiskDefinition>();
  for (const disk of def.disks) {
    const where = `<disk name='${disk.name}'>`;
    if (!vmDiskNames.includes(disk.name)) {
      throw new InvalidInputError(`${where}: no such disk in the VM (disks: ${vmDiskNames.join(', ') || 'none'})`, {
        hint: 'fix the name or remove the <disk> element',
      });
    }
    if (listed.has(disk.name)) throw new InvalidInputError(`${where}: the disk is listed twice`, { hint: 'keep one <disk> element per disk' });
    listed.set(disk.name, disk);
  }

  const disks: ResolvedBackupDisk[] = context.disks.map((vmDisk): ResolvedBackupDisk => {
    const given = listed.get(vmDisk.target);
    if (given === undefined && def.disks.length > 0) return { name: vmDisk.target, included: false, reason: 'not-listed' };
    if (given?.backup === false) return { name: vmDisk.target, included: false, reason: 'backup-no' };
    return resolveDisk(vmDisk, given, def, context, suffix, checkpoints, checkpointList);
  });

  const included = disks.filter((disk): disk is IncludedBackupDisk => disk.included);
  if (included.length === 0) {
    throw new InvalidInputError(`<disks>: no disk is backed up (VM disks: ${vmDiskNames.join(', ') || 'none'})`, {
      hint: "set backup='yes' on at least one disk, or leave <disks> out to back up every disk",
    });
  }
  const paths = new Map<string, string>();
  const exports = new Map<string, string>();
  for (const disk of included) {
    const other = paths.get(disk.storage.path);
    if (other !== undefined) {
      throw new InvalidInputError(`<disk name='${disk.name}'>: disk '${other}' already uses ${disk.storage.path}`, { hint: 'give each disk its own target or scratch path' });
    }
    paths.set(disk.storage.path, disk.name);
    if (disk.exportName !== undefined) {
      const same = exports.get(disk.exportName);
      if (same !== undefined) {
        throw new InvalidInputError(`<disk name='${disk.name}' exportname='${disk.exportName}'>: disk '${same}' already uses that export name`, {
          hint: 'give each disk its own exportname',
        });
      }
      exports.set(disk.exportName, disk.name);
    }
  }

  const resolved: ResolvedBackup = { mode: def.mode, disks };
  if (def.incremental !== undefined) resolved.incremental = def.incremental;
  if (def.mode === 'pull') resolved.server = resolveServer(def, context);
  else if (def.server !== undefined) {
    throw new InvalidInputError(`<server>: only used in pull mode`, { hint: "remove <server> or use <domainbackup mode='pull'>" });
  }
  return resolved;
}

function resolveDisk(
  vmDisk: ResolveBackupContext['disks'][number],
  given: BackupDiskDefinition | undefined,
  def: BackupDefinition,
  context: ResolveBackupContext,
  suffix: string,
  checkpoints: Set<string>,
  checkpointList: string,
): IncludedBackupDisk {
  const name = vmDisk.target;
  const where = `<disk name='${name}'>`;

  // Incremental or full, and since which checkpoint.
  if (given?.backupMode === 'full' && given.incremental !== undefined) {
    throw new InvalidInputError(`${where}: incremental='${given.incremental}' contradicts backupmode='full'`, { hint: 'remove one of them' });
  }
  if (given?.incremental !== undefined && !checkpoints.has(given.incremental)) {
    throw new InvalidInputError(`<disk name='${name}' incremental='${given.incremental}'>: no such checkpoint (checkpoints: ${checkpointList})`, {
      hint: 'name an existing checkpoint, or use backupmode=\'full\'',
    });
  }
  const incrementalFrom = given?.backupMode === 'full' ? undefined : (given?.incremental ?? def.incremental);
  if (given?.backupMode === 'incremental' && incrementalFrom === undefined) {
    throw new InvalidInputError(`<disk name='${name}' backupmode='incremental'>: no checkpoint to be incremental from`, {
      hint: "add incremental='cp1' to the disk or <incremental>cp1</incremental> to <domainbackup>",
    });
  }
  if (incrementalFrom !== undefined && vmDisk.format !== 'qcow2') {
    throw new InvalidInputError(`${where}: an incremental backup since '${incrementalFrom}' needs a qcow2 disk, but ${name} is ${vmDisk.format} (no persistent bitmaps)`, {
      hint: `add <disk name='${name}' backupmode='full'/> to back it up in full`,
    });
  }

  // Target (push) or scratch (pull).
  const element = def.mode === 'push' ? 'target' : 'scratch';
  const type = given?.type ?? 'file';
  const format: BackupImageFormat = given?.format ?? 'qcow2';
  let path = given?.path;
  if (path === undefined) {
    const dir = def.mode === 'push' ? context.defaultTargetDir : context.defaultScratchDir;
    if (type === 'block') {
      throw new InvalidInputError(`<disk name='${name}' type='block'>: <${element} dev=…> is missing`, { hint: `add <${element} dev='/dev/…'/>: fleece cannot pick a block device` });
    }
    if (dir === undefined) {
      throw new InvalidInputError(`${where}: ${def.mode} mode needs a <${element}> and no default directory is configured`, {
        hint: `add <${element} file='/path/${name}.qcow2'/> to the disk, or give a default ${def.mode === 'push' ? 'target' : 'scratch'} directory`,
      });
    }
    path = join(dir, def.mode === 'push' ? `${name}.${suffix}.${format}` : `${name}.${suffix}.scratch.${format}`);
  }
  if (!path.startsWith('/')) {
    throw new InvalidInputError(`${where} <${element}>: '${path}' is not an absolute path`, { hint: 'give an absolute path' });
  }
  const existing = context.exists(path);
  if (type === 'block' && !existing) {
    throw new InvalidInputError(`${where} <${element} dev='${path}'>: the block device does not exist`, { hint: 'give an existing block device' });
  }
  if (type === 'file' && existing && !context.reuseExternal) {
    throw new InvalidInputError(`${where} <${element} file='${path}'>: the file already exists`, {
      hint: 'remove it, choose another path, or reuse it explicitly (--reuse-external)',
    });
  }

  const disk: IncludedBackupDisk = {
    name,
    included: true,
    storage: { type, path, format, existing },
    sizeBytes: vmDisk.sizeBytes,
    sourceFormat: vmDisk.format,
  };
  if (incrementalFrom !== undefined) disk.incrementalFrom = incrementalFrom;

  // Pull: what the NBD server exports.
  if (def.mode === 'pull') {
    disk.exportName = given?.exportName ?? name;
    if (incrementalFrom !== undefined) disk.exportBitmap = given?.exportBitmap ?? `${TEMPORARY_BITMAP_PREFIX}${name}`;
    else if (given?.exportBitmap !== undefined) {
      throw new InvalidInputError(`<disk name='${name}' exportbitmap='${given.exportBitmap}'>: the disk is backed up in full, so there is no bitmap to export`, {
        hint: 'remove exportbitmap= or make the backup incremental',
      });
    }
  } else if (given?.exportName !== undefined || given?.exportBitmap !== undefined) {
    throw new InvalidInputError(`${where}: exportname= and exportbitmap= are only used in pull mode`, { hint: 'remove them' });
  }
  return disk;
}

function resolveServer(def: BackupDefinition, context: ResolveBackupContext): NonNullable<ResolvedBackup['server']> {
  const server = def.server;
  if (server === undefined) {
    if (context.defaultSocket === undefined) {
      throw new InvalidInputError(`<domainbackup mode='pull'>: <server> is missing and no default socket is configured`, {
        hint: "add <server transport='unix' socket='/run/fleece/vm.sock'/>",
      });
    }
    return { transport: 'unix', socket: context.defaultSocket };
  }
  if (server.transport === 'unix') {
    if (!server.socket.startsWith('/')) {
      throw new InvalidInputError(`<server transport='unix' socket='${server.socket}'>: not an absolute path`, { hint: 'give the socket as an absolute path' });
    }
    return { transport: 'unix', socket: server.socket };
  }
  if (server.name === '') throw new InvalidInputError(`<server transport='tcp'>: name= is missing`, { hint: "add name='localhost'" });
  const port = server.port ?? context.defaultTcpPort;
  if (port === undefined) {
    throw new InvalidInputError(`<server transport='tcp' name='${server.name}'>: port= is missing and no default port is configured`, {
      hint: "add port='10809'",
    });
  }
  if (!Number.isInteger(port) || port < 1 || port > 65535) {
    throw new InvalidInputError(`<server transport='tcp' port='${port}'>: not a TCP port`, { hint: 'use a number from 1 to 65535' });
  }
  return { transport: 'tcp', name: server.name, port, tls: server.tls ?? context.tlsConfigured ?? false };
}
