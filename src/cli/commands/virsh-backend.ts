// Where a virsh verb runs: through the fleeced answering on the socket (it owns the QMP sockets), else directly.
import { existsSync } from 'node:fs';
import { openVm, resolveVm } from '../../app/vm-context.js';
import { JobStore } from '../../app/jobs/job-store.js';
import { isFinalJobState, type JobInfo } from '../../app/jobs/job-info.js';
import type { VmEntry } from '../../app/vm-registry.js';
import { parseCheckpointXml } from '../../app/vocabulary.js';
import type { CheckpointDefinition } from '../../app/vocabulary.js';
import { FleeceError, InvalidInputError } from '../../util/errors.js';
import type { CliContext } from '../context.js';
import { detectDaemon, type CheckpointCreateBody, type DaemonClient } from '../daemon-client.js';
import { stripDomainElement, type CheckpointSummary } from '../virsh-format.js';

/** The VM a verb names, and its ad hoc QMP socket when `--qmp` was given. */
export interface VirshTarget {
  vm: string;
  qmp?: string;
}

/** The checkpoint operations of one VM, the same whether fleeced or the CLI talks to QEMU. */
export interface CheckpointOps {
  readonly via: 'daemon' | 'direct';
  list(): Promise<{ current: string | null; checkpoints: CheckpointSummary[] }>;
  create(body: CheckpointCreateBody): Promise<{ name: string; xml: string }>;
  redefine(xml: string): Promise<{ name: string }>;
  dumpXml(name: string, options: { size?: boolean; noDomain?: boolean }): Promise<string>;
  delete(name: string, options: { metadataOnly?: boolean }): Promise<void>;
  close(): Promise<void>;
}

/** Turns "not registered" into bad input (exit 2) naming the VM and the two ways to fix it. */
function unknownVm(vm: string, where: string, cause?: unknown): InvalidInputError {
  return new InvalidInputError(`VM '${vm}' is not registered${where}`, {
    hint: `register it with \`fleece vm add ${vm} --qmp /path/to/qmp.sock\` or pass --qmp /path/to/qmp.sock`,
    cause,
  });
}

/**
 * The VM's registry entry (or the `--qmp` one), checked: a missing --qmp socket is bad input.
 * @throws InvalidInputError for an unregistered VM, a bad VM name or a --qmp socket that does not exist.
 */
export async function resolveTarget(ctx: CliContext, target: VirshTarget): Promise<VmEntry> {
  if (target.qmp !== undefined && !existsSync(target.qmp)) {
    throw new InvalidInputError(`the QMP socket '${target.qmp}' of VM '${target.vm}' does not exist`, {
      hint: 'start QEMU with -qmp unix:PATH,server=on,wait=off, or fix --qmp',
    });
  }
  try {
    return await resolveVm({ vm: target.vm, configDir: ctx.configDir, ...(target.qmp !== undefined ? { qmp: target.qmp } : {}) });
  } catch (error) {
    if (error instanceof FleeceError && error.code === 'NOT_FOUND') throw unknownVm(target.vm, ` in ${ctx.configDir}`, error);
    throw error;
  }
}

/**
 * Makes sure the daemon knows the VM: registers it with the `--qmp` socket when it does not.
 * @throws InvalidInputError when the daemon does not know it and no --qmp was given, or knows it with another socket.
 */
export async function ensureDaemonVm(client: DaemonClient, target: VirshTarget): Promise<void> {
  const known = (await client.listVms()).find((entry) => entry.name === target.vm);
  if (known) {
    if (target.qmp !== undefined && known.qmp !== target.qmp) {
      throw new InvalidInputError(`VM '${target.vm}' is registered with fleeced (${client.socketPath}) with QMP socket ${known.qmp}, not ${target.qmp}`, {
        hint: 'drop --qmp, or remove the VM from fleeced first',
      });
    }
    return;
  }
  if (target.qmp === undefined) throw unknownVm(target.vm, ` with fleeced (${client.socketPath})`);
  if (!existsSync(target.qmp)) {
    throw new InvalidInputError(`the QMP socket '${target.qmp}' of VM '${target.vm}' does not exist`, {
      hint: 'start QEMU with -qmp unix:PATH,server=on,wait=off, or fix --qmp',
    });
  }
  await client.addVm({ name: target.vm, qmp: target.qmp });
}

