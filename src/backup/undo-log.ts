// Records every side effect of a backup job so that teardown undoes exactly what happened, in reverse, never throwing.
import { getLogger } from '../util/logger.js';

const log = getLogger('backup.undo');

/** When an effect is undone: always at teardown, or only when the backup did not succeed. */
export type UndoPolicy = 'always' | 'on-failure';

/** One side effect, as data. */
export type UndoEntry =
  /** A file fleece created (a push target or a scratch image); undone by deleting it. */
  | { kind: 'file-created'; disk: string; path: string; policy: UndoPolicy }
  /** A block node fleece added with blockdev-add; undone by blockdev-del. */
  | { kind: 'node-added'; disk: string; nodeName: string; policy: UndoPolicy }
  /** An image format written into a file by blockdev-create; nothing to undo beyond the file itself. */
  | { kind: 'image-created'; disk: string; path: string; policy: UndoPolicy }
  /** A dirty bitmap added by the transaction; undone by block-dirty-bitmap-remove. */
  | { kind: 'bitmap-added'; disk: string; node: string; name: string; policy: UndoPolicy }
  /** A block job started by the transaction; undone by cancel (force), wait until concluded, dismiss. */
  | { kind: 'job-started'; disk: string; jobId: string; policy: UndoPolicy }
  /** The NBD server of a pull backup; undone by nbd-server-stop. */
  | { kind: 'nbd-server-started'; policy: UndoPolicy }
  /** A block export of a pull backup; undone by block-export-del. */
  | { kind: 'export-added'; disk: string; id: string; policy: UndoPolicy }
  /** A QOM object (the NBD server's TLS credentials); undone by object-del, after the server that uses it stopped. */
  | { kind: 'object-added'; id: string; what: string; policy: UndoPolicy };

/** The operations that undo effects; the QEMU-backed implementation is in qemu-effects.ts, tests pass fakes. */
export interface UndoEffects {
  unlink(path: string): Promise<void>;
  blockdevDel(nodeName: string): Promise<void>;
  removeBitmap(node: string, name: string): Promise<void>;
  /** Cancels the job if it still runs, waits until it concluded, dismisses it; a job already gone is success. */
  endJob(jobId: string): Promise<void>;
  stopNbdServer(): Promise<void>;
  deleteExport(id: string): Promise<void>;
  deleteObject(id: string): Promise<void>;
}

export interface UndoOutcome {
  /** The entries whose undo failed, with their error, in the order they were tried. */
  failures: { entry: UndoEntry; error: unknown }[];
  /** The first error seen, if any. */
  firstError: unknown;
}

type EntryOf<K extends UndoEntry['kind']> = Extract<UndoEntry, { kind: K }>;

/** Per kind of effect: how it is named in logs and errors, and how it is undone. */
const EFFECTS: { [K in UndoEntry['kind']]: { describe(entry: EntryOf<K>): string; undo(entry: EntryOf<K>, effects: UndoEffects): Promise<void> } } = {
  'file-created': { describe: (e) => `file ${e.path}`, undo: (e, fx) => fx.unlink(e.path) },
  'node-added': { describe: (e) => `block node ${e.nodeName}`, undo: (e, fx) => fx.blockdevDel(e.nodeName) },
  'image-created': { describe: (e) => `image ${e.path}`, undo: async () => undefined },
  'bitmap-added': { describe: (e) => `bitmap ${e.name} on node ${e.node}`, undo: (e, fx) => fx.removeBitmap(e.node, e.name) },
  'job-started': { describe: (e) => `block job ${e.jobId}`, undo: (e, fx) => fx.endJob(e.jobId) },
  'nbd-server-started': { describe: () => 'NBD server', undo: (_e, fx) => fx.stopNbdServer() },
  'export-added': { describe: (e) => `NBD export ${e.id}`, undo: (e, fx) => fx.deleteExport(e.id) },
  'object-added': { describe: (e) => `${e.what} ${e.id}`, undo: (e, fx) => fx.deleteObject(e.id) },
};

function effectOf<K extends UndoEntry['kind']>(entry: EntryOf<K>): (typeof EFFECTS)[K] {
  return EFFECTS[entry.kind as K];
}

/** Describes an entry for logs and error messages. */
export function describeUndoEntry(entry: UndoEntry): string {
  return effectOf(entry).describe(entry as never);
}

function undoOne(entry: UndoEntry, effects: UndoEffects): Promise<void> {
  return effectOf(entry).undo(entry as never, effects);
}

/**
 * The undo log of one backup job. Effects are recorded in the order they happen; teardown runs them backwards, which
 * is the order QEMU accepts (exports before the server, jobs before their bitmaps and target nodes, format nodes
 * before file nodes, nodes before their files).
 */
export class UndoLog {
  private entries: UndoEntry[] = [];

  /** Records an effect that just happened. */
  record(entry: UndoEntry): void {
    log.debug({ entry }, 'recorded');
    this.entries.push(entry);
  }

  /** Drops entries the job already undid itself (for example a job it dismissed, a temporary bitmap it removed). */
  forget(predicate: (entry: UndoEntry) => boolean): void {
    this.entries = this.entries.filter((entry) => !predicate(entry));
  }

  /** A copy of the entries still to undo, oldest first. */
  pending(): UndoEntry[] {
    return [...this.entries];
  }

  get size(): number {
    return this.entries.length;
  }

  /**
   * Undoes the recorded effects in reverse order: every `always` entry, and the `on-failure` ones too unless the
   * backup succeeded. Never throws; every step is tried even when an earlier one failed, and the outcome keeps the
   * first error. Entries are removed from the log as they are tried, so a second call does nothing twice.
   */
  async teardown(effects: UndoEffects, options: { succeeded: boolean }): Promise<UndoOutcome> {
    const failures: UndoOutcome['failures'] = [];
    const entries = this.entries.reverse();
    this.entries = [];
    for (const entry of entries) {
      if (entry.policy === 'on-failure' && options.succeeded) continue;
      try {
        await undoOne(entry, effects);
        log.debug({ entry }, 'undone');
      } catch (error) {
        log.debug({ entry, err: error }, 'undo failed');
        failures.push({ entry, error });
      }
    }
    return { failures, firstError: failures[0]?.error };
  }

  /** Undoes everything (the backup failed or was aborted). Never throws. */
  rollback(effects: UndoEffects): Promise<UndoOutcome> {
    return this.teardown(effects, { succeeded: false });
  }
}
