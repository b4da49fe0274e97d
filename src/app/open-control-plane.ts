// Opens the control plane of one VM: QMP for a bare QEMU (its socket), libvirt for a running libvirt domain, the
// offline plane (qemu-storage-daemon over its images) for a shut-off one.
import { join } from 'node:path';
import { LibvirtConnection } from '../../native/libvirt/index.js';
import type { BackupRegistry } from '../backup/backup-registry.js';
import type { ControlPlane } from '../backup/control/control-plane.js';
import { LibvirtControlPlane, libvirtCheckpoints } from '../backup/control/libvirt-control-plane.js';
import { domainDisks } from '../backup/control/libvirt-domain-disks.js';
import { QmpControlPlane } from '../backup/control/qmp-control-plane.js';
import { CheckpointManager } from '../checkpoint/manager.js';
import { CheckpointStore } from '../checkpoint/store.js';
import { QmpClient } from '../qmp/client.js';
import { InvalidInputError } from '../util/errors.js';
import { nbdTlsForVm } from './nbd-tls-settings.js';
import type { VmEntry } from './vm-registry.js';

export interface PlaneEnvironment {
  stateDir: string;
  runDir: string;
  scratchDir?: string;
  registry?: BackupRegistry;
  /** A QMP connection and checkpoint manager to reuse (the daemon's pool); else the plane opens its own. */
  qmp?: { qmp: QmpClient; checkpoints: CheckpointManager };
  signal?: AbortSignal;
  /** How a bare QEMU fleeces (QmpControlPlaneOptions.fleecing); libvirt and offline planes have their own way. */
  fleecing?: 'overlay' | 'cbw' | 'auto';
}

/** Scratch images of pull backups go here unless the request says otherwise. */
export function scratchDirOf(env: Pick<PlaneEnvironment, 'stateDir' | 'scratchDir'>): string {
  return env.scratchDir ?? join(env.stateDir, 'scratch');
}

/**
 * The VM's control plane. Throws QmpConnectError (no QEMU on the socket), LibvirtError (libvirtd unreachable, no
 * such domain), InvalidInputError (an entry with neither a socket nor a URI).
 */
export async function openControlPlane(entry: VmEntry, env: PlaneEnvironment): Promise<ControlPlane> {
  const scratchDir = scratchDirOf(env);
  if (entry.connect !== undefined) {
    const conn = await LibvirtConnection.open(entry.connect);
    try {
      const { state } = await conn.domainState(entry.name);
      if (state === 'shutoff' || state === 'crashed') {
        const xml = await conn.domainXml(entry.name, { inactive: true });
        const { disks, skipped } = domainDisks(xml);
        const { checkpoints } = await libvirtCheckpoints(conn, entry.name, { validate: false });
        await conn.close();
        // Loaded for shut-off domains only (it brings qemu-storage-daemon's code and execa: not the running VM's start-up).
        const { OfflineControlPlane } = await import('../backup/control/offline-control-plane.js');
        return new OfflineControlPlane({
          vm: entry.name,
          disks: disks.map((d) => {
            if (d.type !== 'file' && d.type !== 'block') throw new InvalidInputError(`disk ${d.target} of shut-off VM '${entry.name}' is a ${d.type} disk: only file and block images can be read offline`);
            return { target: d.target, path: d.path!, format: d.format === 'qcow2' ? 'qcow2' : 'raw' };
          }),
          skipped,
          checkpoints,
          guestConfig: { format: 'libvirt-domain-xml', text: xml },
          runDir: env.runDir,
        });
      }
      // A VM registered with TLS credentials (tlsDir) is exported by libvirt over TCP with TLS instead of a socket.
      const tls = nbdTlsForVm(entry);
      return new LibvirtControlPlane({ vm: entry.name, conn, scratchDir, runDir: env.runDir, ownsConnection: true, connect: entry.connect, ...(tls ? { tls } : {}) });
    } catch (error) {
      await conn.close();
      throw error;
    }
  }
  if (entry.qmp === undefined) {
    throw new InvalidInputError(`VM '${entry.name}' has neither a QMP socket nor a libvirt URI`, { hint: 'register it again with --qmp or --connect' });
  }
  if (env.qmp) {
    return new QmpControlPlane({
      vm: entry.name, qmp: env.qmp.qmp, checkpoints: env.qmp.checkpoints, scratchDir, runDir: env.runDir, qmpSocket: entry.qmp,
      ...(env.fleecing ? { fleecing: env.fleecing } : {}),
      ...(entry.guestAgent ? { guestAgent: entry.guestAgent } : {}), ...(env.registry ? { registry: env.registry } : {}),
    });
  }
  if (!entry.qmp.startsWith('/') && !entry.qmp.startsWith('.')) {
    throw new InvalidInputError(`QMP socket '${entry.qmp}' of VM '${entry.name}' is not a path`, {
      hint: 'give the path of the unix socket QEMU was started with (-qmp unix:PATH,server=on,wait=off)',
    });
  }
  const qmp = await QmpClient.connect({ path: entry.qmp }, { name: entry.name, ...(env.signal ? { signal: env.signal } : {}) });
  const checkpoints = new CheckpointManager({ qmp, store: new CheckpointStore(env.stateDir), vm: entry.name });
  return new QmpControlPlane({
    vm: entry.name, qmp, checkpoints, scratchDir, runDir: env.runDir, qmpSocket: entry.qmp, ...(env.fleecing ? { fleecing: env.fleecing } : {}),
    ...(entry.guestAgent ? { guestAgent: entry.guestAgent } : {}), ...(env.registry ? { registry: env.registry } : {}),
    onClose: () => qmp.close(),
  });
}
