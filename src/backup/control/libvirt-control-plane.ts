// The libvirt control plane: libvirt drives QEMU. A pull backup (virDomainBackupBegin with a backup XML and a
// checkpoint XML: one libvirt job, one point in time for every disk), read over libvirt's NBD export, ended with
// virDomainAbortJob (a pull job never completes by itself). Checkpoints are libvirt's own (`virsh checkpoint-list`).
// Never a QMP client or qemu-monitor-command on a libvirt domain: libvirt owns its monitor.
import { randomBytes } from 'node:crypto';
import { mkdir, rm, unlink } from 'node:fs/promises';
import { createServer, type AddressInfo } from 'node:net';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import {
  LibvirtConnection,
  LibvirtError,
  VIR_ERR_CHECKPOINT_INCONSISTENT,
  VIR_ERR_NO_DOMAIN_CHECKPOINT,
  VIR_ERR_OPERATION_INVALID,
} from '../../../native/libvirt/index.js';
import type { NbdTls } from '../../nbd/nbd-tls.js';
import type { CheckpointCheck, CheckpointDiskCheck } from '../../checkpoint/manager.js';
import { escapeXml, parseCheckpointXml } from '../../checkpoint/checkpoint-xml.js';
import { checkpointBitmaps, type Checkpoint } from '../../checkpoint/model.js';
import { ConflictError, InvalidInputError, describeError } from '../../util/errors.js';
import { getLogger } from '../../util/logger.js';
import { CheckpointBitmapInvalidError, type BeginRequest, type CheckpointDeletion, type ControlPlane, type DiskExport, type Inspection, type PointInTime, type SourceDisk } from './control-plane.js';
import { deleteLibvirtCheckpoint } from './libvirt-checkpoint-delete.js';
import { domainDisks } from './libvirt-domain-disks.js';

const log = getLogger('backup.libvirt');

export interface LibvirtControlPlaneOptions {
  /** The domain's name. */
  vm: string;
  conn: LibvirtConnection;
  /** Where scratch images go (created 0700; libvirt's QEMU must be able to write there). */
  scratchDir: string;
  /** Where the NBD socket goes (a 0700 directory). */
  runDir: string;
  /** Closes the connection when the plane is closed (the plane opened it). */
  ownsConnection?: boolean;
  /** The URI `conn` is open on: named in the journal, so that another process can clean up. */
  connect?: string;
  /**
   * Export over NBD with TLS instead of a unix socket: libvirt's `<server transport='tcp' name='127.0.0.1'
   * port='<free>' tls='yes'/>`, libvirt reading its server certificates from qemu.conf's backup_tls_x509_cert_dir
   * (default /etc/pki/qemu); the reader uses these client credentials (x509 only: libvirt has no PSK for backups).
   */
  tls?: NbdTls;
}

/** A TCP port on 127.0.0.1 that nobody listens on right now (libvirt's NBD server takes it a moment later). */
async function freeLoopbackPort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

/** Sizes of the domain's disks, as libvirt's block info gives them (capacity = guest-visible size). */
async function diskSizes(conn: LibvirtConnection, vm: string, targets: string[]): Promise<Map<string, number>> {
  const sizes = new Map<string, number>();
  for (const target of targets) sizes.set(target, (await conn.blockInfo(vm, target)).capacity);
  return sizes;
}

/**
 * The state of one checkpoint on each of its disks. libvirt computes a checkpoint's size by merging its bitmaps,
 * and refuses with VIR_ERR_CHECKPOINT_INCONSISTENT ("missing or broken bitmap 'cp' for disk 'vda'") when one is
 * gone or broken: that is the check libvirt itself makes before an incremental backup.
 */
async function checkCheckpoint(conn: LibvirtConnection, vm: string, cp: Checkpoint): Promise<CheckpointCheck> {
  const bitmaps = checkpointBitmaps(cp);
  const disks: CheckpointDiskCheck[] = bitmaps.map(({ disk, bitmap }) => ({ checkpoint: cp.name, disk, bitmap, state: 'ok' }));
  try {
    await conn.checkpointXml(vm, cp.name, { size: true, noDomain: true });
  } catch (error) {
    const message = error instanceof LibvirtError ? error.libvirtMessage : describeError(error);
    const named = disks.filter((d) => message.includes(`'${d.disk}'`));
    for (const d of named.length > 0 ? named : disks) {
      d.state = /missing/.test(message) ? 'missing' : 'inconsistent';
      d.detail = message;
    }
  }
  return { name: cp.name, valid: disks.every((d) => d.state === 'ok'), disks };
}

