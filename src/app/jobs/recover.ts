// After a daemon restart: undoes what an interrupted job left in QEMU (exports, NBD server, jobs, temporary and
// unrecorded checkpoint bitmaps, fleece's nodes) and on the host (scratch images, unfinished targets, sockets).
import { unlink } from 'node:fs/promises';
import { restoreDeviceDrives } from '../../backup/fleecing-cbw.js';
import { tlsObjectIdOf } from '../../backup/plan.js';
import { endJob } from '../../backup/qemu-effects.js';
import { objectDel } from '../../qemu/nbd-export.js';
import type { CheckpointStore } from '../../checkpoint/store.js';
import { queryDisks } from '../../qemu/block-graph.js';
import type { QmpExecutor } from '../../qmp/index.js';
import { describeError } from '../../util/errors.js';
import type { JobRecord, JobRecovery } from './job-store.js';

/** What recovery did and what it could not do, for the job's error message and the log. */
export interface RecoveryReport {
  cleaned: string[];
  failures: string[];
}

async function step(report: RecoveryReport, what: string, work: () => Promise<boolean | void>): Promise<void> {
  try {
    if ((await work()) !== false) report.cleaned.push(what);
  } catch (error) {
    report.failures.push(`${what}: ${describeError(error)}`);
  }
}

async function removeFile(path: string): Promise<boolean> {
  try {
    await unlink(path);
    return true;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw error;
  }
}

/**
 * Cleans after one interrupted job. `qmp` is undefined when QEMU could not be reached (then only host files are
 * removed). `store` tells whether the new checkpoint was recorded (then its bitmaps stay). Never throws.
 */
export async function cleanupInterruptedJob(
  record: JobRecord,
  qmp: QmpExecutor | undefined,
  store: CheckpointStore,
): Promise<RecoveryReport> {
  return cleanupQmpLeftovers(record.info.vm, record.recovery, qmp, store);
}

/**
 * Removes what a fleece backup with `recovery.tag` left in QEMU (exports, the NBD server when no other export uses
 * it, jobs, temporary and unrecorded checkpoint bitmaps, its nodes) and on the host (files, socket). Nothing that
 * does not carry the tag is touched. Never throws.
 */
export async function cleanupQmpLeftovers(
  vm: string,
  recovery: JobRecovery,
  qmp: QmpExecutor | undefined,
  store: CheckpointStore,
): Promise<RecoveryReport> {
  const report: RecoveryReport = { cleaned: [], failures: [] };
  const info = { vm };
  const tag = recovery.tag;
  if (qmp && tag) {
    const mine = (id: string) => id.endsWith(`-${tag}`) || id.includes(`-${tag}-`);
    const exports = await qmp.execute<{ id: string }[]>('query-block-exports').catch(() => []);
    for (const exp of exports.filter((e) => e.id.startsWith('fleece-') && mine(e.id))) {
      await step(report, `export ${exp.id}`, () => qmp.execute('block-export-del', { id: exp.id, mode: 'hard' }).then(() => undefined));
    }
    if (recovery.nbdServer) {
      // The NBD server is QEMU's only one: stopped only when no other export (another owner's) still uses it.
      const others = await qmp.execute<{ id: string }[]>('query-block-exports').catch(() => []);
      if (others.every((e) => e.id.startsWith('fleece-') && mine(e.id))) {
        // nbd-server-stop fails when no server runs: then there was nothing to stop.
        await step(report, 'NBD server', () => qmp.execute('nbd-server-stop').then(() => true, () => false));
      }
    }
    // The NBD server's TLS credentials (fl-<tag>-tls), now that the server that used them is gone.
    const tlsId = tlsObjectIdOf(tag);
    const objects = await qmp.execute<{ name: string }[]>('qom-list', { path: '/objects' }).catch(() => []);
    if (objects.some((o) => o.name === tlsId)) await step(report, `TLS credentials ${tlsId}`, () => objectDel(qmp, tlsId));
    const jobs = await qmp.execute<{ id: string }[]>('query-jobs').catch(() => []);
    for (const job of jobs.filter((j) => (j.id.startsWith('fleece-') || j.id.startsWith('create-fl-')) && mine(j.id))) {
      await step(report, `job ${job.id}`, () => endJob(qmp, job.id, 30_000).then(() => undefined));
    }
    const nodes = await qmp.execute<{ 'node-name': string }[]>('query-named-block-nodes', { flat: true }).catch(() => []);
    const names = [...new Set(nodes.map((n) => n['node-name']).filter((n) => n.startsWith(`fl-${tag}-`)))];
    // Parents before their children: snapshot-access on the filter, the filter on the scratch, format on storage.
    const rank = (n: string) => {
      const i = ['-access', '-cbw', '-format'].findIndex((suffix) => n.endsWith(suffix));
      return i < 0 ? 3 : i;
    };
    names.sort((a, b) => rank(a) - rank(b));
    const deleteNode = (name: string) => step(report, `node ${name}`, () => qmp.execute('blockdev-del', { 'node-name': name }).then(() => undefined));
    for (const name of names.filter((n) => rank(n) === 0)) await deleteNode(name);
    // A copy-before-write fleecing (fleecing-cbw.ts) put its filter under the guest's device: once nothing reads
    // the snapshot (QEMU refuses while snapshot-access holds the filter), set the device's drive back, else the
    // filter cannot be deleted.
    await restoreDeviceDrives(qmp, tag).then(
      (restored) => report.cleaned.push(...restored.map((r) => `device ${r} set back`)),
      (error: unknown) => report.failures.push(`the guest devices' drives: ${describeError(error)}`),
    );
    for (const name of names.filter((n) => rank(n) > 0)) await deleteNode(name);
    const checkpointRecorded = recovery.newCheckpoint
      ? (await store.load(info.vm).then((chain) => chain.has(recovery.newCheckpoint as string)).catch(() => true))
      : true;
    const disks = await queryDisks(qmp).catch(() => []);
    const temp = new Set(recovery.tempBitmaps ?? []);
    for (const disk of disks) {
      for (const bitmap of disk.bitmaps) {
        const isTemp = temp.has(bitmap.name) || bitmap.name === `backup-${disk.target}`;
        const isUnrecorded = !checkpointRecorded && bitmap.name === recovery.newCheckpoint;
        if (!isTemp && !isUnrecorded) continue;
        await step(report, `bitmap ${bitmap.name} of disk ${disk.target}`, () =>
          qmp.execute('block-dirty-bitmap-remove', { node: disk.formatNode, name: bitmap.name }).then(() => undefined),
        );
      }
    }
  } else if (!qmp && tag) {
    report.failures.push(`QEMU of VM '${info.vm}' (${recovery.qmp}) was not reachable: its fleece nodes, jobs and bitmaps were not checked`);
  }
  for (const file of recovery.createdFiles ?? []) {
    await step(report, `file ${file}`, () => removeFile(file));
  }
  if (recovery.socket) await step(report, `socket ${recovery.socket}`, () => removeFile(recovery.socket as string));
  if (recovery.repository) {
    report.cleaned.push(`repository ${recovery.repository}: objects of the unfinished backup are left for \`fleece gc\``);
  }
  return report;
}
