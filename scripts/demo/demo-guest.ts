// The demo's guest (the real guest of scripts/guest/: Debian's kernel, ext4 on vda, qemu-guest-agent) under one of the
// two control planes fleece speaks: a libvirt domain on a private libvirtd (test/harness/libvirt.ts), or a bare QEMU
// reached through QMP. Both behind DemoGuest: what fleece is given, the agent to run scripts in the guest, stop().
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync, rmSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { AbortedError, InvalidInputError, describeError, throwIfAborted } from '../../src/util/errors.js';
import { GuestAgentShell, realGuestQemuArgs, type ExecResult, type RealGuestImage } from '../guest/real-guest.js';
import {
  LIBVIRT_RUN_DIR_ENV,
  dedicatedLibvirt,
  defineTestDomain,
  libvirtAvailability,
  hostPathOf,
  libvirtRunDir,
  stopSharedLibvirt,
  type LibvirtHarness,
  type TestDomain,
} from '../../test/harness/libvirt.js';

export type ControlPlane = 'libvirt' | 'qmp';

export interface PlaneChoice {
  plane: ControlPlane;
  /** FLEECE_DEMO_MODE asked for it. */
  forced: boolean;
  why: string;
}

/**
 * The control plane for the demo: FLEECE_DEMO_MODE=libvirt|qmp forces one; otherwise libvirt when the harness can run a
 * libvirtd here (root, libvirtd, virsh and QEMU installed), else a bare QEMU. Pure but for libvirtAvailability().
 * @throws InvalidInputError for another FLEECE_DEMO_MODE.
 */
export function chooseControlPlane(mode: string | undefined): PlaneChoice {
  const wanted = (mode ?? '').trim().toLowerCase();
  if (wanted === 'libvirt' || wanted === 'qmp') return { plane: wanted, forced: true, why: `FLEECE_DEMO_MODE=${wanted}` };
  if (wanted !== '' && wanted !== 'auto') {
    throw new InvalidInputError(`FLEECE_DEMO_MODE=${mode} is not a mode`, { hint: 'use libvirt, qmp or auto (the default)' });
  }
  const available = libvirtAvailability();
  if (available.ok) return { plane: 'libvirt', forced: false, why: 'running as root with libvirtd installed' };
  return { plane: 'qmp', forced: false, why: `libvirt cannot run here: ${available.why.replace(/^libvirt tests need/, 'a private libvirtd needs')}` };
}

/** Runs shell scripts in the guest through its agent. */
export interface GuestAgent {
  /** Waits until the agent answers (the guest booted). @throws Error naming the serial log; AbortedError. */
  waitReady(timeoutMs: number, signal?: AbortSignal): Promise<void>;
  /** `/bin/sh -c script` in the guest, to its end. @throws Error on timeout or agent failure; AbortedError. */
  exec(script: string, options: { timeoutMs: number; signal?: AbortSignal }): Promise<ExecResult>;
  /** Lets go of the agent so that fleece can use it (a bare QEMU's agent socket takes one client); no-op under libvirt. */
  release(): void;
}

export interface DemoGuest {
  plane: ControlPlane;
  /** The VM name fleece is given. */
  vm: string;
  /** `fleece backup VM …` arguments that reach the VM (and its agent, for --quiesce). */
  fleeceArgs: string[];
  /** What was started, one line each, for the user. */
  described: string[];
  agent: GuestAgent;
  serialLog: string;
  /** Stops everything started (the domain destroyed and undefined and libvirtd stopped, or QEMU gone); idempotent. */
  stop(): Promise<void>;
}

/** Last-resort kills, run synchronously when the user insists on exiting before the cleanup is done. */
const emergencyKills = new Set<() => void>();

/** SIGKILLs whatever a guest start left running (QEMU, libvirtd): for a second Ctrl-C and process exit. */
export function killGuestsNow(): void {
  for (const kill of emergencyKills) {
    try {
      kill();
    } catch {
      // best effort
    }
  }
}

