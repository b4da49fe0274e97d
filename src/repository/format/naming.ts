// Names of containers and objects in a Cinder posix-layout repository, and Cinder's timestamp formats.
import { InvalidInputError } from '../../util/errors.js';

/** The chunked driver version fleece writes and reads. */
export const FORMAT_VERSION = '1.0.0';

const ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9-]{3,}$/;

/** Throws InvalidInputError unless `id` can name a backup (a UUID, or at least 4 safe characters). */
export function checkBackupId(id: string): void {
  if (!ID_PATTERN.test(id)) {
    throw new InvalidInputError(`backup id "${id}" is not valid`, { hint: 'use a UUID' });
  }
}

/** Throws InvalidInputError unless `volumeId` is safe inside an object name. */
export function checkVolumeId(volumeId: string): void {
  if (!/^[A-Za-z0-9][A-Za-z0-9._-]*$/.test(volumeId)) {
    throw new InvalidInputError(`volume id "${volumeId}" is not valid`, { hint: 'use letters, digits, ".", "_" and "-"' });
  }
}

/** The posix driver's container: `<id[0:2]>/<id[2:4]>/<id>`. */
export function containerFor(backupId: string): string {
  checkBackupId(backupId);
  return `${backupId.slice(0, 2)}/${backupId.slice(2, 4)}/${backupId}`;
}

/** `YYYYMMDDHHMMSS` in UTC (Python's utcnow().strftime("%Y%m%d%H%M%S")). */
export function objectTimestamp(date: Date): string {
  return date.toISOString().replace(/[-:T]/g, '').slice(0, 14);
}

/** `volume_<volume_id>_<YYYYMMDDHHMMSS>_backup_<backup_id>`, the posix driver's object prefix. */
export function objectPrefix(volumeId: string, date: Date, backupId: string): string {
  checkVolumeId(volumeId);
  checkBackupId(backupId);
  return `volume_${volumeId}_${objectTimestamp(date)}_backup_${backupId}`;
}

/** The n-th data object (from 1): `<prefix>-%05d`. */
export function dataObjectName(prefix: string, n: number): string {
  return `${prefix}-${String(n).padStart(5, '0')}`;
}

export function metadataName(prefix: string): string {
  return `${prefix}_metadata`;
}

export function sha256FileName(prefix: string): string {
  return `${prefix}_sha256file`;
}

/** The prefix of a `<prefix>_metadata` name, or undefined when the name is not a metadata object. */
export function prefixOfMetadataName(name: string): string | undefined {
  return name.endsWith('_metadata') ? name.slice(0, -'_metadata'.length) : undefined;
}

/** Python's str(datetime) of a naive UTC datetime: `2026-11-23 04:10:00.123456` (no fraction when zero). */
export function pythonDatetimeString(date: Date): string {
  const iso = date.toISOString(); // 2026-11-23T04:10:00.123Z
  const base = `${iso.slice(0, 10)} ${iso.slice(11, 19)}`;
  const ms = date.getUTCMilliseconds();
  return ms === 0 ? base : `${base}.${String(ms * 1000).padStart(6, '0')}`;
}