/** libvirt's checkpoints of a domain, parsed, with their state. */
export async function libvirtCheckpoints(
  conn: LibvirtConnection,
  vm: string,
  options: { validate: boolean },
): Promise<{ checkpoints: Checkpoint[]; checks: CheckpointCheck[]; unreadable: string[] }> {
  const checkpoints: Checkpoint[] = [];
  const unreadable: string[] = [];
  for (const name of await conn.listCheckpoints(vm)) {
    try {
      const def = parseCheckpointXml(await conn.checkpointXml(vm, name, { noDomain: true }));
      checkpoints.push({ ...def, creationTime: def.creationTime ?? 0 });
    } catch (error) {
      log.warn({ vm, checkpoint: name, err: error }, 'a libvirt checkpoint could not be read; it is not used');
      unreadable.push(name);
    }
  }
  const checks: CheckpointCheck[] = [];
  if (options.validate) for (const cp of checkpoints) checks.push(await checkCheckpoint(conn, vm, cp));
  return { checkpoints, checks, unreadable };
}

/** Where libvirt's NBD server listens: a unix socket, or TCP with TLS. */
export type LibvirtBackupServer = { socket: string } | { tlsPort: number };

/** The pull `<domainbackup>` fleece gives libvirt (exported for tests). */
export function libvirtBackupXml(server: LibvirtBackupServer, disks: { target: string; incrementalFrom?: string; scratch: string }[], all: string[]): string {
  const element = 'socket' in server
    ? `  <server transport='unix' socket='${escapeXml(server.socket)}'/>`
    : `  <server transport='tcp' name='127.0.0.1' port='${server.tlsPort}' tls='yes'/>`;
  const lines = ["<domainbackup mode='pull'>", element, '  <disks>'];
  for (const target of all) {
    const d = disks.find((x) => x.target === target);
    if (!d) {
      lines.push(`    <disk name='${escapeXml(target)}' backup='no'/>`);
      continue;
    }
    const mode = d.incrementalFrom ? ` backupmode='incremental' incremental='${escapeXml(d.incrementalFrom)}'` : " backupmode='full'";
    lines.push(`    <disk name='${escapeXml(target)}' backup='yes' type='file'${mode}>`);
    lines.push(`      <scratch file='${escapeXml(d.scratch)}'/>`);
    lines.push('    </disk>');
  }
  lines.push('  </disks>', '</domainbackup>');
  return `${lines.join('\n')}\n`;
}

function checkpointXml(name: string, bitmapDisks: string[], all: string[]): string {
  const disks = all.map((t) => `    <disk name='${escapeXml(t)}' checkpoint='${bitmapDisks.includes(t) ? 'bitmap' : 'no'}'/>`);
  return `<domaincheckpoint>\n  <name>${escapeXml(name)}</name>\n  <disks>\n${disks.join('\n')}\n  </disks>\n</domaincheckpoint>\n`;
}

/** How long fleece tries to reach libvirtd again after its connection died (a restart takes a few seconds). */
const RECONNECT_MS = 60_000;

/** A new connection to `uri` once libvirtd answers again; the last open error after RECONNECT_MS. */
async function reconnect(uri: string, vm: string, lost: unknown): Promise<LibvirtConnection> {
  log.warn({ vm, uri, err: lost }, 'the connection to libvirtd died (libvirtd restarted?); connecting again');
  const deadline = Date.now() + RECONNECT_MS;
  for (;;) {
    try {
      const conn = await LibvirtConnection.open(uri, { openTimeoutMs: 10_000 });
      log.info({ vm, uri }, 'connected to libvirtd again');
      return conn;
    } catch (error) {
      if (Date.now() > deadline) throw error;
      await delay(500);
    }
  }
}

export class LibvirtControlPlane implements ControlPlane {
  readonly kind = 'libvirt' as const;
  readonly vm: string;
  /**
   * The domain XML and disk sizes inspect() read, taken once by the begin() that follows it (a backup calls them
   * back to back): each is a libvirt round trip per disk that begin() would otherwise repeat (issue 11: fixed cost).
   */
  #inspected: { xml: string; sizes: Map<string, number> } | undefined;
  /** The connection now: the one given, or the one this plane opened after the given one died. */
  #conn: LibvirtConnection;
  #reopening: Promise<LibvirtConnection> | undefined;
  /** Why connecting again failed, once it did: later calls fail with it at once (the journal keeps what is owed). */
  #unreachable: unknown;
  /** What the user should hear about the connection (it died and was opened again), told by the next finish(). */
  #connectionNotes: string[] = [];

