// The backup journal: every effect a backup is about to make on a VM (QEMU's nodes, jobs, exports and bitmaps, a
// libvirt job and checkpoint, a storage daemon, a frozen guest, repository backups being written) is written
// durably *before* it is made and cleared once undone or kept, in `<stateDir>/journal/<vm>.json`, with the owner's
// pid and process start time. Whoever next touches the VM finds the journal of a process that is gone (a pid reused
// by another process has another start time), undoes exactly what it lists, and goes on. The file is also the
// cross-process guard: one backup per VM at a time, whichever process starts it. A backup through an external provider
// journals its host effects (FUSE mounts, helper processes, its private directory) and what it owes the provider
// (the cleanup verbs) in the same file; a provider restore, which has no VM, in `<stateDir>/journal/_restore-<id>.json`.
import { randomBytes } from 'node:crypto';
import { mkdir, readFile, readdir, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { writeFileAtomic } from '../util/atomic-file.js';
import { ConflictError, InvalidInputError } from '../util/errors.js';
import { processStartTime } from '../util/process-start.js';

/** One effect, as data: what to undo, and where. */
export type JournalEffect =
  /** A QMP pull backup: every node, job, export and temporary bitmap named with `tag`, its files and socket. */
  | { kind: 'qmp-pull'; qmp: string; tag: string; newCheckpoint?: string; files: string[]; socket?: string; nbdServer: boolean }
  /** A libvirt pull backup job of `domain`, serving on a socket in `socketDir`; the checkpoint it creates. */
  | { kind: 'libvirt-pull'; connect: string; domain: string; newCheckpoint?: string; socketDir: string; files: string[] }
  /** A qemu-storage-daemon exporting a shut-off VM's images. */
  | { kind: 'storage-daemon'; pid: number; startTime: string; files: string[] }
  /** The guest's file systems frozen: through its agent socket (a bare QEMU) or through libvirt. */
  | { kind: 'guest-frozen'; agent?: string; connect?: string; domain?: string }
  /**
   * A backup being written into a repository (objects, maybe `_metadata`), to delete when the VM backup failed; the
   * `container` its objects go to, recorded before the first (the s3 layout's does not follow from the id).
   * `aborted`: its writer aborted (never committed) but could not remove its objects (the store failed).
   */
  | { kind: 'repository-backup'; repo: string; backupId: string; container?: string; aborted?: boolean }
  /** backup-init answered: backup-cleanup {success: false} is owed to the provider unless the backup ends. */
  | { kind: 'provider-backup'; provider: string; vm: string; backupId: string }
  /** job-init answered: job-cleanup {success: false} is owed. */
  | { kind: 'provider-job'; provider: string }
  /** restore-vm-init (and, with `volume`, restore-volume-init) answered: their cleanups are owed. */
  | { kind: 'provider-restore'; provider: string; backupId: string; volume?: string }
  /** A FUSE mount at `path` served by nbdfuse (`pid`, its own process group). */
  | { kind: 'mount'; path: string; pid?: number; startTime?: string }
  /** A helper process in its own process group (the provider's backup-vm, qemu-nbd of a restore target). */
  | { kind: 'process'; what: string; pid?: number; startTime?: string }
  /** A file or directory fleece made (removed recursively). */
  | { kind: 'path'; path: string };

export interface JournalOwner {
  pid: number;
  /** Field 22 of /proc/<pid>/stat: tells a reused pid from the owner. */
  startTime: string;
}

export interface JournalRecord {
  version: 1;
  vm: string;
  owner: JournalOwner;
  createdAt: string;
  effects: { id: number; effect: JournalEffect }[];
}

export { processStartTime };

/** True when the journal's owner still runs (same pid, same start time). */
export function ownerAlive(owner: JournalOwner): boolean {
  return processStartTime(owner.pid) === owner.startTime;
}

function journalPath(stateDir: string, vm: string): string {
  if (!/^[A-Za-z0-9][A-Za-z0-9_.+:@-]{0,199}$/.test(vm)) throw new InvalidInputError(`VM name '${vm}' cannot name a journal file`);
  return join(stateDir, 'journal', `${vm}.json`);
}

/** A provider restore's journal: a name no VM can have (VM names start with a letter or digit). */
const RESTORE_PREFIX = '_restore-';
const RESTORE_KEY = /^_restore-[0-9a-f]{8}$/;

function journalFile(stateDir: string, key: string): string {
  return RESTORE_KEY.test(key) ? join(stateDir, 'journal', `${key}.json`) : journalPath(stateDir, key);
}

/** The keys of the provider restores' journals (for readJournal / removeJournal). */
export async function restoreJournalKeys(stateDir: string): Promise<string[]> {
  const names = await readdir(join(stateDir, 'journal')).catch(() => [] as string[]);
  return names.filter((n) => n.endsWith('.json')).map((n) => n.slice(0, -'.json'.length)).filter((key) => RESTORE_KEY.test(key));
}

/**
 * The VM's journal (or a restore's, by its key), if there is one. Throws InvalidInputError naming the file when it
 * is corrupt.
 */
export async function readJournal(stateDir: string, vm: string): Promise<JournalRecord | undefined> {
  const path = journalFile(stateDir, vm);
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw error;
  }
  try {
    const record = JSON.parse(text) as JournalRecord;
    if (record.version !== 1 || !Array.isArray(record.effects)) throw new Error('not a version 1 journal');
    return record;
  } catch (error) {
    throw new InvalidInputError(`the backup journal ${path} is damaged: ${String(error)}`, {
      hint: 'check that no fleece backs this VM up, look at what it lists, then remove the file',
      cause: error,
    });
  }
}

