// One QMP connection per VM, shared by its jobs and checkpoint requests (QEMU lets one client own a monitor socket);
// connected on first use and again, lazily, after it dropped.
import { CheckpointManager } from '../../checkpoint/manager.js';
import { CheckpointStore } from '../../checkpoint/store.js';
import { QmpClient } from '../../qmp/client.js';
import { getLogger } from '../../util/logger.js';
import { qmpSocketOf, type VmEntry } from '../vm-registry.js';

const log = getLogger('app.qmp-pool');

/** A VM's live connection and its checkpoint manager (one per connection, so its calls stay serial). */
export interface VmConnection {
  entry: VmEntry;
  qmp: QmpClient;
  checkpoints: CheckpointManager;
}

export class QmpPool {
  readonly #stateDir: string;
  readonly #conns = new Map<string, Promise<VmConnection>>();

  constructor(stateDir: string) {
    this.#stateDir = stateDir;
  }

  /**
   * The VM's connection, (re)connecting when there is none or it closed, or when the VM's socket changed.
   * Throws QmpConnectError naming the socket when QEMU is not there.
   */
  async get(entry: VmEntry, signal?: AbortSignal): Promise<VmConnection> {
    const existing = this.#conns.get(entry.name);
    if (existing) {
      const conn = await existing.catch(() => undefined);
      if (conn && !conn.qmp.closed && conn.entry.qmp === entry.qmp) return conn;
      if (conn && !conn.qmp.closed) await conn.qmp.close();
      if (this.#conns.get(entry.name) === existing) this.#conns.delete(entry.name);
      else return this.get(entry, signal);
    }
    const connecting = (async () => {
      const qmp = await QmpClient.connect({ path: qmpSocketOf(entry) }, { name: entry.name, ...(signal ? { signal } : {}) });
      qmp.onClose((error) => log.info({ vm: entry.name, err: error }, 'QMP connection closed'));
      const checkpoints = new CheckpointManager({ qmp, store: new CheckpointStore(this.#stateDir), vm: entry.name });
      return { entry, qmp, checkpoints };
    })();
    this.#conns.set(entry.name, connecting);
    connecting.catch(() => {
      if (this.#conns.get(entry.name) === connecting) this.#conns.delete(entry.name);
    });
    return connecting;
  }

  /** True when the VM has an open connection now. */
  async isConnected(vm: string): Promise<boolean> {
    const conn = await this.#conns.get(vm)?.catch(() => undefined);
    return conn !== undefined && !conn.qmp.closed;
  }

  /** Closes and forgets the VM's connection (VM unregistered). Never throws. */
  async drop(vm: string): Promise<void> {
    const conn = await this.#conns.get(vm)?.catch(() => undefined);
    this.#conns.delete(vm);
    await conn?.qmp.close();
  }

  /** Closes every connection. Never throws. */
  async closeAll(): Promise<void> {
    const all = [...this.#conns.values()];
    this.#conns.clear();
    for (const pending of all) await (await pending.catch(() => undefined))?.qmp.close();
  }
}
