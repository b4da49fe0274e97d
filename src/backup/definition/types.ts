// The backup definition (libvirt's <domainbackup>) as the user gave it, and its fully resolved form.

export type BackupMode = 'push' | 'pull';
export type DiskBackupMode = 'full' | 'incremental';
/** `file` (a path) or `block` (a block device: `dev=` in XML). */
export type BackupStorageType = 'file' | 'block';
export type BackupImageFormat = 'qcow2' | 'raw';

/** Where a pull mode NBD server listens. */
export type BackupServer =
  | { transport: 'unix'; socket: string }
  | { transport: 'tcp'; name: string; port?: number; tls?: boolean };

/** One `<disk>` of a backup definition, as given (nothing defaulted). */
export interface BackupDiskDefinition {
  /** The disk's target name in the VM (`vda`). */
  name: string;
  /** `backup='yes'|'no'`; undefined when the attribute is absent (libvirt treats a listed disk as yes). */
  backup?: boolean;
  /** `backupmode='full|incremental'`. */
  backupMode?: DiskBackupMode;
  /** `incremental='cpX'`: this disk's checkpoint, overriding the global `<incremental>`. */
  incremental?: string;
  /** `type='file|block'`: how `path` is given (`file=` or `dev=`). */
  type?: BackupStorageType;
  /** Push: the `<target>` path. Pull: the `<scratch>` path. */
  path?: string;
  /** `<driver type=…>` of the target or scratch image. */
  format?: BackupImageFormat;
  /** Pull: `exportname=`, the NBD export name of this disk. */
  exportName?: string;
  /** Pull: `exportbitmap=`, the name under which the incremental bitmap is exported. */
  exportBitmap?: string;
  /** Output only (backup-dumpxml): `index=` on the target or scratch element, the job's node index. */
  index?: number;
}

/** A backup definition as given: parsed XML or CLI options. Never mutated by fleece. */
export interface BackupDefinition {
  mode: BackupMode;
  /** `<incremental>cpX</incremental>`: every disk is incremental since cpX unless it says otherwise. */
  incremental?: string;
  /** Pull only. */
  server?: BackupServer;
  /** Listed disks in document order; empty = back up every disk with default settings. */
  disks: BackupDiskDefinition[];
}

/** A VM disk as resolution sees it. */
export interface BackupVmDisk {
  /** Target name (`vda`). */
  target: string;
  /** Image format of the disk's top node (`qcow2`, `raw`). */
  format: string;
  sizeBytes: number;
}

/** What resolution needs to know about the VM and the host. */
export interface ResolveBackupContext {
  /** Every disk of the VM, in the VM's order. */
  disks: readonly BackupVmDisk[];
  /** Names of the VM's checkpoints. */
  checkpoints: readonly string[];
  /** Whether a path exists (targets must not exist unless `reuseExternal`). */
  exists(path: string): boolean;
  /** Reuse existing target/scratch files (`--reuse-external`) instead of refusing them. */
  reuseExternal: boolean;
  /** Directory for push targets that the definition leaves out. */
  defaultTargetDir?: string;
  /** Directory for pull scratch images that the definition leaves out. */
  defaultScratchDir?: string;
  /** Unix socket for a pull backup without `<server>`. */
  defaultSocket?: string;
  /** Port for `<server transport='tcp'>` without `port=`. */
  defaultTcpPort?: number;
  /**
   * TLS credentials are configured for the VM: a `<server transport='tcp'>` without `tls=` then gets TLS (an explicit
   * `tls='no'` still turns it off). Default false.
   */
  tlsConfigured?: boolean;
  /** Distinguishes default file names of this job (e.g. the job's start time or new checkpoint); default `backup`. */
  fileSuffix?: string;
}

/** A disk that is not backed up. */
export interface ExcludedBackupDisk {
  name: string;
  included: false;
  /** Why: `backup='no'` given, or left out of a `<disks>` list. */
  reason: 'backup-no' | 'not-listed';
}

/** A disk that is backed up, with every default filled in. */
export interface IncludedBackupDisk {
  name: string;
  included: true;
  /** The checkpoint this disk is incremental from, or undefined for a full backup of this disk. */
  incrementalFrom?: string;
  /** Push target or pull scratch. */
  storage: { type: BackupStorageType; path: string; format: BackupImageFormat; existing: boolean };
  /** Pull only: NBD export name (default: the disk name). */
  exportName?: string;
  /** Pull incremental only: exported bitmap name (default: `backup-<disk>`). */
  exportBitmap?: string;
  /** The VM disk's size and format. */
  sizeBytes: number;
  sourceFormat: string;
}

export type ResolvedBackupDisk = ExcludedBackupDisk | IncludedBackupDisk;

/** A definition with every VM disk accounted for and every default filled in: the input of the backup plan. */
export interface ResolvedBackup {
  mode: BackupMode;
  /** The global `<incremental>`, if any (per-disk values are in each disk's `incrementalFrom`). */
  incremental?: string;
  /** Pull only: where the NBD server listens, port filled in. */
  server?: { transport: 'unix'; socket: string } | { transport: 'tcp'; name: string; port: number; tls: boolean };
  /** Every VM disk in the VM's order. */
  disks: ResolvedBackupDisk[];
}
