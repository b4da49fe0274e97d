// Turns a resolved backup definition (libvirt XML or CLI options, defaults filled) plus the VM's disks from the block
// graph into the disk requests of a push or pull backup.
import type { VmDisk } from '../qemu/block-graph.js';
import { InvalidInputError, NotFoundError } from '../util/errors.js';
import type { IncludedBackupDisk, ResolvedBackup } from './definition/types.js';
import type { NbdServerAddress } from './plan.js';
import type { PullDiskRequest } from './pull-backup.js';
import type { PushDiskRequest } from './push-backup.js';

function included(resolved: ResolvedBackup): IncludedBackupDisk[] {
  return resolved.disks.filter((d): d is IncludedBackupDisk => d.included);
}

function vmDisk(disks: readonly VmDisk[], name: string): VmDisk {
  const disk = disks.find((d) => d.target === name);
  if (!disk) {
    throw new NotFoundError(`the VM has no disk '${name}' in QEMU's block graph`, {
      hint: 'list the disks with fleece domblklist and fix the backup definition',
    });
  }
  return disk;
}

function requireFile(disk: IncludedBackupDisk, role: string): void {
  if (disk.storage.type === 'block') {
    throw new InvalidInputError(`disk '${disk.name}': a block device as ${role} is not supported yet`, {
      hint: `give the ${role} as a file (type='file')`,
    });
  }
}

/**
 * The push disk requests. `rebaseOnto` maps a disk name to its previous backup (incremental targets are rebased onto
 * it). Throws InvalidInputError for a pull definition or a block device target, NotFoundError for a disk QEMU lacks.
 */
export function pushDisksFromResolved(
  resolved: ResolvedBackup,
  disks: readonly VmDisk[],
  rebaseOnto: Readonly<Record<string, string>> = {},
): PushDiskRequest[] {
  if (resolved.mode !== 'push') throw new InvalidInputError('a pull backup definition was given to a push backup');
  return included(resolved).map((d) => {
    requireFile(d, 'push target');
    const onto = rebaseOnto[d.name];
    return {
      disk: vmDisk(disks, d.name),
      ...(d.incrementalFrom !== undefined ? { incrementalFrom: d.incrementalFrom } : {}),
      push: { path: d.storage.path, format: d.storage.format, create: !d.storage.existing },
      ...(onto !== undefined && d.incrementalFrom !== undefined ? { rebaseOnto: onto } : {}),
    };
  });
}

/**
 * The pull disk requests and the NBD server address. Throws InvalidInputError for a push definition, a block device
 * scratch, a missing server or TLS (not supported yet); NotFoundError for a disk QEMU lacks.
 */
export function pullRequestFromResolved(
  resolved: ResolvedBackup,
  disks: readonly VmDisk[],
): { disks: PullDiskRequest[]; server: NbdServerAddress } {
  if (resolved.mode !== 'pull') throw new InvalidInputError('a push backup definition was given to a pull backup');
  const server = resolved.server;
  if (!server) throw new InvalidInputError('the pull backup has no NBD server', { hint: "give <server transport='unix' socket=…/>" });
  if (server.transport === 'tcp' && server.tls) {
    throw new InvalidInputError(`NBD over TLS (server ${server.name}:${server.port}) is not supported yet`, {
      hint: "use a unix socket, or tls='no' on a trusted network",
    });
  }
  const address: NbdServerAddress =
    server.transport === 'unix' ? { type: 'unix', path: server.socket } : { type: 'tcp', host: server.name, port: server.port };
  const requests = included(resolved).map((d): PullDiskRequest => {
    requireFile(d, 'scratch image');
    if (d.storage.format !== 'qcow2') {
      throw new InvalidInputError(`disk '${d.name}': the scratch image must be qcow2, not ${d.storage.format}`, {
        hint: "use <driver type='qcow2'/> for the scratch",
      });
    }
    return {
      disk: vmDisk(disks, d.name),
      ...(d.incrementalFrom !== undefined ? { incrementalFrom: d.incrementalFrom } : {}),
      scratch: { path: d.storage.path, create: !d.storage.existing },
      ...(d.exportName ? { exportName: d.exportName } : {}),
      ...(d.exportBitmap && d.incrementalFrom !== undefined ? { exportBitmap: d.exportBitmap } : {}),
    };
  });
  return { disks: requests, server: address };
}
