// The control-plane port: whoever drives QEMU (fleece over QMP, libvirt, a storage daemon over a shut-off VM's
// images) gives the same thing — one point in time for every disk, as NBD exports with their extents context —
// and ends it with finish (the new checkpoint stays) or abort (nothing of the attempt stays).
//
//   inspect() ──► disks, checkpoints and their state, the guest's configuration
//   begin()   ──► PointInTime { exports[] }  ──► consumer reads ──► finish() | abort()
import type { CheckpointCheck } from '../../checkpoint/manager.js';
import type { Checkpoint } from '../../checkpoint/model.js';
import type { NbdTls } from '../../nbd/nbd-tls.js';
import { FleeceError } from '../../util/errors.js';
import type { BackupJournal } from '../journal.js';

export type ControlPlaneKind = 'qmp' | 'libvirt' | 'offline';

/** A disk as every control plane describes it. */
export interface SourceDisk {
  /** The guest's name for it: QEMU's qdev id or libvirt's target (`vda`, `sdb`). */
  target: string;
  virtualSize: number;
  /** Image format of the top image (`qcow2`, `raw`); only qcow2 holds checkpoint bitmaps. */
  format: string;
  /** The image file, when there is one (shown to the user, kept with the backup). */
  path?: string;
}

/** The guest's configuration at backup time, kept with the backup (libvirt: the domain XML). */
export interface GuestConfig {
  format: 'libvirt-domain-xml';
  text: string;
}

export interface Inspection {
  /** The disks that can be backed up. */
  disks: SourceDisk[];
  /** Disks the control plane cannot back up, each with why (cdrom, read-only, network …). */
  skipped: { target: string; reason: string }[];
  /** The VM's checkpoints and the state of their bitmaps on each disk. */
  checkpoints: Checkpoint[];
  checks: CheckpointCheck[];
  /** False when this control plane cannot make a new checkpoint (a shut-off VM: libvirt needs QEMU for that). */
  canCheckpoint: boolean;
  guestConfig?: GuestConfig;
}

export type QuiesceMode = 'no' | 'yes' | 'try';

export interface BeginRequest {
  /** The disks, each full or incremental since a checkpoint. */
  disks: { target: string; incrementalFrom?: string }[];
  /** The new checkpoint, made atomically with the point in time on the disks that can hold a bitmap. */
  checkpoint?: { name: string; disks: string[] };
  /** Freeze the guest's file systems while the point in time is taken; `try` warns and goes on without an agent. */
  quiesce?: QuiesceMode;
  /** Let the reader discard what it read from the fleecing scratch (where the export allows). */
  exportWritable?: boolean;
  /** Every effect is recorded here before it is made, and cleared once undone or kept. */
  journal?: BackupJournal;
  signal?: AbortSignal;
}

/** What a reader needs to read one disk as it was at the point in time. */
export interface DiskExport {
  disk: string;
  exportName: string;
  /** The unix socket, when the server listens on one. */
  socket?: string;
  /** `nbd+unix:///vda?socket=…`, `nbd://host:port/vda`, or over TLS `nbds://host:port/vda`. */
  uri: string;
  /** The TLS credentials the reader must use (the server refuses plaintext then). */
  tls?: NbdTls;
  /** The meta context to read extents from: `qemu:dirty-bitmap:…` (incremental) or `base:allocation` (full). */
  context: string;
  incrementalFrom?: string;
  size: number;
}

/** A point in time of every disk, exported until finish or abort. */
export interface PointInTime {
  /** The checkpoint this point in time is (null when none was made). */
  readonly checkpoint: string | null;
  readonly exports: readonly DiskExport[];
  /** Things the user should know (a disk whose export cannot trim, quiesce skipped …). */
  readonly warnings: readonly string[];
  /**
   * The consumer has everything: exports, jobs and scratch go, the new checkpoint stays. Throws when the point in
   * time was lost on the way (a disk's job failed); the new checkpoint is then removed.
   */
  finish(): Promise<{ warnings: string[] }>;
  /** Ends everything and removes the new checkpoint. Never throws. */
  abort(reason?: unknown): Promise<void>;
  /**
   * After the backup failed: why the hypervisor side is gone (QEMU exited or was killed, the domain was destroyed,
   * libvirtd cannot be reached) and what the user can do, or undefined when it is still there (the failure was
   * elsewhere). Never throws.
   */
  lost?(): Promise<{ why: string; hint: string } | undefined>;
}

/** One VM under one control plane. */
export interface ControlPlane {
  readonly kind: ControlPlaneKind;
  readonly vm: string;
  /** @throws the control plane's errors (QmpError, LibvirtError …) naming the VM. */
  inspect(options?: { signal?: AbortSignal }): Promise<Inspection>;
  /**
   * Takes the point in time and exports it. Throws ConflictError when a backup job of the VM runs already, and
   * the control plane's errors; on any throw nothing of the attempt stays.
   */
  begin(request: BeginRequest): Promise<PointInTime>;
  /**
   * Deletes checkpoints (their bitmaps on every disk and their metadata), one after the other. Never throws for one
   * checkpoint: each is deleted or skipped with why (a shut-off VM's, the hypervisor refused).
   */
  deleteCheckpoints(names: readonly string[], options?: { signal?: AbortSignal }): Promise<CheckpointDeletion>;
  /** Releases connections the control plane opened itself. Never throws. */
  close(): Promise<void>;
}

/** What deleteCheckpoints did. */
export interface CheckpointDeletion {
  deleted: string[];
  skipped: { name: string; reason: string }[];
}

/**
 * The hypervisor refused a checkpoint's bitmap on one disk when the point in time was taken (libvirt:
 * "checkpoint inconsistent: missing or broken bitmap 'cp' for disk 'vda'"). The backup then takes that disk full.
 */
export class CheckpointBitmapInvalidError extends FleeceError {
  constructor(
    readonly checkpoint: string,
    readonly disk: string,
    readonly detail: string,
    options: { cause?: unknown } = {},
  ) {
    super('CONFLICT', `checkpoint ${checkpoint} cannot be used for disk ${disk}: ${detail}`, {
      ...options,
      hint: `back the disk up full (fleece does so by itself unless --incremental was given), then delete the checkpoint`,
    });
  }
}