/** The fleeced answering on the context's socket, with the VM made known to it; undefined when none runs. */
export async function daemonForTarget(ctx: CliContext, target: VirshTarget): Promise<DaemonClient | undefined> {
  const client = await detectDaemon(ctx.daemonSocket);
  if (client) await ensureDaemonVm(client, target);
  return client;
}

function daemonOps(client: DaemonClient, vm: string): CheckpointOps {
  return {
    via: 'daemon',
    list: async () => {
      const list = await client.checkpoints(vm);
      return { current: list.current, checkpoints: list.checkpoints.map((cp) => ({ name: cp.name, parent: cp.parent, creationTime: cp.creationTime })) };
    },
    create: (body) => client.createCheckpoint(vm, body),
    redefine: (xml) => client.redefineCheckpoint(vm, xml),
    dumpXml: async (name, options) => {
      const { xml } = await client.checkpointXml(vm, name, { size: options.size ?? false });
      return options.noDomain ? stripDomainElement(xml) : xml;
    },
    delete: (name, options) => client.deleteCheckpoint(vm, name, options),
    close: async () => undefined,
  };
}

async function directOps(ctx: CliContext, entry: VmEntry): Promise<CheckpointOps> {
  const vm = await openVm({ vm: entry.name, qmp: entry.qmp, configDir: ctx.configDir, stateDir: ctx.stateDir, signal: ctx.signal });
  const { checkpoints } = vm;
  const signal = ctx.signal;
  return {
    via: 'direct',
    list: async () => {
      const chain = await checkpoints.chain();
      return {
        current: chain.current ?? null,
        checkpoints: chain.list().map((cp) => ({ name: cp.name, parent: cp.parent ?? null, creationTime: cp.creationTime })),
      };
    },
    create: async (body) => {
      const def: CheckpointDefinition =
        'xml' in body ? parseCheckpointXml(body.xml) : { name: body.name, disks: [], ...(body.description !== undefined ? { description: body.description } : {}) };
      const cp = await checkpoints.create(def, { signal });
      return { name: cp.name, xml: await checkpoints.dumpXml(cp.name) };
    },
    redefine: async (xml) => ({ name: (await checkpoints.redefine(xml, { signal })).name }),
    dumpXml: (name, options) => checkpoints.dumpXml(name, { size: options.size ?? false, noDomain: options.noDomain ?? false, signal }),
    delete: (name, options) => checkpoints.delete(name, { metadataOnly: options.metadataOnly ?? false, signal }),
    close: () => vm.close(),
  };
}

/**
 * The checkpoint operations for the VM: through fleeced when it answers on `ctx.daemonSocket`, else over the VM's
 * QMP socket directly. Close them when done.
 * @throws InvalidInputError for an unknown VM or missing --qmp socket; QmpConnectError when QEMU is not there.
 */
export async function checkpointOps(ctx: CliContext, target: VirshTarget): Promise<CheckpointOps> {
  const client = await daemonForTarget(ctx, target);
  if (client) return daemonOps(client, target.vm);
  return directOps(ctx, await resolveTarget(ctx, target));
}

/**
 * The VM's last finished job from the job records in the state directory (what fleeced wrote), for domjobinfo
 * --completed when no daemon runs any more; null when there is none.
 */
export async function lastCompletedJob(stateDir: string, vm: string): Promise<JobInfo | null> {
  const done = (await new JobStore(stateDir).list()).map((r) => r.info).filter((job) => job.vm === vm && isFinalJobState(job.state));
  done.sort((a, b) => (a.endedAt ?? a.startedAt).localeCompare(b.endedAt ?? b.startedAt));
  return done[done.length - 1] ?? null;
}
