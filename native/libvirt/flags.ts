// Typed option objects → libvirt's flag words (values from the libvirt 9.0 headers, see constants.ts): pure.
import {
  VIR_DOMAIN_BACKUP_BEGIN_REUSE_EXTERNAL, VIR_DOMAIN_CHECKPOINT_CREATE_QUIESCE, VIR_DOMAIN_CHECKPOINT_CREATE_REDEFINE,
  VIR_DOMAIN_CHECKPOINT_CREATE_REDEFINE_VALIDATE, VIR_DOMAIN_CHECKPOINT_DELETE_CHILDREN,
  VIR_DOMAIN_CHECKPOINT_DELETE_CHILDREN_ONLY, VIR_DOMAIN_CHECKPOINT_DELETE_METADATA_ONLY,
  VIR_DOMAIN_CHECKPOINT_LIST_LEAVES, VIR_DOMAIN_CHECKPOINT_LIST_ROOTS, VIR_DOMAIN_CHECKPOINT_LIST_TOPOLOGICAL,
  VIR_DOMAIN_CHECKPOINT_XML_NO_DOMAIN, VIR_DOMAIN_CHECKPOINT_XML_SECURE, VIR_DOMAIN_CHECKPOINT_XML_SIZE,
  VIR_DOMAIN_JOB_STATS_COMPLETED, VIR_DOMAIN_JOB_STATS_KEEP_COMPLETED, VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA,
  VIR_DOMAIN_UNDEFINE_MANAGED_SAVE, VIR_DOMAIN_UNDEFINE_NVRAM, VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA,
  VIR_DOMAIN_XML_INACTIVE, VIR_DOMAIN_XML_MIGRATABLE, VIR_DOMAIN_XML_SECURE,
} from './constants.js';

export interface DomainXmlFlags { inactive?: boolean; secure?: boolean; migratable?: boolean }
export interface UndefineFlags { checkpointsMetadata?: boolean; snapshotsMetadata?: boolean; managedSave?: boolean; nvram?: boolean }
export interface BackupBeginFlags { reuseExternal?: boolean }
export interface JobStatsFlags { completed?: boolean; keepCompleted?: boolean }
export interface CheckpointCreateFlags { redefine?: boolean; quiesce?: boolean; redefineValidate?: boolean }
export interface CheckpointListFlags { roots?: boolean; topological?: boolean; leaves?: boolean }
export interface CheckpointXmlFlags { size?: boolean; noDomain?: boolean; securityInfo?: boolean }
export interface CheckpointDeleteFlags { metadataOnly?: boolean; children?: boolean; childrenOnly?: boolean }

function word(pairs: ReadonlyArray<readonly [boolean | undefined, number]>): number {
  let flags = 0;
  for (const [on, bit] of pairs) if (on) flags |= bit;
  return flags;
}

export const domainXmlFlags = (f: DomainXmlFlags = {}): number =>
  word([[f.secure, VIR_DOMAIN_XML_SECURE], [f.inactive, VIR_DOMAIN_XML_INACTIVE], [f.migratable, VIR_DOMAIN_XML_MIGRATABLE]]);

export const undefineFlags = (f: UndefineFlags = {}): number => word([
  [f.managedSave, VIR_DOMAIN_UNDEFINE_MANAGED_SAVE], [f.snapshotsMetadata, VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA],
  [f.nvram, VIR_DOMAIN_UNDEFINE_NVRAM], [f.checkpointsMetadata, VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA],
]);

export const backupBeginFlags = (f: BackupBeginFlags = {}): number => word([[f.reuseExternal, VIR_DOMAIN_BACKUP_BEGIN_REUSE_EXTERNAL]]);

export const jobStatsFlags = (f: JobStatsFlags = {}): number =>
  word([[f.completed, VIR_DOMAIN_JOB_STATS_COMPLETED], [f.keepCompleted, VIR_DOMAIN_JOB_STATS_KEEP_COMPLETED]]);

export const checkpointCreateFlags = (f: CheckpointCreateFlags = {}): number => word([
  [f.redefine, VIR_DOMAIN_CHECKPOINT_CREATE_REDEFINE], [f.quiesce, VIR_DOMAIN_CHECKPOINT_CREATE_QUIESCE],
  [f.redefineValidate, VIR_DOMAIN_CHECKPOINT_CREATE_REDEFINE_VALIDATE],
]);

export const checkpointListFlags = (f: CheckpointListFlags = {}): number => word([
  [f.roots, VIR_DOMAIN_CHECKPOINT_LIST_ROOTS], [f.topological, VIR_DOMAIN_CHECKPOINT_LIST_TOPOLOGICAL],
  [f.leaves, VIR_DOMAIN_CHECKPOINT_LIST_LEAVES],
]);

export const checkpointXmlFlags = (f: CheckpointXmlFlags = {}): number => word([
  [f.securityInfo, VIR_DOMAIN_CHECKPOINT_XML_SECURE], [f.noDomain, VIR_DOMAIN_CHECKPOINT_XML_NO_DOMAIN],
  [f.size, VIR_DOMAIN_CHECKPOINT_XML_SIZE],
]);

export const checkpointDeleteFlags = (f: CheckpointDeleteFlags = {}): number => word([
  [f.children, VIR_DOMAIN_CHECKPOINT_DELETE_CHILDREN], [f.metadataOnly, VIR_DOMAIN_CHECKPOINT_DELETE_METADATA_ONLY],
  [f.childrenOnly, VIR_DOMAIN_CHECKPOINT_DELETE_CHILDREN_ONLY],
]);
