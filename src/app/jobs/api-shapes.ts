// The daemon API's reply shapes as plain types, for clients (the CLI) that may not import the daemon layer.
import type { JobInfo } from './job-info.js';

export type { JobInfo, JobKind, JobState, ExportInfo, DiskProgress } from './job-info.js';

/** GET /v1/health. */
export interface Health {
  version: string;
  pid: number;
  uptimeMs: number;
}

/** POST /v1/vms body, and each entry of GET /v1/vms. */
export interface VmEntryBody {
  name: string;
  /** A bare QEMU: its QMP socket. */
  qmp?: string;
  guestAgent?: string;
  /** A libvirt domain: its libvirt URI. */
  connect?: string;
}

/** GET /v1/vms/:vm. */
export interface VmStatus {
  name: string;
  qmp?: string;
  connect?: string;
  connected: boolean;
  /** query-status, or null when QEMU is not reachable. */
  status: unknown;
  disks: { target: string; format: string; virtualSize: number; filename: string }[];
  job: JobInfo | null;
}

/** GET /v1/vms/:vm/checkpoints. */
export interface CheckpointList {
  current: string | null;
  checkpoints: { name: string; parent: string | null; creationTime: number; disks: unknown[] }[];
}

/** The body of every error reply. */
export interface ApiError {
  error: { code: string; message: string };
}
