// Registered VMs, kept in <configDir>/vms.json: a name bound to a QMP socket (and optionally a guest-agent socket),
// or to a libvirt connection URI (the name is the libvirt domain's).
import { readFile, mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { writeFileAtomic } from '../util/atomic-file.js';
import { ConflictError, InvalidInputError, NotFoundError } from '../util/errors.js';
import type { VmRetention } from './vm-retention.js';

export interface VmEntry {
  name: string;
  /** A bare QEMU: its QMP socket. */
  qmp?: string;
  guestAgent?: string;
  /** A libvirt domain: the libvirt URI it lives on (`qemu:///system`). */
  connect?: string;
  /**
   * NBD over TLS for this VM's TCP exports, instead of the daemon's: a directory with ca-cert.pem, server-cert.pem,
   * server-key.pem, client-cert.pem, client-key.pem (x509) …
   */
  tlsDir?: string;
  /** … or a keys.psk file (a pre-shared key, psktool). */
  tlsPsk?: string;
  /** Prune this VM's backups and checkpoints after each successful backup (app/vm-retention.ts); off when absent. */
  retention?: VmRetention;
}

/** The VM's QMP socket. Throws InvalidInputError when the VM is a libvirt domain (libvirt owns its monitor). */
export function qmpSocketOf(entry: VmEntry): string {
  if (entry.qmp === undefined) {
    throw new InvalidInputError(`VM '${entry.name}' is a libvirt domain (${entry.connect ?? 'no URI'}): libvirt owns its QMP monitor`, {
      hint: `use the commands that go through libvirt (fleece backup ${entry.name} --repo …), or virsh for this one`,
    });
  }
  return entry.qmp;
}

const VM_NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/;

/** Throws InvalidInputError unless `name` is usable as a VM name (and as a directory name). */
export function validateVmName(name: string): void {
  if (!VM_NAME.test(name)) {
    throw new InvalidInputError(`VM name '${name}' is not valid`, {
      hint: 'use letters, digits, ".", "_" or "-", starting with a letter or digit (at most 128 characters)',
    });
  }
}

export class VmRegistry {
  constructor(private readonly configDir: string) {}

  private get file(): string {
    return join(this.configDir, 'vms.json');
  }

  /** All registered VMs; an absent file means none. Throws InvalidInputError naming the file when it is corrupt. */
  async list(): Promise<VmEntry[]> {
    let text: string;
    try {
      text = await readFile(this.file, 'utf8');
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw error;
    }
    try {
      const parsed = JSON.parse(text) as { vms?: VmEntry[] };
      return Array.isArray(parsed.vms) ? parsed.vms : [];
    } catch (error) {
      throw new InvalidInputError(`the VM registry ${this.file} is not valid JSON`, {
        hint: 'fix or remove the file and register the VMs again with `fleece vm add`',
        cause: error,
      });
    }
  }

  /** Throws NotFoundError naming the VM and how to register it. */
  async get(name: string): Promise<VmEntry> {
    const entry = (await this.list()).find((vm) => vm.name === name);
    if (!entry) {
      throw new NotFoundError(`VM '${name}' is not registered`, {
        hint: `register it with \`fleece vm add ${name} --qmp /path/to/qmp.sock\` (a bare QEMU) or \`fleece vm add ${name} --connect qemu:///system\` (a libvirt domain), or pass --qmp or --connect`,
      });
    }
    return entry;
  }

  /** Throws ConflictError when the name is taken, InvalidInputError for a bad name. */
  async add(entry: VmEntry): Promise<void> {
    validateVmName(entry.name);
    if ((entry.qmp === undefined) === (entry.connect === undefined)) {
      throw new InvalidInputError(`VM '${entry.name}' needs exactly one of a QMP socket and a libvirt URI`, {
        hint: 'give --qmp SOCKET (a bare QEMU) or --connect URI (a libvirt domain)',
      });
    }
    const vms = await this.list();
    if (vms.some((vm) => vm.name === entry.name)) {
      throw new ConflictError(`VM '${entry.name}' is already registered`, {
        hint: `remove it first with \`fleece vm remove ${entry.name}\``,
      });
    }
    await this.save([...vms, entry]);
  }

  /** Throws NotFoundError when the VM is not registered. */
  async remove(name: string): Promise<void> {
    const vms = await this.list();
    if (!vms.some((vm) => vm.name === name)) await this.get(name);
    await this.save(vms.filter((vm) => vm.name !== name));
  }

  private async save(vms: VmEntry[]): Promise<void> {
    await mkdir(this.configDir, { recursive: true });
    await writeFileAtomic(this.file, `${JSON.stringify({ vms }, null, 2)}\n`);
  }
}
