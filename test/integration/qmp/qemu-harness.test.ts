// The real-QEMU test harness itself: guest writes land where they should, and no process outlives stop().
import { existsSync } from 'node:fs';
import { open, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import {
  createDisk,
  livePids,
  qemuImg,
  qemuIo,
  startQemuSystem,
  startStorageDaemon,
  type QemuInstance,
} from '../../harness/qemu.js';
import { makeTempDir, removeTempDir } from '../../harness/temp-dir.js';

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

async function readBytes(path: string, offset: number, length: number): Promise<Buffer> {
  const handle = await open(path, 'r');
  try {
    const buffer = Buffer.alloc(length);
    const { bytesRead } = await handle.read(buffer, 0, length, offset);
    return buffer.subarray(0, bytesRead);
  } finally {
    await handle.close();
  }
}

const MiB = 1024 * 1024;
let dir: string;
let qemu: QemuInstance | undefined;

beforeEach(async () => {
  dir = await makeTempDir('harness');
});

afterEach(async () => {
  await qemu?.stop();
  qemu = undefined;
  await removeTempDir(dir);
});

describe('createDisk / qemuImg / qemuIo', () => {
  it('creates qcow2 and raw images of the asked size, and qemuIo writes and verifies patterns offline', async () => {
    const qcow2 = join(dir, 'a.qcow2');
    const raw = join(dir, 'b.raw');
    await createDisk(qcow2, { size: '16M' });
    await createDisk(raw, { size: 4 * MiB, format: 'raw' });
    const infoA = JSON.parse(await qemuImg(['info', '--output=json', qcow2])) as { format: string; 'virtual-size': number };
    const infoB = JSON.parse(await qemuImg(['info', '--output=json', raw])) as { format: string; 'virtual-size': number };
    expect([infoA.format, infoA['virtual-size']]).toEqual(['qcow2', 16 * MiB]);
    expect([infoB.format, infoB['virtual-size']]).toEqual(['raw', 4 * MiB]);
    await qemuIo(raw, ['write -P 0x33 1M 64k']);
    expect((await readBytes(raw, MiB, 64 * 1024)).equals(Buffer.alloc(64 * 1024, 0x33))).toBe(true);
    expect((await readBytes(raw, MiB - 1, 1))[0]).toBe(0);
    await qemuIo(qcow2, ['write -P 0x44 0 128k', 'read -P 0x44 0 128k', 'read -P 0 128k 64k']);
    await expect(qemuIo(qcow2, ['read -P 0x45 0 128k'])).rejects.toThrow(/Pattern verification failed/);
  });
});

describe('startQemuSystem', () => {
  it('guestWrite writes through the guest device; reads back via HMP and offline (qcow2 and raw)', async () => {
    const qcow2 = join(dir, 'vda.qcow2');
    const raw = join(dir, 'vdb.raw');
    await createDisk(qcow2, { size: '16M' });
    await createDisk(raw, { size: '4M', format: 'raw' });
    qemu = await startQemuSystem({
      dir,
      disks: [
        { path: qcow2, target: 'vda' },
        { path: raw, format: 'raw', target: 'vdb', nodeName: 'raw0' },
      ],
    });
    const out = await qemu.guestWrite('vda', 'write -P 0x5a 1M 1M');
    expect(out).toContain('wrote 1048576/1048576 bytes at offset 1048576');
    await qemu.guestWrite('vda', 'read -P 0x5a 1M 1M');
    await expect(qemu.guestWrite('vda', 'read -P 0x33 1M 1M')).rejects.toThrow(/Pattern verification failed/);
    await expect(qemu.guestWrite('vdz', 'read 0 4k')).rejects.toThrow(/not found/);
    await expect(qemu.guestWrite('vda', 'read 0 100M')).rejects.toThrow(/read failed/);
    await qemu.guestWrite('vdb', 'write -P 0xa5 64k 128k');
    await qemu.guestWrite('vdb', 'write -z 96k 4k');
    const nodes = await qemu.client.execute<Array<{ 'node-name': string }>>('query-named-block-nodes', { flat: true });
    expect(nodes.map((n) => n['node-name'])).toEqual(expect.arrayContaining(['disk-vda', 'raw0', 'raw0-file']));
    await qemu.stop();
    expect(existsSync(dir)).toBe(true); // the caller's dir is kept
    await qemuIo(qcow2, ['read -P 0x5a 1M 1M', 'read -P 0 0 1M', 'read -P 0 2M 1M']);
    await expect(qemuIo(qcow2, ['read -P 0x5a 0 4k'])).rejects.toThrow(/Pattern verification failed/);
    const expected = Buffer.alloc(128 * 1024, 0xa5);
    expected.fill(0, 32 * 1024, 36 * 1024);
    expect((await readBytes(raw, 64 * 1024, 128 * 1024)).equals(expected)).toBe(true);
    expect((await readBytes(raw, 0, 64 * 1024)).equals(Buffer.alloc(64 * 1024))).toBe(true);
  });

  it('puts the sockets under a fleece-test- directory named on the command line', async () => {
    qemu = await startQemuSystem({ disks: [], extraQmpSockets: 2 });
    const cmdline = (await readFile(`/proc/${qemu.pid}/cmdline`, 'utf8')).split('\0');
    expect(cmdline.join(' ')).toContain('fleece-test-');
    expect(qemu.qmpPath.startsWith(qemu.dir)).toBe(true);
    expect(qemu.extraQmpPaths).toHaveLength(2);
    for (const path of qemu.extraQmpPaths) expect(cmdline.some((arg) => arg.includes(path))).toBe(true);
  });

  it('leaves no process behind after stop(), removes the directory it made, and stop() is idempotent', async () => {
    const instance = await startQemuSystem({ disks: [] });
    qemu = instance;
    expect(alive(instance.pid)).toBe(true);
    expect(livePids()).toContain(instance.pid);
    await Promise.all([instance.stop(), instance.stop()]);
    expect(alive(instance.pid)).toBe(false);
    expect(instance.running).toBe(false);
    expect(livePids()).not.toContain(instance.pid);
    expect(instance.client.closed).toBe(true);
    expect(existsSync(instance.dir)).toBe(false);
    await instance.stop();
  });

  it('kill() ends the process at once; stop() afterwards still cleans up', async () => {
    const instance = await startQemuSystem({ disks: [] });
    qemu = instance;
    await instance.kill();
    expect(alive(instance.pid)).toBe(false);
    expect(instance.client.closed).toBe(true);
    await instance.stop();
    expect(existsSync(instance.dir)).toBe(false);
  });

  it('fails to start with QEMU stderr in the message, leaving no process behind', async () => {
    const before = livePids();
    const error = (await startQemuSystem({ dir, disks: [{ path: join(dir, 'missing.qcow2'), target: 'vda' }] }).catch(
      (e: unknown) => e,
    )) as Error;
    expect(error).toBeInstanceOf(Error);
    expect(error.message).toMatch(/qemu-system-x86_64 did not start: it exited with status 1/);
    expect(error.message).toContain('missing.qcow2');
    expect(livePids()).toEqual(before);
  });
});

describe('startStorageDaemon', () => {
  it('serves QMP with the disks as nodes, refuses guestWrite, and leaves no process after stop()', async () => {
    const path = join(dir, 'd.qcow2');
    await createDisk(path, { size: '8M' });
    const instance = await startStorageDaemon({ dir, disks: [{ path, target: 'vda' }] });
    qemu = instance;
    const cmdline = await readFile(`/proc/${instance.pid}/cmdline`, 'utf8');
    expect(cmdline).toContain('fleece-test-');
    const nodes = await instance.client.execute<Array<{ 'node-name': string }>>('query-named-block-nodes', {
      flat: true,
    });
    expect(nodes.map((n) => n['node-name']).sort()).toEqual(['disk-vda', 'disk-vda-file']);
    await expect(instance.guestWrite('vda', 'write 0 4k')).rejects.toThrow(/qemu-system/);
    await instance.stop();
    expect(alive(instance.pid)).toBe(false);
    expect(livePids()).not.toContain(instance.pid);
  });
});
