// A restore through an external provider into a new raw or qcow2 image, by the mechanism the provider chooses:
// `qemu-img` (the provider names a raw image path or NBD URI; fleece runs `qemu-img convert` from it) or `nbd-target`
// (fleece creates the image and exports it writable with qemu-nbd on a socket in a private 0700 directory; the
// provider writes the volume there). restore-volume-cleanup and restore-vm-cleanup always run once their init did.
// The image appears at --out only when everything succeeded (a temporary file beside it, renamed).
import { execa } from 'execa';
import { randomBytes } from 'node:crypto';
import { access, mkdir, readFile, rename, rm } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { ConflictError, FleeceError, InvalidInputError, NotFoundError, describeError, throwIfAborted } from '../../util/errors.js';
import { lazyLogger } from './lazy-logger.js';
import { processStartTime, type BackupJournal } from '../journal.js';
import type { ProviderEndpoint } from './provider-client.js';
import { ProviderError } from './provider-contract.js';
import { killIfSame } from './host-cleanup.js';

const log = lazyLogger('backup.provider-restore');

export interface ProviderRestoreOptions {
  endpoint: ProviderEndpoint;
  backupId: string;
  /** The volume (disk) to restore; may be left out when the backup holds one. */
  volume?: string;
  out: string;
  format: 'raw' | 'qcow2';
  overwrite?: boolean;
  /** A private 0700 directory (created when missing): the restore target's socket, provider temporary files. */
  workDir: string;
  journal?: BackupJournal;
  signal?: AbortSignal;
}

export interface ProviderRestoreSummary {
  provider: string;
  backupId: string;
  volume: string;
  mechanism: 'qemu-img' | 'nbd-target';
  out: string;
  format: 'raw' | 'qcow2';
  size: number;
  durationMs: number;
}

async function imageSize(path: string, format: string, signal?: AbortSignal): Promise<number> {
  const { stdout } = await execa('qemu-img', ['info', '--output=json', '-f', format, path], { ...(signal ? { cancelSignal: signal } : {}) });
  return (JSON.parse(stdout) as { 'virtual-size': number })['virtual-size'];
}

/** A writable NBD export of `image` by qemu-nbd (daemonized once it listens), stopped by `stop()` (flushes). */
async function serveImage(image: string, format: string, socket: string, name: string, journal: BackupJournal | undefined) {
  const pidFile = `${socket}.pid`;
  const id = await journal?.record({ kind: 'process', what: `qemu-nbd serving ${image}` });
  try {
    await execa('qemu-nbd', ['--fork', `--pid-file=${pidFile}`, '-f', format, '-k', socket, '-x', name, '--shared=8', '--cache=none', '--aio=threads', image], { stdin: 'ignore' });
  } catch (error) {
    if (id !== undefined) await journal?.clear(id);
    throw new FleeceError('NBD', `qemu-nbd could not export the restore target ${image}: ${describeError(error)}`, { cause: error, hint: 'install qemu-utils' });
  }
  const pid = Number((await readFile(pidFile, 'utf8')).trim());
  const startTime = processStartTime(pid);
  if (id !== undefined) await journal?.update(id, { kind: 'process', what: `qemu-nbd serving ${image}`, pid, ...(startTime ? { startTime } : {}) });
  return {
    uri: `nbd+unix:///${encodeURIComponent(name)}?socket=${socket}`,
    async stop(): Promise<void> {
      // SIGTERM: qemu-nbd closes the image (flushing it) and exits.
      if (startTime !== undefined && processStartTime(pid) === startTime) {
        try {
          process.kill(pid, 'SIGTERM');
        } catch {
          // gone
        }
        for (let i = 0; i < 100 && processStartTime(pid) === startTime; i++) await delay(50);
      }
      await killIfSame(pid, startTime);
      await rm(pidFile, { force: true });
      await rm(socket, { force: true });
      if (id !== undefined) await journal?.clear(id).catch(() => undefined);
    },
  };
}

/**
 * Restores one volume of a provider's backup into `out`.
 * @throws ConflictError (out exists), ProviderError (naming the verb and what was wrong), InvalidInputError (no
 *   such volume), NotFoundError, FleeceError (qemu-img / qemu-nbd failed), AbortedError. Nothing is left at `out`.
 */