  constructor(private readonly options: LibvirtControlPlaneOptions) {
    this.vm = options.vm;
    this.#conn = options.conn;
  }

  /**
   * Runs `call` on the connection; when it fails because the connection is dead (libvirtd restarted: the domain, its
   * QEMU, its NBD export and libvirt's backup job live on, libvirt 9.0 picks the job up again), connects again to the
   * same URI and runs it once more there. Throws the call's error when the connection is alive, else the new one's.
   */
  async #withLibvirt<T>(call: (conn: LibvirtConnection) => Promise<T>): Promise<T> {
    const conn = this.#conn;
    try {
      return await call(conn);
    } catch (error) {
      if (await conn.alive().catch(() => false)) throw error;
      if (this.#unreachable !== undefined) throw this.#unreachable; // tried for RECONNECT_MS already: fail at once
      if (this.#conn === conn) {
        this.#reopening ??= reconnect(conn.uri, this.vm, error).catch((failure: unknown) => {
          this.#unreachable = failure;
          throw failure;
        }).finally(() => {
          this.#reopening = undefined;
        });
        const fresh = await this.#reopening;
        if (this.#conn === conn) {
          if (conn !== this.options.conn || this.options.ownsConnection) await conn.close({ timeoutMs: 1000 });
          this.#conn = fresh;
          this.#connectionNotes.push(`the connection to libvirtd at ${conn.uri} died (${describeError(error)}: libvirtd restarted?); fleece connected again and went on`);
        }
      }
      return call(this.#conn);
    }
  }

  async inspect(): Promise<Inspection> {
    const conn = this.#conn;
    const xml = await conn.domainXml(this.vm);
    const { disks, skipped } = domainDisks(xml);
    const sizes = await diskSizes(conn, this.vm, disks.map((d) => d.target));
    this.#inspected = { xml, sizes };
    const { checkpoints, checks } = await libvirtCheckpoints(conn, this.vm, { validate: true });
    const source: SourceDisk[] = disks.map((d) => ({
      target: d.target, virtualSize: sizes.get(d.target)!, format: d.format, ...(d.path ? { path: d.path } : {}),
    }));
    return { disks: source, skipped, checkpoints, checks, canCheckpoint: true, guestConfig: { format: 'libvirt-domain-xml', text: xml } };
  }

  /** Refuses at once when the domain runs a job (a second BackupBegin would block 30 s on libvirt's job lock). */
  async #refuseBusy(): Promise<void> {
    const stats = await this.#conn.jobStats(this.vm);
    if (stats.type !== 'none') {
      const op = stats.operation !== undefined ? ` (operation ${stats.operation})` : '';
      throw new ConflictError(`another backup job is already running for VM '${this.vm}': libvirt reports an active ${stats.type} job${op}`, {
        hint: `wait for it to end, or abort it with \`fleece domjobabort ${this.vm}\` (or \`virsh domjobabort ${this.vm}\`)`,
      });
    }
  }

  async begin(request: BeginRequest): Promise<PointInTime> {
    const { conn, vm } = { conn: this.#conn, vm: this.vm };
    const inspected = this.#inspected;
    this.#inspected = undefined;
    await this.#refuseBusy();
    const xml = inspected?.xml ?? await conn.domainXml(vm);
    const all = domainDisks(xml);
    const allTargets = [...all.disks.map((d) => d.target), ...all.skipped.map((d) => d.target)];
    for (const d of request.disks) {
      if (!all.disks.some((x) => x.target === d.target)) throw new InvalidInputError(`VM '${vm}' has no disk '${d.target}' that can be backed up`);
    }
    const wanted = request.disks.map((d) => d.target);
    const sizes = inspected && wanted.every((t) => inspected.sizes.has(t)) ? inspected.sizes : await diskSizes(conn, vm, wanted);
    const tag = randomBytes(3).toString('hex');
    await mkdir(this.options.runDir, { recursive: true, mode: 0o700 });
    await mkdir(this.options.scratchDir, { recursive: true, mode: 0o700 });
    // A private directory per job: libvirt creates the socket, fleece removes the directory.
    const socketDir = join(this.options.runDir, `${vm}-${tag}`);
    await mkdir(socketDir, { mode: 0o700 });
    const socket = join(socketDir, 'nbd.sock');
    const tls = this.options.tls;
    if (tls && tls.type !== 'x509') {
      await rm(socketDir, { recursive: true, force: true });
      throw new InvalidInputError(`VM '${vm}': libvirt's backup exports take x509 certificates only, not a pre-shared key`, {
        hint: 'give the VM a TLS certificate directory (tlsDir) instead of tlsPsk',
      });
    }
    const server: LibvirtBackupServer = tls ? { tlsPort: await freeLoopbackPort() } : { socket };
    const disks = request.disks.map((d) => ({ ...d, scratch: join(this.options.scratchDir, `${vm}-${d.target}-${tag}.qcow2`) }));
    const checkpoint = request.checkpoint && request.checkpoint.disks.length > 0 ? request.checkpoint : undefined;
    const warnings: string[] = [];
    const { journal } = request;
    const connect = this.options.connect;
    const journalEffect = (withCheckpoint: boolean) => ({
      kind: 'libvirt-pull' as const, connect: connect!, domain: vm, socketDir, files: disks.map((d) => d.scratch),
      ...(withCheckpoint && checkpoint ? { newCheckpoint: checkpoint.name } : {}),
    });
    const journalId = journal && connect ? await journal.record(journalEffect(true)) : undefined;
    const forget = async () => {
      if (journalId !== undefined) await journal?.clear(journalId).catch(() => undefined);
    };

    const quiesce = request.quiesce ?? 'no';
    let frozen = false;
    let frozenId: number | undefined;
    if (quiesce !== 'no') {
      try {
        frozenId = journal && connect ? await journal.record({ kind: 'guest-frozen', connect, domain: vm }) : undefined;
        await conn.fsFreeze(vm);
        frozen = true;
      } catch (error) {
        if (frozenId !== undefined) await journal?.clear(frozenId);
        frozenId = undefined;
        if (quiesce === 'yes') {
          await rm(socketDir, { recursive: true, force: true });
          await forget();
          throw new InvalidInputError(`cannot quiesce VM '${vm}': ${describeError(error)}`, {
            cause: error,
            hint: 'install and start qemu-guest-agent in the guest and give the domain a guest-agent channel, or use --quiesce=try',
          });
        }
        warnings.push(`could not freeze the guest's file systems (${describeError(error)}): the backup is crash-consistent, not quiesced`);
      }
    }
    let begun = false;
    try {
      await conn.backupBegin(vm, libvirtBackupXml(server, disks, allTargets), checkpoint ? checkpointXml(checkpoint.name, checkpoint.disks, allTargets) : null);
      begun = true;
    } catch (error) {
      await rm(socketDir, { recursive: true, force: true });
      await forget();
      // libvirt checks each incremental's bitmaps itself: a missing or broken one makes that disk full.
      const broken = error instanceof LibvirtError && error.libvirtCode === VIR_ERR_CHECKPOINT_INCONSISTENT
        ? /bitmap '([^']+)' for disk '([^']+)'/.exec(error.libvirtMessage) : null;
      if (broken) throw new CheckpointBitmapInvalidError(broken[1]!, broken[2]!, (error as LibvirtError).libvirtMessage, { cause: error });
      throw error;
    } finally {
      if (frozen) {
        const thawed = await conn.fsThaw(vm).then(() => true, (error: unknown) => {
          warnings.push(`thawing the guest's file systems failed: ${describeError(error)}`);
          return false;
        });
        if (thawed && frozenId !== undefined) await journal?.clear(frozenId);
      }
    }
    log.info({ vm, checkpoint: checkpoint?.name, disks: disks.map((d) => d.target) }, 'libvirt pull backup begun');

    const exports: DiskExport[] = disks.map((d) => ({
      disk: d.target,
      exportName: d.target,
      ...('socket' in server
        ? { socket, uri: `nbd+unix:///${encodeURIComponent(d.target)}?socket=${socket}` }
        : { uri: `nbds://127.0.0.1:${server.tlsPort}/${encodeURIComponent(d.target)}`, tls: tls! }),
      context: d.incrementalFrom ? `qemu:dirty-bitmap:backup-${d.target}` : 'base:allocation',
      ...(d.incrementalFrom ? { incrementalFrom: d.incrementalFrom } : {}),
      size: sizes.get(d.target)!,
    }));

    let ended: Promise<void> | undefined;
    const endJob = (): Promise<void> => {
      ended ??= (async () => {
        if (!begun) return;
        try {
          await this.#withLibvirt((c) => c.abortJob(vm));
          // libvirt ends a pull job when QEMU's job events arrive, after virDomainAbortJob returns: wait for it, so
          // that nothing of the backup runs once fleece says it is done.
          for (let i = 0; i < 600 && (await this.#withLibvirt((c) => c.jobStats(vm))).type !== 'none'; i++) await delay(50);
        } catch (error) {
          // The job is already gone (it failed on its own, or someone aborted it): nothing to end.
          if (!(error instanceof LibvirtError && error.libvirtCode === VIR_ERR_OPERATION_INVALID)) throw error;
        } finally {
          await rm(socketDir, { recursive: true, force: true });
          for (const d of disks) await unlink(d.scratch).catch(() => undefined);
        }
      })();
      return ended;
    };
    // On a domain destroyed mid-read too (libvirt deletes no checkpoint of a shut-off domain: fleece does).
    const removeCheckpoint = async () => {
      if (checkpoint) await this.#withLibvirt((c) => deleteLibvirtCheckpoint(c, vm, checkpoint.name));
    };
    return {
      checkpoint: checkpoint?.name ?? null,
      exports,
      warnings,
      finish: async () => {
        // The job must still be there: a pull job that ended on its own failed (scratch full, QEMU gone).
        const stats = await this.#withLibvirt((c) => c.jobStats(vm));
        if (stats.type !== 'unbounded') {
          await endJob().catch(() => undefined);
          await removeCheckpoint().catch(() => undefined);
          await forget();
          throw new ConflictError(`the libvirt backup job of VM '${vm}' ended before fleece finished reading (job state: ${stats.type})`, {
            hint: 'see libvirtd\'s log for why (a full scratch directory, QEMU stopped); the new checkpoint was removed, take the backup again',
          });
        }
        // Every disk is durable: the new checkpoint is kept from here on, whatever happens to the job.
        if (journalId !== undefined) await journal?.update(journalId, journalEffect(false));
        await endJob();
        await forget();
        return { warnings: this.#connectionNotes.splice(0) };
      },
      abort: async (reason?: unknown) => {
        log.info({ vm, reason: reason === undefined ? undefined : describeError(reason) }, 'aborting the libvirt pull backup');
        await endJob().catch((error: unknown) => log.warn({ vm, err: error }, 'virDomainAbortJob failed'));
        const removed = await removeCheckpoint().then(() => true, (error: unknown) => {
          log.warn({ vm, err: error }, 'the new checkpoint could not be removed');
          return false;
        });
        if (removed) await forget();
      },
      lost: async () => {
        const again = 'start the VM again and take the backup again (the earlier backups are unchanged)';
        try {
          const { state } = await this.#withLibvirt((c) => c.domainState(vm));
          if (state !== 'running' && state !== 'paused' && state !== 'blocked') return { why: `domain '${vm}' stopped (libvirt reports it ${state})`, hint: again };
          const stats = await this.#withLibvirt((c) => c.jobStats(vm));
          if (stats.type === 'unbounded') return undefined;
          return { why: `libvirt's backup job of domain '${vm}' ended (job state: ${stats.type})`, hint: 'see libvirtd\'s log for why, then take the backup again' };
        } catch (error) {
          return {
            why: `libvirtd at ${this.#conn.uri} cannot be reached (${describeError(error)})`,
            hint: `start libvirtd again: the next fleece command for VM '${vm}' (or \`fleece recover ${vm}\`) then ends libvirt's backup job and removes the new checkpoint`,
          };
        }
      },
    };
  }

  /** virDomainCheckpointDelete of each (libvirt removes the bitmaps from every disk and its metadata). */
  async deleteCheckpoints(names: readonly string[]): Promise<CheckpointDeletion> {
    const result: CheckpointDeletion = { deleted: [], skipped: [] };
    for (const name of names) {
      try {
        await this.#withLibvirt((c) => c.checkpointDelete(this.vm, name));
        result.deleted.push(name);
      } catch (error) {
        result.skipped.push({ name, reason: error instanceof LibvirtError ? error.libvirtMessage : describeError(error) });
      }
    }
    return result;
  }

  async close(): Promise<void> {
    if (this.#conn !== this.options.conn) await this.#conn.close();
    if (this.options.ownsConnection) await this.options.conn.close();
  }
}
