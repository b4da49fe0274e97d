// Turns a resolved backup definition (libvirt XML or CLI options, defaults filled) plus the VM's disks from the block
// graph into the disk requests of a push or pull backup.
import type { NbdTls } from '../nbd/nbd-tls.js';
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
 * The pull disk requests, the NBD server address and, for `<server tls='yes'>`, the TLS credentials `tls` (the VM's
 * or the daemon's). Throws InvalidInputError for a push definition, a block device scratch, a missing server, or
 * TLS asked for with no credentials configured; NotFoundError for a disk QEMU lacks.
 */
export function pullRequestFromResolved(
  resolved: ResolvedBackup,
  disks: readonly VmDisk[],
  tls?: NbdTls,
): { disks: PullDiskRequest[]; server: NbdServerAddress; tls?: NbdTls } {
  if (resolved.mode !== 'pull') throw new InvalidInputError('a push backup definition was given to a pull backup');
  const server = resolved.server;
  if (!server) throw new InvalidInputError('the pull backup has no NBD server', { hint: "give <server transport='unix' socket=…/>" });
  const withTls = server.transport === 'tcp' && server.tls;
  if (withTls && !tls) {
    throw new InvalidInputError(`<server tls='yes'>: NBD over TLS (server ${server.name}:${server.port}) needs TLS credentials and none are configured`, {
      hint: 'give --tls-dir DIR (ca-cert.pem, server-cert.pem, server-key.pem, client-cert.pem, client-key.pem) or --tls-psk FILE (keys.psk), set nbdTlsDir/nbdTlsPsk in fleeced.conf, or tlsDir/tlsPsk in the VM\'s registry entry',
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
  return { disks: requests, server: address, ...(withTls && tls ? { tls } : {}) };
}