export async function restoreFromProvider(options: ProviderRestoreOptions): Promise<ProviderRestoreSummary> {
  const started = Date.now();
  const { endpoint, backupId, signal, journal: pj } = options;
  const provider = endpoint.name;
  const exists = await access(options.out).then(() => true, () => false);
  if (exists && !options.overwrite) throw new ConflictError(`the restore target ${options.out} already exists`, { hint: 'choose a new path, or pass --force to replace it' });
  await mkdir(options.workDir, { recursive: true, mode: 0o700 });
  const tmp = join(dirname(options.out), `.${basename(options.out)}.${randomBytes(4).toString('hex')}.tmp`);
  const tmpId = await pj?.record({ kind: 'path', path: tmp });
  const call = { ...(signal ? { signal } : {}), workDir: options.workDir };
  const quiet = { workDir: options.workDir };
  let vmInit = false;
  /** The volume restore-volume-init was called for (its cleanup is owed from then on). */
  let volumeCalled: string | undefined;
  let ok = false;
  let vmJournal: number | undefined;
  let volumeJournal: number | undefined;
  try {
    const { mechanism } = await endpoint.call('restore-get-mechanism', { 'backup-id': backupId }, call);
    vmJournal = await pj?.record({ kind: 'provider-restore', provider, backupId });
    vmInit = true;
    const init = await endpoint.call('restore-vm-init', { 'backup-id': backupId }, call);
    const names = Object.keys(init.volumes);
    if (names.length === 0) throw new ProviderError(provider, 'restore-vm-init', 'contract', `listed no volume in backup ${backupId}`);
    const volume = options.volume ?? (names.length === 1 ? names[0]! : undefined);
    if (volume === undefined) {
      throw new InvalidInputError(`backup ${backupId} of provider '${provider}' holds volumes ${names.join(', ')}: name one`, { hint: `pass --disk ${names[0]}` });
    }
    const entry = init.volumes[volume];
    if (!entry) throw new NotFoundError(`backup ${backupId} of provider '${provider}' has no volume '${volume}'`, { hint: `its volumes: ${names.join(', ')}` });
    const size = entry.size;
    volumeJournal = await pj?.record({ kind: 'provider-restore', provider, backupId, volume });

    if (mechanism === 'qemu-img') {
      volumeCalled = volume;
      const reply = await endpoint.call('restore-volume-init', { 'backup-id': backupId, volume, mechanism, info: { size } }, call);
      const path = reply['qemu-img-path'];
      if (!path) throw new ProviderError(provider, 'restore-volume-init', 'contract', "answered without 'qemu-img-path' for the qemu-img mechanism");
      const found = await imageSize(path, 'raw', signal).catch((error: unknown) => {
        throw new ProviderError(provider, 'restore-volume-init', 'exit', `named ${path}, which qemu-img cannot read: ${describeError(error)}`);
      });
      if (found !== size) throw new ProviderError(provider, 'restore-volume-init', 'check', `named ${path} of ${found} bytes, but volume ${volume} has ${size}`);
      try {
        await execa('qemu-img', ['convert', '-f', 'raw', '-O', options.format, ...(options.format === 'raw' ? ['-S', '4k'] : []), path, tmp], { ...(signal ? { cancelSignal: signal } : {}) });
      } catch (error) {
        throwIfAborted(signal, `the restore of backup ${backupId}`);
        throw new FleeceError('INTERNAL', `qemu-img convert from ${path} failed: ${describeError(error)}`, { cause: error });
      }
    } else {
      await execa('qemu-img', ['create', '-q', '-f', options.format, tmp, String(size)]);
      const target = await serveImage(tmp, options.format, join(options.workDir, 'target.sock'), volume, pj);
      try {
        volumeCalled = volume;
        await endpoint.call('restore-volume-init', {
          'backup-id': backupId, volume, mechanism, info: { size, 'nbd-uri': target.uri, 'nbd-socket': join(options.workDir, 'target.sock'), 'nbd-export': volume },
        }, call);
      } finally {
        await target.stop();
      }
    }
    throwIfAborted(signal, `the restore of backup ${backupId}`);
    const restored = await imageSize(tmp, options.format, signal);
    if (restored !== size) throw new FleeceError('INTEGRITY', `the restored image has ${restored} bytes, not ${size}`);
    if (exists) await rm(options.out, { force: true });
    await rename(tmp, options.out);
    ok = true;
    return { provider, backupId, volume, mechanism, out: options.out, format: options.format, size, durationMs: Date.now() - started };
  } finally {
    if (!ok) await rm(tmp, { force: true }).catch(() => undefined);
    if (tmpId !== undefined) await pj?.clear(tmpId).catch(() => undefined);
    if (volumeCalled !== undefined) {
      await endpoint.call('restore-volume-cleanup', { 'backup-id': backupId, volume: volumeCalled, success: ok }, quiet).catch((e: unknown) => log.warn({ provider, err: e }, 'restore-volume-cleanup failed'));
    }
    if (volumeJournal !== undefined) await pj?.clear(volumeJournal).catch(() => undefined);
    if (vmInit) await endpoint.call('restore-vm-cleanup', { 'backup-id': backupId, success: ok }, quiet).catch((e: unknown) => log.warn({ provider, err: e }, 'restore-vm-cleanup failed'));
    if (vmJournal !== undefined) await pj?.clear(vmJournal).catch(() => undefined);
  }
}
