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

/**
 * How a repository lays out its backups: `posix`, Cinder's posix driver (a container per backup,
 * `<id[0:2]>/<id[2:4]>/<id>`, prefix `volume_<volume>_<timestamp>_backup_<id>`), or `s3`, Cinder's S3 driver
 * (container `volume_<volume>/<timestamp>`, prefix `volume_<volume>/<timestamp>/az_<az>_backup_<id>`: object names are
 * keys relative to the repository root, '/' included, as that driver's _metadata lists them).
 */
export type RepositoryLayout = 'posix' | 's3';

/** Cinder's default storage_availability_zone, in the S3 driver's object names. */
export const DEFAULT_AVAILABILITY_ZONE = 'nova';

/** Throws InvalidInputError unless `az` is safe inside an object name. */
export function checkAvailabilityZone(az: string): void {
  if (!/^[A-Za-z0-9][A-Za-z0-9._-]*$/.test(az)) {
    throw new InvalidInputError(`availability zone "${az}" is not valid`, { hint: 'use letters, digits, ".", "_" and "-"' });
  }
}

/** The container and object prefix of one backup in `layout`. Throws InvalidInputError for unsafe ids. */
export function backupLocation(layout: RepositoryLayout, volumeId: string, date: Date, backupId: string, az = DEFAULT_AVAILABILITY_ZONE): { container: string; prefix: string } {
  if (layout === 'posix') return { container: containerFor(backupId), prefix: objectPrefix(volumeId, date, backupId) };
  checkVolumeId(volumeId);
  checkBackupId(backupId);
  checkAvailabilityZone(az);
  const container = `volume_${volumeId}/${objectTimestamp(date)}`;
  return { container, prefix: `${container}/az_${az}_backup_${backupId}` };
}

/** A container of the s3 layout (`volume_<volume id>/<14 digits>`). */
export function isS3LayoutContainer(container: string): boolean {
  return /^volume_[A-Za-z0-9][A-Za-z0-9._-]*\/\d{14}$/.test(container);
}

const LEASE_PREFIX = 'fleece_lease_';

/** How long gc takes a lease that was not refreshed for alive: 15 minutes (writers refresh it every minute). */
export const DEFAULT_LEASE_TTL_MS = 15 * 60_000;

/**
 * The lease object of a backup being written (s3 layout): `<container>/fleece_lease_<backup id>`, outside the
 * backup's prefix so that Cinder's restore check (the container's objects with the prefix = the manifest's) never
 * sees it.
 */
export function leaseName(container: string, backupId: string): string {
  checkBackupId(backupId);
  return `${container}/${LEASE_PREFIX}${backupId}`;
}

/** The backup id of a lease object's name, or undefined when the name is not a lease. */
export function leaseBackupId(name: string): string | undefined {
  const base = name.slice(name.lastIndexOf('/') + 1);
  if (!base.startsWith(LEASE_PREFIX)) return undefined;
  const id = base.slice(LEASE_PREFIX.length);
  return ID_PATTERN.test(id) ? id : undefined;
}

/** Whether `name` (a base name or a key) is an object of the backup `backupId`: `…_backup_<id>-NNNNN`, `_metadata`, `_sha256file`. */
export function belongsToBackup(name: string, backupId: string): boolean {
  const at = name.lastIndexOf(`_backup_${backupId}`);
  if (at < 0) return false;
  const rest = name.slice(at + `_backup_${backupId}`.length);
  return /^-\d{5,}$/.test(rest) || rest === '_metadata' || rest === '_sha256file';
}
