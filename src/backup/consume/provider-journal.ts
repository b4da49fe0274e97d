// The provider consumer's own journal: what a provider backup or restore is about to make on the host (a FUSE mount
// and its nbdfuse, a helper process, temporary files) and what it owes the provider (backup-cleanup / restore
// cleanups), written durably before it happens, in `<stateDir>/providers/journal/<key>.json` with the owner's pid
// and start time. The next provider backup or restore finds the journals of processes that are gone and undoes
// exactly what they list (the control plane's own effects are in the VM's backup journal, backup/journal.ts).
import { execa } from 'execa';
import { mkdir, readdir, readFile, rm, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { writeFileAtomic } from '../../util/atomic-file.js';
import { describeError } from '../../util/errors.js';
import { lazyLogger } from './lazy-logger.js';
import { ownerAlive, processStartTime, type JournalOwner } from '../journal.js';
import type { ProviderEndpoint } from './provider-client.js';

const log = lazyLogger('backup.provider-journal');

export type ProviderJournalEffect =
  /** backup-init answered: backup-cleanup {success: false} (and job-cleanup) are owed unless the backup ends. */
  | { kind: 'provider-backup'; provider: string; vm: string; backupId: string }
  /** job-init answered: job-cleanup {success: false} is owed. */
  | { kind: 'provider-job'; provider: string }
  /** restore-vm-init (and, with `volume`, restore-volume-init) answered: their cleanups are owed. */
  | { kind: 'provider-restore'; provider: string; backupId: string; volume?: string }
  /** A FUSE mount at `path` served by nbdfuse (`pid`, its own process group). */
  | { kind: 'mount'; path: string; pid?: number; startTime?: string }
  /** A helper process (qemu-nbd of a restore target, in its own process group). */
  | { kind: 'process'; what: string; pid?: number; startTime?: string }
  /** A file or directory fleece made (removed recursively). */
  | { kind: 'path'; path: string };

interface ProviderJournalRecord {
  version: 1;
  key: string;
  owner: JournalOwner;
  createdAt: string;
  effects: { id: number; effect: ProviderJournalEffect }[];
}

function journalDir(stateDir: string): string {
  return join(stateDir, 'providers', 'journal');
}

/** One provider backup's or restore's journal. */
export class ProviderJournal {
  #record: ProviderJournalRecord;
  #next = 1;
  #writing: Promise<void> = Promise.resolve();

  private constructor(private readonly path: string, record: ProviderJournalRecord) {
    this.#record = record;
  }

  /** A new journal named `key` (`backup-<vm>`, `restore-<random>`); throws when its directory cannot be made. */
  static async begin(stateDir: string, key: string): Promise<ProviderJournal> {
    const dir = journalDir(stateDir);
    await mkdir(dir, { recursive: true, mode: 0o700 });
    const owner: JournalOwner = { pid: process.pid, startTime: processStartTime(process.pid) ?? '' };
    const path = join(dir, `${key.replace(/[^A-Za-z0-9_.+-]/g, '_')}.json`);
    const journal = new ProviderJournal(path, { version: 1, key, owner, createdAt: new Date().toISOString(), effects: [] });
    await journal.#save();
    return journal;
  }

  #save(): Promise<void> {
    const text = JSON.stringify(this.#record);
    this.#writing = this.#writing.catch(() => undefined).then(() => writeFileAtomic(this.path, text, 0o600));
    return this.#writing;
  }

  effects(): ProviderJournalEffect[] {
    return this.#record.effects.map((e) => e.effect);
  }

  /** Records an effect about to be made; resolves once durable. */
  async record(effect: ProviderJournalEffect): Promise<number> {
    const id = this.#next++;
    this.#record = { ...this.#record, effects: [...this.#record.effects, { id, effect }] };
    await this.#save();
    return id;
  }

  async update(id: number, effect: ProviderJournalEffect): Promise<void> {
    this.#record = { ...this.#record, effects: this.#record.effects.map((e) => (e.id === id ? { id, effect } : e)) };
    await this.#save();
  }

  async clear(id: number): Promise<void> {
    this.#record = { ...this.#record, effects: this.#record.effects.filter((e) => e.id !== id) };
    await this.#save();
  }

  /** Removes the file when nothing is left to undo (else it stays for the next run). */
  async end(): Promise<void> {
    await this.#writing.catch(() => undefined);
    if (this.#record.effects.length === 0) await unlink(this.path).catch(() => undefined);
  }
}

/** Unmounts a FUSE mount (fusermount3 when installed, else umount; lazily when busy). Never throws. */
export async function unmountFuse(path: string): Promise<boolean> {
  for (const argv of [['fusermount3', '-u', path], ['umount', path], ['umount', '-l', path]]) {
    const result = await execa(argv[0]!, argv.slice(1), { reject: false, stdin: 'ignore' }).catch(() => undefined);
    if (result && result.exitCode === 0) return true;
  }
  return false;
}

/** Kills a process group (or the process) whose pid still has `startTime`; waits up to 5 s. Never throws. */
export async function killIfSame(pid: number | undefined, startTime: string | undefined): Promise<void> {
  if (pid === undefined || startTime === undefined || processStartTime(pid) !== startTime) return;
  for (const signal of ['SIGTERM', 'SIGKILL'] as const) {
    try {
      process.kill(-pid, signal);
    } catch {
      try {
        process.kill(pid, signal);
      } catch {
        return;
      }
    }
    for (let i = 0; i < 25 && processStartTime(pid) === startTime; i++) await delay(100);
    if (processStartTime(pid) !== startTime) return;
  }
}

export interface ProviderReconcileReport {
  key: string;
  owner: JournalOwner;
  cleaned: string[];
  failures: string[];
}

async function undo(effect: ProviderJournalEffect, owner: JournalOwner, endpointOf: (name: string) => Promise<ProviderEndpoint | undefined>, report: ProviderReconcileReport): Promise<void> {
  const why = `the fleece process that ran it (pid ${owner.pid}) was interrupted`;
  switch (effect.kind) {
    case 'mount':
      await unmountFuse(effect.path);
      await killIfSame(effect.pid, effect.startTime);
      await rm(effect.path, { force: true, recursive: true });
      report.cleaned.push(`FUSE mount ${effect.path}`);
      return;
    case 'process':
      await killIfSame(effect.pid, effect.startTime);
      report.cleaned.push(`${effect.what}${effect.pid ? ` (pid ${effect.pid})` : ''}`);
      return;
    case 'path':
      await rm(effect.path, { force: true, recursive: true });
      report.cleaned.push(effect.path);
      return;
    case 'provider-backup': {
      const endpoint = await endpointOf(effect.provider);
      if (!endpoint) {
        report.cleaned.push(`backup ${effect.backupId} of provider '${effect.provider}': the provider is no longer registered, its cleanup was skipped`);
        return;
      }
      await endpoint.call('backup-cleanup', { vm: effect.vm, 'backup-id': effect.backupId, success: false, error: why });
      report.cleaned.push(`backup-cleanup {success: false} of backup ${effect.backupId} at provider '${effect.provider}'`);
      return;
    }
    case 'provider-job': {
      const endpoint = await endpointOf(effect.provider);
      if (endpoint) await endpoint.call('job-cleanup', { success: false });
      return;
    }
    case 'provider-restore': {
      const endpoint = await endpointOf(effect.provider);
      if (!endpoint) return;
      if (effect.volume !== undefined) {
        await endpoint.call('restore-volume-cleanup', { 'backup-id': effect.backupId, volume: effect.volume, success: false });
      } else {
        await endpoint.call('restore-vm-cleanup', { 'backup-id': effect.backupId, success: false });
      }
      report.cleaned.push(`restore cleanup of backup ${effect.backupId} at provider '${effect.provider}'`);
    }
  }
}

/**
 * Undoes the journals of provider backups and restores whose process is gone, newest effect first; a journal is
 * removed once everything it lists is undone. Never throws; returns what it did.
 */
export async function reconcileProviderJournals(
  stateDir: string,
  endpointOf: (name: string) => Promise<ProviderEndpoint | undefined>,
): Promise<ProviderReconcileReport[]> {
  const dir = journalDir(stateDir);
  const names = await readdir(dir).catch(() => [] as string[]);
  const reports: ProviderReconcileReport[] = [];
  for (const name of names.filter((n) => n.endsWith('.json') && !n.startsWith('.'))) {
    const path = join(dir, name);
    let record: ProviderJournalRecord;
    try {
      record = JSON.parse(await readFile(path, 'utf8')) as ProviderJournalRecord;
      if (record.version !== 1 || !Array.isArray(record.effects)) throw new Error('not a version 1 journal');
    } catch (error) {
      log.warn({ path, err: error }, 'an unreadable provider journal was left alone');
      continue;
    }
    if (ownerAlive(record.owner)) continue;
    const report: ProviderReconcileReport = { key: record.key, owner: record.owner, cleaned: [], failures: [] };
    for (const { effect } of [...record.effects].reverse()) {
      try {
        await undo(effect, record.owner, endpointOf, report);
      } catch (error) {
        report.failures.push(`${effect.kind}: ${describeError(error)}`);
      }
    }
    // What failed against a provider is not retried forever: the provider was told, or could not be.
    await unlink(path).catch(() => undefined);
    log.info({ ...report }, 'reconciled an interrupted provider backup or restore');
    reports.push(report);
  }
  return reports;
}
