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
  | { kind: 'export-added'; disk: string; id: string; policy: UndoPolicy };

/** The operations that undo effects; the QEMU-backed implementation is in undo-effects.ts, tests pass fakes. */
export interface UndoEffects {
  unlink(path: string): Promise<void>;
  blockdevDel(nodeName: string): Promise<void>;
  removeBitmap(node: string, name: string): Promise<void>;
  /** Cancels the job if it still runs, waits until it concluded, dismisses it; a job already gone is success. */
  endJob(jobId: string): Promise<void>;
  stopNbdServer(): Promise<void>;
  deleteExport(id: string): Promise<void>;
}

export interface UndoOutcome {
  /** The entries whose undo failed, with their error, in the order they were tried. */
  failures: { entry: UndoEntry; error: unknown }[];
  /** The first error seen, if any. */
  firstError: unknown;
}

/** Describes an entry for logs and error messages. */
export function describeUndoEntry(entry: UndoEntry): string {
  switch (entry.kind) {
    case 'file-created':
      return `file ${entry.path}`;
    case 'node-added':
      return `block node ${entry.nodeName}`;
    case 'image-created':
      return `image ${entry.path}`;
    case 'bitmap-added':
      return `bitmap ${entry.name} on node ${entry.node}`;
    case 'job-started':
      return `block job ${entry.jobId}`;
    case 'nbd-server-started':
      return 'NBD server';
    case 'export-added':
      return `NBD export ${entry.id}`;
  }
}

async function undoOne(entry: UndoEntry, effects: UndoEffects): Promise<void> {
  switch (entry.kind) {
    case 'file-created':
      return effects.unlink(entry.path);
    case 'node-added':
      return effects.blockdevDel(entry.nodeName);
    case 'image-created':
      return;
    case 'bitmap-added':
      return effects.removeBitmap(entry.node, entry.name);
    case 'job-started':
      return effects.endJob(entry.jobId);
    case 'nbd-server-started':
      return effects.stopNbdServer();
    case 'export-added':
      return effects.deleteExport(entry.id);
  }
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
