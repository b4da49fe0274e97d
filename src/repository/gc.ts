// Garbage collection: removes objects that no _metadata references (crashed or cancelled backups), after a grace period.
import { throwIfAborted } from '../util/errors.js';
import { getLogger } from '../util/logger.js';
import type { ObjectStore } from './store/object-store.js';
import { parseMetadataStream } from './format/manifest.js';
import { metadataName, prefixOfMetadataName, sha256FileName } from './format/naming.js';

const log = getLogger('repository.gc');

/** Default grace: a day, far longer than any backup that is still writing its objects. */
export const DEFAULT_GC_GRACE_MS = 24 * 3600 * 1000;

export interface GcOptions {
  /** Only objects older than this are removed (a running backup has no _metadata yet). Default 24 h. */
  gracePeriodMs?: number;
  /** Report what would be removed, remove nothing. */
  dryRun?: boolean;
  now?: Date;
  signal?: AbortSignal;
}

export interface GcReport {
  removed: { container: string; name: string; size: number }[];
  bytesFreed: number;
  /** Containers left alone because a manifest in them could not be read. */
  skipped: { container: string; object: string; reason: string }[];
}

/** Scans every container; throws StoreError when the store fails, AbortedError on abort. */
export async function collectGarbage(store: ObjectStore, options: GcOptions = {}): Promise<GcReport> {
  const grace = options.gracePeriodMs ?? DEFAULT_GC_GRACE_MS;
  const cutoff = (options.now ?? new Date()).getTime() - grace;
  const report: GcReport = { removed: [], bytesFreed: 0, skipped: [] };
  const containers: string[] = [];
  for await (const c of store.listContainers({ signal: options.signal })) containers.push(c);
  for (const container of containers) {
    throwIfAborted(options.signal, 'garbage collection');
    const objects = await store.list(container, '', { signal: options.signal });
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
        if (referenced.has(info.name) || info.modified.getTime() > cutoff) continue;
        if (!options.dryRun) await store.delete(container, info.name, { signal: options.signal });
        report.removed.push({ container, name: info.name, size: info.size });
        report.bytesFreed += info.size;
      }
    }
    for (const temp of await store.listTemporary(container, { signal: options.signal })) {
      if (temp.modified.getTime() > cutoff) continue;
      if (!options.dryRun) await store.deleteTemporary(container, temp.name, { signal: options.signal });
      report.removed.push({ container, name: temp.name, size: temp.size });
      report.bytesFreed += temp.size;
    }
  }
  log.debug({ removed: report.removed.length, bytes: report.bytesFreed }, 'gc done');
  return report;
}
