// Opens one VM for a command: finds its QMP socket (--qmp or the registry), connects, and builds its checkpoint manager.
import { CheckpointManager } from '../checkpoint/manager.js';
import { CheckpointStore } from '../checkpoint/store.js';
import { QmpClient } from '../qmp/client.js';
import { InvalidInputError } from '../util/errors.js';
import { VmRegistry, qmpSocketOf, validateVmName, type VmEntry } from './vm-registry.js';

export interface VmAddressOptions {
  vm: string;
  /** An ad hoc QMP socket; wins over the registry. */
  qmp?: string;
  guestAgent?: string;
  configDir: string;
}

export interface VmContext {
  vm: string;
  entry: VmEntry;
  qmp: QmpClient;
  stateDir: string;
  store: CheckpointStore;
  checkpoints: CheckpointManager;
  close(): Promise<void>;
}

/** The VM's QMP address: `--qmp` when given, else the registry. Throws NotFoundError for an unregistered VM. */
export async function resolveVm(options: VmAddressOptions): Promise<VmEntry> {
  validateVmName(options.vm);
  if (options.qmp) {
    return { name: options.vm, qmp: options.qmp, ...(options.guestAgent ? { guestAgent: options.guestAgent } : {}) };
  }
  return new VmRegistry(options.configDir).get(options.vm);
}

/** Connects to the VM's QMP socket. Throws QmpConnectError naming the socket when QEMU is not there. */
export async function openVm(options: VmAddressOptions & { stateDir: string; signal?: AbortSignal }): Promise<VmContext> {
  const entry = await resolveVm(options);
  const socket = qmpSocketOf(entry);
  if (!socket.startsWith('/') && !socket.startsWith('.')) {
    throw new InvalidInputError(`QMP socket '${entry.qmp}' of VM '${entry.name}' is not a path`, {
      hint: 'give the path of the unix socket QEMU was started with (-qmp unix:PATH,server=on,wait=off)',
    });
  }
  const qmp = await QmpClient.connect({ path: socket }, { name: entry.name, ...(options.signal ? { signal: options.signal } : {}) });
  const store = new CheckpointStore(options.stateDir);
  const checkpoints = new CheckpointManager({ qmp, store, vm: entry.name });
  return {
    vm: entry.name,
    entry,
    qmp,
    stateDir: options.stateDir,
    store,
    checkpoints,
    close: () => qmp.close(),
  };
}
