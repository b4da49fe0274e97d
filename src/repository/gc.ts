// Garbage collection: removes objects that no _metadata references (crashed or cancelled backups), after a grace period.
import { hostname } from 'node:os';
import { throwIfAborted } from '../util/errors.js';
import { processStartTime } from '../util/process-start.js';
import { getLogger } from '../util/logger.js';
import type { ObjectStore } from './store/object-store.js';
import { parseMetadataStream } from './format/manifest.js';
import {
  DEFAULT_LEASE_TTL_MS, belongsToBackup, isS3LayoutContainer, leaseBackupId, metadataName, prefixOfMetadataName, sha256FileName,
  type RepositoryLayout,
} from './format/naming.js';

const log = getLogger('repository.gc');

/** Default grace: a day, far longer than any backup that is still writing its objects. */
export const DEFAULT_GC_GRACE_MS = 24 * 3600 * 1000;

export interface GcOptions {
  /** Only objects older than this are removed (a running backup has no _metadata yet). Default 24 h. */
  gracePeriodMs?: number;
  /** Report what would be removed, remove nothing. */
  dryRun?: boolean;
  /**
   * A backup whose lease object was refreshed within this time is still being written: none of its objects is
   * removed, whatever their age (even with a grace of 0). Default 15 min (writers refresh every minute). A lease
   * whose writer ran on this host and is gone (pid and start time) protects nothing: its objects age as any other.
   */
  leaseTtlMs?: number;
  now?: Date;
  signal?: AbortSignal;
}

export interface GcReport {
  removed: { container: string; name: string; size: number }[];
  bytesFreed: number;
  /** Containers left alone because a manifest in them could not be read. */
  skipped: { container: string; object: string; reason: string }[];
  /** Backups left alone because their lease is alive (being written, maybe on another host). */
  leased?: { container: string; backupId: string }[];
}

/** True when the lease says its writer ran on this host and that process is gone (a reused pid has another start time). */
async function writerGone(store: ObjectStore, container: string, name: string, signal?: AbortSignal): Promise<boolean> {
  let body: { host?: unknown; pid?: unknown; start_time?: unknown };
  try {
    body = JSON.parse((await store.get(container, name, { signal })).toString('utf8')) as typeof body;
  } catch {
    return false; // unreadable (being rewritten, or not ours): it protects until it goes stale
  }
  if (body.host !== hostname() || typeof body.pid !== 'number' || typeof body.start_time !== 'string') return false;
  return processStartTime(body.pid) !== body.start_time;
}

/** An object of some backup (`…_backup_<id>-NNNNN`, `_metadata`, `_sha256file`) or a lease: what gc may remove in the s3 layout. */
const BACKUP_OBJECT = /_backup_[A-Za-z0-9][A-Za-z0-9-]{3,}(-\d{5,}|_metadata|_sha256file)$/;

/**
 * Scans every container; throws StoreError when the store fails, AbortedError on abort. In the s3 layout it looks
 * only at containers and objects named as backups are (a shared bucket may hold other things), and honours leases.
 */
export async function collectGarbage(store: ObjectStore, options: GcOptions = {}, layout: RepositoryLayout = 'posix'): Promise<GcReport> {
  const grace = options.gracePeriodMs ?? DEFAULT_GC_GRACE_MS;
  const now = (options.now ?? new Date()).getTime();
  const cutoff = now - grace;
  const leaseCutoff = now - (options.leaseTtlMs ?? DEFAULT_LEASE_TTL_MS);
  const report: GcReport = { removed: [], bytesFreed: 0, skipped: [] };
  const containers: string[] = [];
  for await (const c of store.listContainers({ signal: options.signal })) {
    if (layout !== 's3' || isS3LayoutContainer(c)) containers.push(c);
  }
  for (const container of containers) {
    throwIfAborted(options.signal, 'garbage collection');
    const objects = await store.list(container, '', { signal: options.signal });
    const live: string[] = [];
    for (const info of objects) {
      const id = leaseBackupId(info.name);
      if (id !== undefined && info.modified.getTime() > leaseCutoff && !await writerGone(store, container, info.name, options.signal)) live.push(id);
    }
    for (const backupId of live) (report.leased ??= []).push({ container, backupId });
    const leased = (name: string) => live.some((id) => belongsToBackup(name, id) || leaseBackupId(name) === id);
    const collectable = (name: string) => layout !== 's3' || BACKUP_OBJECT.test(name) || leaseBackupId(name) !== undefined;
    const referenced = new Set<string>();
    let damaged = false;
    for (const info of objects) {
      const prefix = prefixOfMetadataName(info.name);
      if (prefix === undefined) continue;
      try {
        const meta = await parseMetadataStream(store.getStream(container, info.name, { signal: options.signal }), `${container}/${info.name}`);
        referenced.add(metadataName(prefix));
        referenced.add(sha256FileName(prefix));
        for (const o of meta.objects) referenced.add(o.name);
      } catch (error) {
        damaged = true;
        report.skipped.push({ container, object: info.name, reason: (error as Error).message });
      }
    }
    if (!damaged) {
      for (const info of objects) {
        if (referenced.has(info.name) || info.modified.getTime() > cutoff || leased(info.name) || !collectable(info.name)) continue;
        if (!options.dryRun) await store.delete(container, info.name, { signal: options.signal });
        report.removed.push({ container, name: info.name, size: info.size });
        report.bytesFreed += info.size;
      }
    }
    for (const temp of await store.listTemporary(container, { signal: options.signal })) {
      if (temp.modified.getTime() > cutoff || live.some((id) => temp.name.includes(`_backup_${id}`))) continue;
      if (!options.dryRun) await store.deleteTemporary(container, temp.name, { signal: options.signal });
      report.removed.push({ container, name: temp.name, size: temp.size });
      report.bytesFreed += temp.size;
    }
  }
  log.debug({ removed: report.removed.length, bytes: report.bytesFreed }, 'gc done');
  return report;
}
