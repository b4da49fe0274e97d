// The real guest (Debian cloud kernel, busybox initramfs, ext4 on vda, qemu-guest-agent) under TCG: it boots, writes through
// its own kernel, freezes and thaws, and a copy of its disk is crash-consistent while it writes and clean while frozen.
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { execa, type ResultPromise } from 'execa';
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { QmpClient } from '../../../src/qmp/client.js';
import { makeTempDir, removeTempDir } from '../../harness/temp-dir.js';
import {
  ensureRealGuest,
  GuestAgentShell,
  makeExt4Disk,
  realGuestQemuArgs,
  type RealGuestImage,
} from '../../../scripts/guest/real-guest.js';

const MiB = 1024 * 1024;
/** What the guest writes to /mnt/known.txt: `seq 1 5000`. */
const KNOWN = Array.from({ length: 5000 }, (_, i) => `${i + 1}\n`).join('');
const sha256 = (data: string | Buffer): string => createHash('sha256').update(data).digest('hex');

describe('the real guest under TCG', () => {
  let dir: string | undefined;
  let image: RealGuestImage;
  let qemu: ResultPromise | undefined;
  let qemuExited: Promise<void> | undefined;
  let qemuRunning = false;
  let qmp: QmpClient | undefined;
  let agent: GuestAgentShell | undefined;
  let disk: string;
  let serialLog: string;
  const timings: Record<string, number> = {};

  const serial = async (): Promise<string> => readFile(serialLog, 'utf8').catch(() => '(no serial log)');

  beforeAll(async () => {
    dir = await makeTempDir('guest');
    let t = Date.now();
    image = await ensureRealGuest({ log: (line) => process.stderr.write(`${line}\n`) });
    timings.ensureSeconds = (Date.now() - t) / 1000;
    disk = join(dir, 'vda.qcow2');
    serialLog = join(dir, 'serial.log');
    await makeExt4Disk(disk, 128 * MiB, 'qcow2');
    const agentSocket = join(dir, 'qga.sock');
    const qmpSocket = join(dir, 'qmp.sock');
    t = Date.now();
    const child = execa(
      'qemu-system-x86_64',
      [
        '-name', `fleece-test-guest-${process.pid}`,
        ...realGuestQemuArgs(image, { agentSocket, serialLog }),
        '-qmp', `unix:${qmpSocket},server=on,wait=off`,
        '-blockdev', `driver=file,filename=${disk},node-name=disk-vda-file`,
        '-blockdev', 'driver=qcow2,file=disk-vda-file,node-name=disk-vda',
        '-device', 'virtio-blk-pci,drive=disk-vda,id=vda',
      ],
      { reject: false, stdin: 'ignore', cleanup: true, all: true },
    );
    qemu = child;
    qemuRunning = child.pid !== undefined;
    qemuExited = child.then(() => undefined, () => undefined).finally(() => {
      qemuRunning = false;
    });
    const deadline = Date.now() + 10_000;
    for (;;) {
      try {
        qmp = await QmpClient.connect({ path: qmpSocket }, { timeoutMs: 2000, name: 'real-guest' });
        break;
      } catch (error) {
        if (Date.now() > deadline || !qemuRunning) {
          if (qemuRunning) child.kill('SIGKILL');
          throw new Error(`QEMU did not start: ${(await child).all ?? ''}`, { cause: error });
        }
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
    }
    agent = await GuestAgentShell.connect(agentSocket);
    try {
      await agent.waitReady(75_000);
    } catch (error) {
      throw new Error(`${(error as Error).message}\nserial log:\n${await serial()}`, { cause: error });
    }
    timings.bootSeconds = (Date.now() - t) / 1000;
    process.stderr.write(`real guest ${image.kernelVersion}: image ready in ${timings.ensureSeconds} s, booted in ${timings.bootSeconds} s\n`);
  }, 150_000);

  afterAll(async () => {
    agent?.close();
    try {
      if (qmp && !qmp.closed) await qmp.execute('quit', undefined, { timeoutMs: 2000 }).catch(() => undefined);
    } finally {
      await qmp?.close().catch(() => undefined);
      if (qemu && qemuRunning) {
        const timer = setTimeout(() => qemu?.kill('SIGKILL'), 3000);
        await qemuExited;
        clearTimeout(timer);
      }
      if (dir) await removeTempDir(dir);
    }
  }, 20_000);

  it('runs scripts through the agent: exit status, stdout and stderr come back', async () => {
    const result = await agent!.exec('echo out; echo err >&2; uname -r; exit 3');
    expect(result).toEqual({ exitCode: 3, stdout: `out\n${image.kernelVersion}\n`, stderr: 'err\n' });
  });

  it('writes a file on ext4 on vda through its own kernel and reads back its sha256', async () => {
    const result = await agent!.exec('seq 1 5000 | dd of=/mnt/known.txt conv=fsync 2>/dev/null && sha256sum /mnt/known.txt');
    expect(result.exitCode).toBe(0);
    expect(result.stdout).toBe(`${sha256(KNOWN)}  /mnt/known.txt\n`);
    const fsinfo = await agent!.execute<{ mountpoint: string; type: string; disk: { dev?: string }[] }[]>('guest-get-fsinfo');
    expect(fsinfo.map((f) => [f.mountpoint, f.type])).toEqual([['/mnt', 'ext4']]);
  });

  it('freezes and thaws its file system through the agent', async () => {
    expect(await agent!.execute('guest-fsfreeze-freeze')).toBe(1);
    try {
      expect(await agent!.execute('guest-fsfreeze-status')).toBe('frozen');
      // a frozen agent runs only ping, sync, info, status and thaw
      await expect(agent!.exec('true')).rejects.toThrow(/guest-exec.*(disabled|frozen)/);
    } finally {
      expect(await agent!.execute('guest-fsfreeze-thaw')).toBe(1);
    }
    expect(await agent!.execute('guest-fsfreeze-status')).toBe('thawed');
    expect((await agent!.exec('echo after > /mnt/after-thaw && cat /mnt/after-thaw')).stdout).toBe('after\n');
  });

  it('gives a crash-consistent copy while it writes (needs_recovery) and a clean one while frozen', async () => {
    const copy = async (name: string): Promise<{ features: string; fsck: { exitCode: number | undefined; all: string } }> => {
      const path = join(dir!, name);
      await execa('qemu-img', ['convert', '-U', '-f', 'qcow2', '-O', 'raw', disk, path]);
      const header = await execa('dumpe2fs', ['-h', path], { reject: false, stderr: 'ignore' });
      const features = /^Filesystem features:\s*(.*)$/m.exec(header.stdout)?.[1] ?? `(no features line: ${header.stdout})`;
      const fsck = await execa('e2fsck', ['-fn', path], { reject: false, all: true });
      return { features, fsck: { exitCode: fsck.exitCode, all: fsck.all ?? '' } };
    };

    const writer = await agent!.spawn(
      'i=0; while true; do dd if=/dev/urandom of=/mnt/loop-$((i % 8)) bs=64k count=4 conv=fsync 2>/dev/null; i=$((i + 1)); done',
    );
    try {
      // wait until the loop has written a few files
      const deadline = Date.now() + 20_000;
      while (Number((await agent!.exec('ls /mnt | grep -c loop-')).stdout.trim()) < 3 && Date.now() < deadline) {
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
      const live = await copy('live.raw');
      expect(live.features.split(/\s+/)).toContain('needs_recovery');
      expect(live.fsck).toMatchObject({ exitCode: 0 });
      expect(live.fsck.all).toMatch(/skipping journal recovery/);

      expect(await agent!.execute('guest-fsfreeze-freeze')).toBe(1);
      let frozen: Awaited<ReturnType<typeof copy>>;
      try {
        frozen = await copy('frozen.raw');
      } finally {
        expect(await agent!.execute('guest-fsfreeze-thaw')).toBe(1);
      }
      expect(frozen.features.split(/\s+/)).not.toContain('needs_recovery');
      expect(frozen.fsck).toMatchObject({ exitCode: 0 });
      // what the guest fsync'ed before the freeze is in the copy
      const known = await execa('debugfs', ['-R', 'cat /known.txt', join(dir!, 'frozen.raw')], { stderr: 'ignore', encoding: 'buffer', stripFinalNewline: false });
      expect(sha256(Buffer.from(known.stdout))).toBe(sha256(KNOWN));
    } finally {
      await agent!.exec(`kill ${writer}`);
    }
  }, 60_000);
});
