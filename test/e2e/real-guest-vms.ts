// The real guest (scripts/guest/real-guest.ts) for the e2e tests, under libvirt and under a bare QEMU, behind one interface
// to run commands in it (the agent: virsh qemu-agent-command, or GuestAgentShell on the socket), and what a restored
// ext4 image looks like to dumpe2fs, e2fsck and debugfs.
import { execa, type ResultPromise } from 'execa';
import { copyFile, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { QmpClient } from '../../src/qmp/client.js';
import { GuestAgentShell, realGuestQemuArgs, type ExecResult, type RealGuestImage } from '../../scripts/guest/real-guest.js';
import type { LibvirtHarness } from '../harness/libvirt.js';

/** Runs things in the guest through its agent. */
export interface GuestOps {
  /** guest-exec of `/bin/sh -c script`, waiting for its end. */
  exec(script: string, timeoutMs?: number): Promise<ExecResult>;
  /** guest-exec in the background; the pid. */
  spawn(script: string): Promise<number>;
  /** Any agent command's `return`. */
  execute<T = unknown>(command: string, args?: Record<string, unknown>): Promise<T>;
  /** Waits until the agent answers (the guest booted). */
  waitReady(timeoutMs: number): Promise<void>;
  /** Lets go of the agent so that fleece can talk to it (a bare QEMU's socket takes one client); no-op under libvirt. */
  release(): void;
}

interface ExecStatus {
  exited: boolean;
  exitcode?: number;
  signal?: number;
  'out-data'?: string;
  'err-data'?: string;
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
const decode = (data: string | undefined) => (data ? Buffer.from(data, 'base64').toString('utf8') : '');

/** The guest of a libvirt domain, through `virsh qemu-agent-command` (libvirt holds the agent's socket). */
export class VirshGuest implements GuestOps {
  constructor(private readonly h: LibvirtHarness, private readonly domain: string) {}

  async execute<T = unknown>(command: string, args?: Record<string, unknown>): Promise<T> {
    const out = await this.h.virsh(['qemu-agent-command', this.domain, '--timeout', '20', JSON.stringify(args ? { execute: command, arguments: args } : { execute: command })]);
    return (JSON.parse(out) as { return: T }).return;
  }

  async spawn(script: string): Promise<number> {
    return (await this.execute<{ pid: number }>('guest-exec', { path: '/bin/sh', arg: ['-c', script] })).pid;
  }

  async exec(script: string, timeoutMs = 60_000): Promise<ExecResult> {
    const { pid } = await this.execute<{ pid: number }>('guest-exec', { path: '/bin/sh', arg: ['-c', script], 'capture-output': true });
    const deadline = Date.now() + timeoutMs;
    for (let pause = 20; ; pause = Math.min(pause * 2, 200)) {
      const status = await this.execute<ExecStatus>('guest-exec-status', { pid });
      if (status.exited) {
        return {
          exitCode: status.exitcode ?? (status.signal !== undefined ? 128 + status.signal : -1),
          stdout: decode(status['out-data']),
          stderr: decode(status['err-data']),
        };
      }
      if (Date.now() > deadline) throw new Error(`the guest script did not finish within ${timeoutMs} ms: ${script}`);
      await sleep(pause);
    }
  }

  async waitReady(timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      try {
        await this.h.virsh(['qemu-agent-command', this.domain, '--timeout', '2', '{"execute":"guest-ping"}']);
        return;
      } catch (error) {
        if (Date.now() > deadline) throw new Error(`the guest agent of ${this.domain} did not answer within ${timeoutMs} ms`, { cause: error });
        await sleep(250);
      }
    }
  }

  release(): void {}
}

/** The guest of a bare QEMU, through GuestAgentShell on its agent socket; reconnects after release(). */
export class SocketGuest implements GuestOps {
  #shell: GuestAgentShell | undefined;
  constructor(readonly socket: string) {}

  async #agent(): Promise<GuestAgentShell> {
    this.#shell ??= await GuestAgentShell.connect(this.socket);
    return this.#shell;
  }

  async execute<T = unknown>(command: string, args?: Record<string, unknown>): Promise<T> {
    return (await this.#agent()).execute<T>(command, args);
  }

  async spawn(script: string): Promise<number> {
    return (await this.#agent()).spawn(script);
  }

  async exec(script: string, timeoutMs = 60_000): Promise<ExecResult> {
    return (await this.#agent()).exec(script, { timeoutMs });
  }

  async waitReady(timeoutMs: number): Promise<void> {
    await (await this.#agent()).waitReady(timeoutMs);
  }

  release(): void {
    this.#shell?.close();
    this.#shell = undefined;
  }
}

export interface BareRealGuest {
  name: string;
  /** For the test (quit, leftovers). */
  qmp: QmpClient;
  /** For fleece (--qmp). */
  fleeceQmp: string;
  agentSocket: string;
  serialLog: string;
  disk: string;
  stop(): Promise<void>;
}

/**
 * `qemu-system-x86_64 -name NAME` with the real guest on `disk` (qcow2, vda: node disk-vda), two QMP sockets (one for
 * the test, one for fleece) and the agent on `dir/qga.sock`.
 * @throws Error with QEMU's output when it exits or its QMP socket does not answer within 10 s.
 */
export async function startBareRealGuest(dir: string, image: RealGuestImage, name: string, disk: string): Promise<BareRealGuest> {
  const agentSocket = join(dir, 'qga.sock');
  const serialLog = join(dir, 'serial.log');
  const testQmp = join(dir, 'qmp.sock');
  const fleeceQmp = join(dir, 'qmp-fleece.sock');
  const child: ResultPromise = execa(
    'qemu-system-x86_64',
    [
      '-name', name,
      ...realGuestQemuArgs(image, { agentSocket, serialLog }),
      '-qmp', `unix:${testQmp},server=on,wait=off`,
      '-qmp', `unix:${fleeceQmp},server=on,wait=off`,
      '-blockdev', `driver=file,filename=${disk},node-name=disk-vda-file`,
      '-blockdev', 'driver=qcow2,file=disk-vda-file,node-name=disk-vda',
      '-device', 'virtio-blk-pci,drive=disk-vda,id=vda',
    ],
    { reject: false, stdin: 'ignore', cleanup: true, all: true },
  );
  let running = child.pid !== undefined;
  const exited = child.then(() => undefined, () => undefined).finally(() => {
    running = false;
  });
  let qmp: QmpClient | undefined;
  const deadline = Date.now() + 10_000;
  while (!qmp) {
    try {
      qmp = await QmpClient.connect({ path: testQmp }, { timeoutMs: 2000, name: 'real-guest-e2e' });
    } catch (error) {
      if (Date.now() > deadline || !running) {
        if (running) child.kill('SIGKILL');
        await exited;
        throw new Error(`QEMU ${name} did not start: ${String((await child).all ?? '')}`, { cause: error });
      }
      await sleep(50);
    }
  }
  const client = qmp;
  return {
    name,
    qmp: client,
    fleeceQmp,
    agentSocket,
    serialLog,
    disk,
    stop: async () => {
      if (!client.closed) await client.execute('quit', undefined, { timeoutMs: 2000 }).catch(() => undefined);
      await client.close().catch(() => undefined);
      if (running) {
        const timer = setTimeout(() => child.kill('SIGKILL'), 3000);
        await exited;
        clearTimeout(timer);
      }
    },
  };
}

export interface Ext4State {
  /** `Filesystem features:` of dumpe2fs -h. */
  features: string[];
  /** `e2fsck -fn` of the image as it is (no journal replay: -n never writes). */
  fsck: { exitCode: number; output: string };
  /** `e2fsck -fn` after the journal was replayed on a copy (`e2fsck -E journal_only -y`): what a mount would see. */
  fsckAfterRecovery: { exitCode: number; output: string };
  /** `debugfs -R 'cat PATH'` of each asked file on the recovered copy (undefined when it is not there). */
  files: Record<string, Buffer | undefined>;
}

/** What dumpe2fs, e2fsck and debugfs say of the ext4 image `raw` (left as it is; a copy is recovered and removed). */
export async function inspectExt4(raw: string, files: string[] = []): Promise<Ext4State> {
  const header = await execa('dumpe2fs', ['-h', raw], { reject: false, stderr: 'ignore' });
  const features = (/^Filesystem features:\s*(.*)$/m.exec(header.stdout)?.[1] ?? '').trim().split(/\s+/).filter(Boolean);
  const fsck = await execa('e2fsck', ['-fn', raw], { reject: false, all: true });
  const copy = `${raw}.recovered`;
  await copyFile(raw, copy);
  try {
    await execa('e2fsck', ['-E', 'journal_only', '-y', copy], { reject: false, all: true });
    const after = await execa('e2fsck', ['-fn', copy], { reject: false, all: true });
    const contents: Record<string, Buffer | undefined> = {};
    for (const file of files) {
      const out = await execa('debugfs', ['-R', `cat ${file}`, copy], { reject: false, stderr: 'pipe', encoding: 'buffer', stripFinalNewline: false });
      contents[file] = /File not found/.test(Buffer.from(out.stderr).toString()) ? undefined : Buffer.from(out.stdout);
    }
    return {
      features,
      fsck: { exitCode: fsck.exitCode ?? -1, output: String(fsck.all ?? '') },
      fsckAfterRecovery: { exitCode: after.exitCode ?? -1, output: String(after.all ?? '') },
      files: contents,
    };
  } finally {
    await rm(copy, { force: true });
  }
}

/** The serial log, for failure messages. */
export async function serialTail(path: string | undefined, lines = 30): Promise<string> {
  if (!path) return '(no serial log)';
  const text = await readFile(path, 'utf8').catch(() => '(no serial log)');
  return text.split('\n').slice(-lines).join('\n');
}
