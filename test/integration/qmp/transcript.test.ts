// Recording a real QEMU session as a transcript, then replaying it to the same code without QEMU.
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { QmpClient, type QmpExecutor } from '../../../src/qmp/client.js';
import type { QmpEvent } from '../../../src/qmp/messages.js';
import { createDisk, startStorageDaemon, type QemuInstance } from '../../harness/qemu.js';
import { ReplayQmp } from '../../harness/qmp-replay.js';
import { parseTranscript, recordTranscript } from '../../harness/qmp-transcript.js';
import { makeTempDir, removeTempDir } from '../../harness/temp-dir.js';

/** A small piece of "higher layer" code: create a qcow2 on a file node through a job and report what it saw. */
async function createImage(qmp: QmpExecutor, path: string): Promise<{ statuses: string[]; nodes: string[] }> {
  await qmp.execute('blockdev-add', { driver: 'file', filename: path, 'node-name': 'rec-file' });
  const listener = qmp.listen('JOB_STATUS_CHANGE');
  const statuses: string[] = [];
  try {
    await qmp.execute('blockdev-create', { 'job-id': 'rec', options: { driver: 'qcow2', file: 'rec-file', size: 1 << 20 } });
    let event: QmpEvent;
    do {
      event = await listener.next((e) => e.data.id === 'rec', { timeoutMs: 10_000 });
      statuses.push(String(event.data.status));
    } while (event.data.status !== 'concluded');
    await qmp.execute('job-dismiss', { id: 'rec' });
  } finally {
    listener.close();
  }
  const nodes = await qmp.execute<Array<{ 'node-name': string }>>('query-named-block-nodes', { flat: true });
  await qmp.execute('blockdev-del', { 'node-name': 'rec-file' });
  return { statuses, nodes: nodes.map((n) => n['node-name']).sort() };
}

let dir: string;
let qemu: QemuInstance | undefined;
beforeEach(async () => {
  dir = await makeTempDir('transcript');
});
afterEach(async () => {
  await qemu?.stop();
  await removeTempDir(dir);
});

it('records real traffic in wire order and replays it to the same code with the same results', async () => {
  const disk = join(dir, 'd.qcow2');
  await createDisk(disk, { size: '4M' });
  qemu = await startStorageDaemon({ dir, disks: [{ path: disk, target: 'vda' }], extraQmpSockets: 1 });
  const recorder = recordTranscript();
  const client = await QmpClient.connect({ path: qemu.extraQmpPaths[0]! }, { trace: recorder.trace });
  const target = join(dir, 'rec.qcow2');
  await writeFile(target, '');
  let live: Awaited<ReturnType<typeof createImage>>;
  try {
    live = await createImage(client, target);
  } finally {
    await client.close();
  }
  expect(live.statuses[0]).toBe('created');
  expect(live.statuses.at(-1)).toBe('concluded');
  expect(live.nodes).toEqual(['disk-vda', 'disk-vda-file', 'rec-file']);

  const text = recorder.text();
  expect(text).not.toContain('qmp_capabilities');
  const entries = parseTranscript(text);
  expect(entries.filter((e) => e.kind === 'command').map((e) => (e.kind === 'command' ? e.execute : ''))).toEqual([
    'blockdev-add',
    'blockdev-create',
    'job-dismiss',
    'query-named-block-nodes',
    'blockdev-del',
  ]);
  // the created event precedes the blockdev-create reply on the wire, as in QEMU
  const createAt = entries.findIndex((e) => e.kind === 'command' && e.execute === 'blockdev-create');
  const createdAt = entries.findIndex((e) => e.kind === 'event' && e.event.data.status === 'created');
  const replyAt = entries.findIndex((e, i) => i > createAt && e.kind === 'return');
  expect(createdAt).toBeGreaterThan(createAt);
  expect(createdAt).toBeLessThan(replyAt);

  const replay = new ReplayQmp(entries);
  expect(await createImage(replay, target)).toEqual(live);
  replay.assertDone();
});