/** Removes the VM's journal file (after a reconcile). Never throws on a file already gone. */
export async function removeJournal(stateDir: string, vm: string): Promise<void> {
  await unlink(journalFile(stateDir, vm)).catch((error: NodeJS.ErrnoException) => {
    if (error.code !== 'ENOENT') throw error;
  });
}

/** The journal of the backup this process runs on one VM. */
export class BackupJournal {
  #record: JournalRecord;
  #next = 1;
  #writing: Promise<void> = Promise.resolve();

  private constructor(private readonly path: string, record: JournalRecord) {
    this.#record = record;
  }

  /**
   * Takes the VM for this process. Throws ConflictError when a live process holds its journal (another backup of
   * the VM runs), or when a dead one left a journal nobody has reconciled yet (reconcile it first).
   */
  static async begin(stateDir: string, vm: string): Promise<BackupJournal> {
    const path = journalPath(stateDir, vm);
    const existing = await readJournal(stateDir, vm);
    if (existing) {
      if (ownerAlive(existing.owner)) {
        throw new ConflictError(`another backup job is already running for VM '${vm}' (fleece process ${existing.owner.pid})`, {
          hint: `wait for it to end, or stop that process (fleece cleans up after it the next time it touches the VM)`,
        });
      }
      throw new ConflictError(`VM '${vm}' has the journal of an interrupted backup (process ${existing.owner.pid}) that was not cleaned up`, {
        hint: `run \`fleece recover ${vm}\``,
      });
    }
    const journal = await BackupJournal.#create(stateDir, path, vm);
    // Exclusive create: of two processes starting at the same instant, one wins; the other sees a live owner.
    try {
      const { open } = await import('node:fs/promises');
      const handle = await open(path, 'wx', 0o600);
      await handle.writeFile(JSON.stringify(journal.#record));
      await handle.sync();
      await handle.close();
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'EEXIST') return BackupJournal.begin(stateDir, vm);
      throw error;
    }
    return journal;
  }

  static async #create(stateDir: string, path: string, key: string): Promise<BackupJournal> {
    await mkdir(join(stateDir, 'journal'), { recursive: true, mode: 0o700 });
    const owner: JournalOwner = { pid: process.pid, startTime: processStartTime(process.pid) ?? '' };
    return new BackupJournal(path, { version: 1, vm: key, owner, createdAt: new Date().toISOString(), effects: [] });
  }

  /** The journal of one provider restore (no VM is taken): `_restore-<random>`. */
  static async beginRestore(stateDir: string): Promise<BackupJournal> {
    const key = `${RESTORE_PREFIX}${randomBytes(4).toString('hex')}`;
    const journal = await BackupJournal.#create(stateDir, journalFile(stateDir, key), key);
    await journal.#save();
    return journal;
  }

  get vm(): string {
    return this.#record.vm;
  }

  /** What the journal lists now. */
  effects(): JournalEffect[] {
    return this.#record.effects.map((e) => e.effect);
  }

  /**
   * Writes the record as it is now, after the writes before it. A write that failed fails its own caller only: the
   * next save writes the whole record again (a rejected chain would otherwise fail every later save).
   */
  #save(): Promise<void> {
    const text = JSON.stringify(this.#record);
    const write = this.#writing.catch(() => undefined).then(() => writeFileAtomic(this.path, text, 0o600));
    this.#writing = write;
    return write;
  }

  /** Records an effect about to be made; resolves once it is durable. Returns its id. */
  async record(effect: JournalEffect): Promise<number> {
    const id = this.#next++;
    this.#record = { ...this.#record, effects: [...this.#record.effects, { id, effect }] };
    await this.#save();
    return id;
  }

  /** Replaces an effect (e.g. the new checkpoint is kept: no longer something to undo). */
  async update(id: number, effect: JournalEffect): Promise<void> {
    this.#record = { ...this.#record, effects: this.#record.effects.map((e) => (e.id === id ? { id, effect } : e)) };
    await this.#save();
  }

  /** The effect was undone, or is kept for good. */
  async clear(id: number): Promise<void> {
    this.#record = { ...this.#record, effects: this.#record.effects.filter((e) => e.id !== id) };
    await this.#save();
  }

  /**
   * The backup ended, well or not. With nothing left to undo the VM is free again; what could not be undone stays
   * listed, for the next process that touches the VM to reconcile.
   */
  async end(): Promise<void> {
    await this.#writing.catch(() => undefined);
    if (this.#record.effects.length === 0) await unlink(this.path).catch(() => undefined);
  }
}