function killPidFile(path: string): void {
  try {
    const pid = Number(readFileSync(path, 'utf8').trim());
    if (Number.isInteger(pid) && pid > 1) process.kill(pid, 'SIGKILL');
  } catch {
    // no such file or process
  }
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** Rejects with AbortedError when `signal` aborts; never resolves otherwise. */
function aborted(signal: AbortSignal | undefined, what: string): { promise: Promise<never>; done(): void } {
  let done = (): void => undefined;
  const promise = new Promise<never>((_, reject) => {
    if (!signal) return;
    const onAbort = (): void => reject(new AbortedError(`${what} was interrupted`));
    if (signal.aborted) onAbort();
    signal.addEventListener('abort', onAbort, { once: true });
    done = () => signal.removeEventListener('abort', onAbort);
  });
  promise.catch(() => undefined);
  return { promise, done: () => done() };
}

async function race<T>(work: Promise<T>, signal: AbortSignal | undefined, what: string): Promise<T> {
  const stop = aborted(signal, what);
  try {
    return await Promise.race([work, stop.promise]);
  } finally {
    stop.done();
  }
}

async function serialTail(path: string, lines = 15): Promise<string> {
  const text = await readFile(path, 'utf8').catch(() => '');
  return text.trim() ? text.trimEnd().split('\n').slice(-lines).join('\n') : '(empty)';
}

interface StartOptions {
  /** The VM's name (libvirt domain or QEMU -name); starts with fleece-test- (the harness and leftover checks use it). */
  name: string;
  /** The guest's vda (qcow2). */
  disk: string;
  image: RealGuestImage;
  /** Where a bare QEMU's sockets and serial log go. */
  dir: string;
  signal?: AbortSignal;
  say(line: string): void;
}

// ---- libvirt ----------------------------------------------------------------------------------------------------

/**
 * The guest agent of a libvirt domain, through `virsh qemu-agent-command`: libvirtd is the one client of the agent's
 * channel socket (QEMU's end takes one connection at a time), so going around it is not possible while it runs.
 */
class VirshAgent implements GuestAgent {
  constructor(private readonly h: LibvirtHarness, private readonly domain: string, private readonly serialLog: string) {}

  async #execute<T>(command: string, args?: Record<string, unknown>, timeoutSeconds = 20): Promise<T> {
    const json = JSON.stringify(args ? { execute: command, arguments: args } : { execute: command });
    const out = await this.h.virsh(['qemu-agent-command', this.domain, '--timeout', String(timeoutSeconds), json], {
      timeoutMs: (timeoutSeconds + 10) * 1000,
    });
    return (JSON.parse(out) as { return: T }).return;
  }

  async waitReady(timeoutMs: number, signal?: AbortSignal): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      throwIfAborted(signal, 'waiting for the guest');
      try {
        await this.#execute('guest-ping', undefined, 2);
        return;
      } catch (error) {
        if (Date.now() > deadline) {
          throw new Error(
            `the guest agent of ${this.domain} did not answer within ${Math.round(timeoutMs / 1000)} s (${describeError(error)}); ` +
              `the guest's console (${this.serialLog}):\n${await serialTail(this.serialLog)}`,
            { cause: error },
          );
        }
        await sleep(250);
      }
    }
  }

  async exec(script: string, options: { timeoutMs: number; signal?: AbortSignal }): Promise<ExecResult> {
    const { pid } = await this.#execute<{ pid: number }>('guest-exec', { path: '/bin/sh', arg: ['-c', script], 'capture-output': true });
    const deadline = Date.now() + options.timeoutMs;
    const decode = (data: string | undefined): string => (data ? Buffer.from(data, 'base64').toString('utf8') : '');
    for (let pause = 20; ; pause = Math.min(pause * 2, 250)) {
      throwIfAborted(options.signal, 'the guest script');
      const status = await this.#execute<{ exited: boolean; exitcode?: number; signal?: number; 'out-data'?: string; 'err-data'?: string }>(
        'guest-exec-status',
        { pid },
      );
      if (status.exited) {
        return {
          exitCode: status.exitcode ?? (status.signal !== undefined ? 128 + status.signal : -1),
          stdout: decode(status['out-data']),
          stderr: decode(status['err-data']),
        };
      }
      if (Date.now() > deadline) throw new Error(`the guest script did not finish within ${Math.round(options.timeoutMs / 1000)} s: ${script.slice(0, 200)}`);
      await sleep(pause);
    }
  }

  release(): void {}
}

/** `virsh version`'s daemon and hypervisor versions ("libvirtd 9.0.0, QEMU 7.2.0"). */
async function libvirtVersions(h: LibvirtHarness): Promise<string> {
  const out = await h.virsh(['version']).catch(() => '');
  const daemon = /Running against daemon:\s*(\S+)/.exec(out)?.[1] ?? /Using library:\s*libvirt\s+(\S+)/.exec(out)?.[1];
  const hypervisor = /Running hypervisor:\s*(.+)/.exec(out)?.[1]?.trim();
  return [daemon ? `libvirtd ${daemon}` : 'libvirtd', hypervisor].filter(Boolean).join(', ');
}

