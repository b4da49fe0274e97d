// The QMP client against real qemu-storage-daemon and qemu-system-x86_64 (7.2).
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { QmpClient } from '../../../src/qmp/client.js';
import { QmpClosedError, QmpConnectError, QmpError } from '../../../src/qmp/errors.js';
import type { QmpEvent } from '../../../src/qmp/messages.js';
import { createDisk, qemuImg, startQemuSystem, startStorageDaemon, type QemuInstance } from '../../harness/qemu.js';
import { useQemuSystem, useStorageDaemon, type QemuFixture } from '../../harness/jest-qemu.js';
import { makeTempDir, removeTempDir } from '../../harness/temp-dir.js';

interface NamedNode {
  'node-name': string;
  drv: string;
}

async function nodeNames(qemu: QemuInstance): Promise<string[]> {
  const nodes = await qemu.client.execute<NamedNode[]>('query-named-block-nodes', { flat: true });
  return nodes.map((n) => n['node-name']);
}

const kinds = [
  ['qemu-storage-daemon', useStorageDaemon, startStorageDaemon],
  ['qemu-system-x86_64', useQemuSystem, startQemuSystem],
] as const;

describe.each(kinds)('QMP client on %s', (_name, useQemu, start) => {
  const fixture: QemuFixture = useQemu(async (dir) => {
    const path = join(dir, 'vda.qcow2');
    await createDisk(path, { size: '16M' });
    return { disks: [{ path, target: 'vda' }], extraQmpSockets: 1 };
  }, 'all');

  it('greets with QEMU 7.x and query-version agrees', async () => {
    const { client } = fixture.qemu;
    expect(client.greeting.version.qemu.major).toBe(7);
    expect(client.state).toBe('running');
    const version = await client.execute<{ qemu: { major: number; minor: number; micro: number } }>('query-version');
    expect(version.qemu).toEqual(client.greeting.version.qemu);
  });

  it('sees the disk nodes the harness configured', async () => {
    expect(await nodeNames(fixture.qemu)).toEqual(expect.arrayContaining(['disk-vda', 'disk-vda-file']));
  });

  it('adds and deletes block nodes (seen in query-named-block-nodes, then gone)', async () => {
    const path = join(fixture.dir, 'extra.qcow2');
    await createDisk(path, { size: '8M' });
    const { client } = fixture.qemu;
    await client.execute('blockdev-add', { driver: 'file', filename: path, 'node-name': 'extra-file' });
    await client.execute('blockdev-add', { driver: 'qcow2', file: 'extra-file', 'node-name': 'extra' });
    const nodes = await client.execute<Array<NamedNode & { image: { 'virtual-size': number } }>>(
      'query-named-block-nodes',
      { flat: true },
    );
    const extra = nodes.find((n) => n['node-name'] === 'extra');
    expect(extra?.drv).toBe('qcow2');
    expect(extra?.image['virtual-size']).toBe(8 * 1024 * 1024);
    await client.execute('blockdev-del', { 'node-name': 'extra' });
    await client.execute('blockdev-del', { 'node-name': 'extra-file' });
    const after = await nodeNames(fixture.qemu);
    expect(after).not.toContain('extra');
    expect(after).not.toContain('extra-file');
  });

  it('runs a blockdev-create job, awaiting JOB_STATUS_CHANGE to concluded, then dismisses it', async () => {
    const path = join(fixture.dir, 'created.qcow2');
    await writeFile(path, '');
    const { client } = fixture.qemu;
    await client.execute('blockdev-add', { driver: 'file', filename: path, 'node-name': 'created-file' });
    const jobId = 'create-test';
    const events = client.listen('JOB_STATUS_CHANGE');
    const seen: string[] = [];
    try {
      await client.execute('blockdev-create', {
        'job-id': jobId,
        options: { driver: 'qcow2', file: 'created-file', size: 32 * 1024 * 1024 },
      });
      const mine = (e: QmpEvent): boolean => e.data.id === jobId;
      for (;;) {
        const event = await events.next(mine, { timeoutMs: 10_000 });
        seen.push(String(event.data.status));
        if (event.data.status === 'concluded') break;
      }
      const jobs = await client.execute<Array<{ id: string; status: string; error?: string }>>('query-jobs');
      expect(jobs.find((j) => j.id === jobId)).toMatchObject({ status: 'concluded' });
      expect(jobs.find((j) => j.id === jobId)?.error).toBeUndefined();
      await client.execute('job-dismiss', { id: jobId });
      const gone = await events.next(mine, { timeoutMs: 5000 });
      expect(gone.data.status).toBe('null');
    } finally {
      events.close();
    }
    expect(seen[0]).toBe('created');
    expect(seen).toContain('running');
    expect(seen.at(-1)).toBe('concluded');
    await client.execute('blockdev-del', { 'node-name': 'created-file' });
    const info = JSON.parse(await qemuImg(['info', '--output=json', path])) as { format: string; 'virtual-size': number };
    expect(info.format).toBe('qcow2');
    expect(info['virtual-size']).toBe(32 * 1024 * 1024);
  });

  it('surfaces an error reply as QmpError with class GenericError', async () => {
    const error = await fixture.qemu.client
      .execute('blockdev-del', { 'node-name': 'no-such-node' })
      .catch((e: unknown) => e);
    expect(error).toBeInstanceOf(QmpError);
    expect((error as QmpError).errorClass).toBe('GenericError');
    expect((error as QmpError).desc).toContain('no-such-node');
    expect((error as QmpError).command).toBe('blockdev-del');
    expect((error as QmpError).args).toEqual({ 'node-name': 'no-such-node' });
    const unknown = await fixture.qemu.client.execute('no-such-command').catch((e: unknown) => e);
    expect((unknown as QmpError).errorClass).toBe('CommandNotFound');
    // the connection is still usable
    await expect(fixture.qemu.client.execute('query-version')).resolves.toBeDefined();
  });

  it('serves concurrent commands in flight on one connection', async () => {
    const { client } = fixture.qemu;
    const results = await Promise.all([
      client.execute<{ qemu: { major: number } }>('query-version'),
      client.execute<NamedNode[]>('query-named-block-nodes', { flat: true }),
      client.execute('blockdev-del', { 'node-name': 'nope' }).catch((e: unknown) => e),
      client.execute<Array<{ name: string }>>('query-commands'),
    ]);
    expect(results[0].qemu.major).toBe(7);
    expect(results[1].map((n) => n['node-name'])).toContain('disk-vda');
    expect(results[2]).toBeInstanceOf(QmpError);
    expect(results[3].map((c) => c.name)).toContain('blockdev-backup');
  });

  it('accepts a second owner on the extra QMP socket', async () => {
    const second = await QmpClient.connect({ path: fixture.qemu.extraQmpPaths[0]! });
    try {
      const version = await second.execute<{ qemu: { major: number } }>('query-version');
      expect(version.qemu.major).toBe(7);
      expect(await second.execute<NamedNode[]>('query-named-block-nodes', { flat: true })).toEqual(
        expect.arrayContaining([expect.objectContaining({ 'node-name': 'disk-vda' })]),
      );
    } finally {
      await second.close();
    }
    expect(fixture.qemu.client.closed).toBe(false);
  });

  it('refuses a second client on a monitor that already has one (QmpConnectError after the timeout)', async () => {
    const error = await QmpClient.connect({ path: fixture.qemu.qmpPath }, { timeoutMs: 300 }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(QmpConnectError);
    expect((error as Error).message).toContain(fixture.qemu.qmpPath);
    await expect(fixture.qemu.client.execute('query-version')).resolves.toBeDefined();
  });

  describe('when QEMU goes away', () => {
    let dir: string;
    let qemu: QemuInstance | undefined;
    beforeEach(async () => {
      dir = await makeTempDir('qmp-kill');
      const path = join(dir, 'vda.qcow2');
      await createDisk(path, { size: '4M' });
      qemu = await start({ disks: [{ path, target: 'vda' }], dir });
    });
    afterEach(async () => {
      await qemu?.stop();
      await removeTempDir(dir);
    });

    it('rejects a command in flight with QmpClosedError naming the socket when QEMU is SIGKILLed', async () => {
      const q = qemu!;
      const listener = q.client.listen('SHUTDOWN');
      // Freeze QEMU so that it cannot answer: the command is certainly in flight when the kill lands.
      process.kill(q.pid, 'SIGSTOP');
      const pending = [
        q.client.execute('query-version').catch((e: unknown) => e),
        q.client.execute('query-named-block-nodes').catch((e: unknown) => e),
        listener.next().catch((e: unknown) => e),
      ];
      await new Promise((resolve) => setTimeout(resolve, 50));
      await q.kill();
      for (const error of await Promise.all(pending)) {
        expect(error).toBeInstanceOf(QmpClosedError);
        expect((error as Error).message).toContain(q.qmpPath);
      }
      expect(q.client.closed).toBe(true);
      await expect(q.client.execute('query-version')).rejects.toBeInstanceOf(QmpClosedError);
    });

    it('closes the connection cleanly on quit', async () => {
      const q = qemu!;
      const closed = new Promise<Error>((resolve) => q.client.onClose(resolve));
      await q.client.execute('quit').catch((e: unknown) => {
        // QEMU may close the socket before its reply is read; that is a QmpClosedError, never a hang.
        expect(e).toBeInstanceOf(QmpClosedError);
      });
      expect(await closed).toBeInstanceOf(QmpClosedError);
      await expect(q.client.execute('query-version')).rejects.toBeInstanceOf(QmpClosedError);
    });
  });
});
