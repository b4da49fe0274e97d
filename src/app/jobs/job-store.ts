// Durable job records: <stateDir>/jobs/<id>.json, rewritten atomically on every transition, read back after a restart.
import { mkdir, readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { writeFileAtomic } from '../../util/atomic-file.js';
import { getLogger } from '../../util/logger.js';
import type { JobInfo } from './job-info.js';

const log = getLogger('app.job-store');

/** What a restart needs to undo a job that was interrupted: the names and files the job made. */
export interface JobRecovery {
  /** The QMP socket of the VM when the job started (a bare QEMU). */
  qmp?: string;
  /** The libvirt URI of the domain (a libvirt domain). */
  connect?: string;
  /** The job tag in fleece's node/job/export names (fleeceNaming). */
  tag?: string;
  /** Temporary bitmaps the job adds (`backup-<disk>` or the export bitmap names). */
  tempBitmaps?: string[];
  /** The new checkpoint; its bitmaps are removed when the store never recorded it. */
  newCheckpoint?: string;
  /** Files fleece creates and must delete when the job did not complete (scratch images, push targets). */
  createdFiles?: string[];
  /** Pull: the NBD server fleece started and its unix socket. */
  nbdServer?: boolean;
  socket?: string;
  /** Repository jobs: the repository, whose unreferenced objects are left to gc. */
  repository?: string;
  /** backup-dumpxml of the job. */
  backupXml?: string;
  /**
   * The daemon process that ran the job (pid and start time): a repository or provider job's effects are in the
   * VM's backup journal under this owner, and the restart's reconcile of that journal is this job's cleanup.
   */
  daemon?: { pid: number; startTime: string };
}

export interface JobRecord {
  version: 1;
  info: JobInfo;
  recovery: JobRecovery;
}

const ID = /^[A-Za-z0-9][A-Za-z0-9_.-]*$/;

export class JobStore {
  readonly dir: string;

  constructor(stateDir: string) {
    this.dir = join(stateDir, 'jobs');
  }

  /** Writes the record atomically. Throws the file system's error. */
  async save(record: JobRecord): Promise<void> {
    if (!ID.test(record.info.id)) throw new Error(`job id '${record.info.id}' is not a valid file name`);
    await mkdir(this.dir, { recursive: true, mode: 0o700 });
    await writeFileAtomic(join(this.dir, `${record.info.id}.json`), `${JSON.stringify(record, null, 2)}\n`, 0o600);
  }

  /** Every readable record, oldest first; unreadable files are logged and skipped. */
  async list(): Promise<JobRecord[]> {
    let names: string[];
    try {
      names = await readdir(this.dir);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw error;
    }
    const records: JobRecord[] = [];
    for (const name of names) {
      if (!name.endsWith('.json')) continue;
      try {
        const parsed = JSON.parse(await readFile(join(this.dir, name), 'utf8')) as JobRecord;
        if (parsed?.version === 1 && parsed.info && typeof parsed.info.id === 'string') records.push(parsed);
      } catch (error) {
        log.warn({ file: name, err: error }, 'skipping an unreadable job record');
      }
    }
    return records.sort((a, b) => a.info.startedAt.localeCompare(b.info.startedAt));
  }
}