/**
 * A libvirtd of the demo's own (in its own mount namespace, listening only in its run directory), the guest defined
 * and started on it as a domain (kernel + initrd boot, vda on virtio, the agent's channel).
 * @throws Error when libvirtd does not start or the domain does not (everything started is stopped first); AbortedError.
 */
export async function startLibvirtGuest(options: StartOptions): Promise<DemoGuest> {
  const { name, signal, say } = options;
  // The demo's own run directory, also under jest (whose shared libvirtd it must not touch).
  delete process.env[LIBVIRT_RUN_DIR_ENV];
  const ownDir = `${libvirtRunDir(process.pid)}-demo-${process.pid}`;
  const sharedDir = libvirtRunDir(process.pid);
  const emergency = (): void => {
    for (const dir of [ownDir, sharedDir]) {
      killPidFile(join(dir, 'root', 'run', 'qemu', `${name}.pid`));
      killPidFile(join(dir, 'libvirtd.pid'));
    }
    killPidFile(`/run/libvirt/qemu/${name}.pid`);
    rmSync(ownDir, { recursive: true, force: true });
  };
  emergencyKills.add(emergency);
  let h: (LibvirtHarness & { stop(): Promise<void> }) | undefined;
  let domain: TestDomain | undefined;
  let stopping: Promise<void> | undefined;
  const stop = (): Promise<void> => {
    stopping ??= (async () => {
      try {
        await domain?.remove();
      } finally {
        await h?.stop();
        // Without a mount namespace of its own (global mode) the harness hands out its shared daemon: stop that one.
        await stopSharedLibvirt();
        emergencyKills.delete(emergency);
      }
    })();
    return stopping;
  };
  try {
    const started = Date.now();
    h = await dedicatedLibvirt('demo');
    throwIfAborted(signal, 'starting the guest');
    const socket = new URL(h.uri).searchParams.get('socket') ?? h.uri;
    say(`      ${await libvirtVersions(h)}: a private libvirtd for the demo (own mount namespace; socket ${socket}), up in ${((Date.now() - started) / 1000).toFixed(1)} s`);
    domain = await defineTestDomain(h, {
      name,
      disks: [{ target: 'vda', path: options.disk, format: 'qcow2' }],
      os: { kernel: options.image.kernel, initrd: options.image.initrd, cmdline: options.image.cmdline },
      guestAgent: true,
      memoryMiB: 256,
    });
    throwIfAborted(signal, 'starting the guest');
    const serialLog = domain.serialLog ?? '';
    const pidLine = qemuPidOfDomain(h, name);
    return {
      plane: 'libvirt',
      vm: name,
      fleeceArgs: ['--connect', h.uri],
      described: [
        `libvirt domain ${name} (virsh -c '${h.uri}' dumpxml ${name}): TCG, 256 MiB, vda = the qcow2 on virtio, the agent's channel${pidLine}`,
      ],
      agent: new VirshAgent(h, name, serialLog),
      serialLog,
      stop,
    };
  } catch (error) {
    await stop().catch((stopError: unknown) => say(`      could not stop what was started: ${describeError(stopError)}`));
    throw error;
  }
}

/** "; QEMU pid N" of a running domain (libvirt's pid file), or ''. */
function qemuPidOfDomain(h: LibvirtHarness, name: string): string {
  try {
    const pid = readFileSync(hostPathOf(h, `/run/libvirt/qemu/${name}.pid`), 'utf8').trim();
    return /^\d+$/.test(pid) ? `; QEMU pid ${pid}` : '';
  } catch {
    return '';
  }
}

// ---- bare QEMU ----------------------------------------------------------------------------------------------------

/** The guest agent of a bare QEMU through its socket (one client at a time: release() before fleece uses it). */
class SocketAgent implements GuestAgent {
  #shell: GuestAgentShell | undefined;

  constructor(private readonly socket: string, private readonly serialLog: string, private readonly exited: Promise<string>) {}

  async #agent(signal?: AbortSignal): Promise<GuestAgentShell> {
    this.#shell ??= await race(GuestAgentShell.connect(this.socket), signal, 'connecting to the guest agent');
    return this.#shell;
  }

  async waitReady(timeoutMs: number, signal?: AbortSignal): Promise<void> {
    const quit = this.exited.then((why) => {
      throw new Error(`QEMU ${why}`);
    });
    quit.catch(() => undefined);
    try {
      await race(Promise.race([(async () => (await this.#agent(signal)).waitReady(timeoutMs))(), quit]), signal, 'waiting for the guest');
    } catch (error) {
      if (error instanceof AbortedError) throw error;
      throw new Error(`${describeError(error)}\nthe guest's console (${this.serialLog}):\n${await serialTail(this.serialLog)}`, { cause: error });
    }
  }

  async exec(script: string, options: { timeoutMs: number; signal?: AbortSignal }): Promise<ExecResult> {
    const agent = await this.#agent(options.signal);
    return race(agent.exec(script, { timeoutMs: options.timeoutMs }), options.signal, 'the guest script');
  }

  release(): void {
    this.#shell?.close();
    this.#shell = undefined;
  }
}

/** QEMU's `,` in option values is written `,,`. */
function optionValue(value: string): string {
  return value.replaceAll(',', ',,');
}

/**
 * `qemu-system-x86_64 -name NAME` with the real guest (TCG, 256 MiB), vda = the qcow2 on virtio-blk (nodes disk-vda and
 * disk-vda-file, device vda), a QMP socket for fleece and the agent's socket. In a process group of its own, so that a
 * Ctrl-C on the terminal reaches the demo, which stops it in order.
 * @throws Error with QEMU's stderr when it exits at once; AbortedError.
 */
export async function startQemuGuest(options: StartOptions): Promise<DemoGuest> {
  const { name, dir } = options;
  const agentSocket = join(dir, 'qga.sock');
  const qmpSocket = join(dir, 'qmp.sock');
  const serialLog = join(dir, 'serial.log');
  const args = [
    '-name', name,
    ...realGuestQemuArgs(options.image, { agentSocket, serialLog, memoryMiB: 256 }),
    '-qmp', `unix:${optionValue(qmpSocket)},server=on,wait=off`,
    '-blockdev', `driver=file,filename=${optionValue(options.disk)},node-name=disk-vda-file`,
    '-blockdev', 'driver=qcow2,file=disk-vda-file,node-name=disk-vda',
    '-device', 'virtio-blk-pci,drive=disk-vda,id=vda',
  ];
  const child: ChildProcess = spawn('qemu-system-x86_64', args, { detached: true, stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr?.on('data', (chunk: Buffer) => {
    if (stderr.length < 64 * 1024) stderr += chunk.toString();
  });
  let running = true;
  const exited = new Promise<string>((resolve) => {
    child.once('error', (error) => {
      running = false;
      resolve(`could not be started: ${error.message}`);
    });
    child.once('exit', (code, sig) => {
      running = false;
      resolve(`exited (${sig ? `signal ${sig}` : `status ${code}`})${stderr.trim() ? `: ${stderr.trim()}` : ''}`);
    });
  });
  const emergency = (): void => {
    if (running) child.kill('SIGKILL');
  };
  emergencyKills.add(emergency);
  process.once('exit', emergency);
  const agent = new SocketAgent(agentSocket, serialLog, exited);
  let stopping: Promise<void> | undefined;
  const stop = (): Promise<void> => {
    stopping ??= (async () => {
      agent.release();
      if (running) {
        child.kill('SIGTERM'); // QEMU quits cleanly on SIGTERM
        const timer = setTimeout(() => child.kill('SIGKILL'), 5_000);
        await exited;
        clearTimeout(timer);
      }
      emergencyKills.delete(emergency);
      process.removeListener('exit', emergency);
    })();
    return stopping;
  };
  // The QMP socket appears once QEMU has parsed its arguments; a QEMU that refuses them exits first.
  for (let i = 0; !existsSync(qmpSocket); i++) {
    if (!running || i > 200) {
      const why = running ? `created no QMP socket ${qmpSocket} within 10 s` : await exited;
      await stop();
      throw new Error(`qemu-system-x86_64 ${why}`);
    }
    if (options.signal?.aborted) {
      await stop();
      throw new AbortedError('starting the guest was interrupted');
    }
    await sleep(50);
  }
  return {
    plane: 'qmp',
    vm: name,
    fleeceArgs: ['--qmp', qmpSocket, '--guest-agent', agentSocket],
    described: [`qemu-system-x86_64 -name ${name} (pid ${child.pid}): TCG, 256 MiB, vda = the qcow2 on virtio-blk, QMP ${qmpSocket}, agent ${agentSocket}`],
    agent,
    serialLog,
    stop,
  };
}
