// The checkpoint model (libvirt's domaincheckpoint): one persistent dirty bitmap per disk, named after the checkpoint.
import { InvalidInputError } from '../util/errors.js';
import type { XmlElement } from './checkpoint-xml.js';

/** What a checkpoint records for one disk: a bitmap, or nothing (`checkpoint='no'`). */
export interface CheckpointDisk {
  /** The disk's target name in the VM (`vda`). */
  name: string;
  checkpoint: 'bitmap' | 'no';
  /** The bitmap's name on the disk's top format node; libvirt (and fleece) use the checkpoint's name. */
  bitmap?: string;
}

/** A checkpoint as fleece stores it (the output form of libvirt's checkpoint XML). */
export interface Checkpoint {
  name: string;
  description?: string;
  /** The checkpoint that was current when this one was made; absent for a root. */
  parent?: string;
  /** Unix seconds. */
  creationTime: number;
  disks: CheckpointDisk[];
  /** The VM definition at creation time (`<domain>` inside the checkpoint XML), kept opaque for redefine. */
  domain?: XmlElement;
}

/** A checkpoint as a user may write it: the creation time is filled in when the checkpoint is made. */
export type CheckpointDefinition = Omit<Checkpoint, 'creationTime'> & { creationTime?: number };

/** Prefix of the temporary bitmaps a backup job creates (`backup-vda`); checkpoint names may not use it. */
export const TEMPORARY_BITMAP_PREFIX = 'backup-';

const NAME_PATTERN = /^[A-Za-z0-9_][A-Za-z0-9_.+:@-]*$/;
const MAX_NAME_LENGTH = 200;

/**
 * Checks that a checkpoint name is safe as a QEMU bitmap name, a file name (`<name>.xml`) and an NBD export
 * bitmap name: 1 to 200 characters from `A-Z a-z 0-9 _ . + : @ -`, not starting with `.` or `-`, not `backup-*`.
 * @throws InvalidInputError naming the name and what is allowed.
 */
export function validateCheckpointName(name: string, where = 'checkpoint name'): void {
  const allowed = `use 1-${MAX_NAME_LENGTH} characters from A-Z a-z 0-9 _ . + : @ -, starting with a letter, digit or _`;
  if (name.length === 0) {
    throw new InvalidInputError(`${where} is empty`, { hint: allowed });
  }
  if (name.includes('/')) {
    throw new InvalidInputError(`${where} '${name}' contains '/'`, { hint: allowed });
  }
  if (name.length > MAX_NAME_LENGTH || !NAME_PATTERN.test(name)) {
    throw new InvalidInputError(`${where} '${name}' is not allowed`, { hint: allowed });
  }
  if (name.startsWith(TEMPORARY_BITMAP_PREFIX)) {
    throw new InvalidInputError(`${where} '${name}' starts with '${TEMPORARY_BITMAP_PREFIX}', which fleece reserves for the temporary bitmaps of backup jobs`, {
      hint: 'choose another name',
    });
  }
}

/** The bitmaps a checkpoint owns, per disk (only disks with `checkpoint='bitmap'`). */
export function checkpointBitmaps(cp: Pick<Checkpoint, 'name' | 'disks'>): { disk: string; bitmap: string }[] {
  return cp.disks
    .filter((disk) => disk.checkpoint === 'bitmap')
    .map((disk) => ({ disk: disk.name, bitmap: disk.bitmap ?? cp.name }));
}

/** A VM disk as checkpoint alignment sees it. */
export interface CheckpointVmDisk {
  name: string;
  /** Image format of the disk's top node; only qcow2 can hold persistent bitmaps. */
  format: string;
}

/**
 * Fills a checkpoint definition's disk list against the VM's disks, as libvirt does: with no `<disks>`, every
 * qcow2 disk gets a bitmap (other formats get `checkpoint='no'`); with `<disks>`, listed disks default to
 * `bitmap` and unlisted disks get `no`. Bitmap names default to the checkpoint name. Returns a new object.
 * @throws InvalidInputError for an unknown or duplicate disk, or a bitmap asked on a disk that cannot hold one.
 */
export function alignCheckpointDisks<T extends CheckpointDefinition>(cp: T, vmDisks: readonly CheckpointVmDisk[]): T {
  const known = vmDisks.map((disk) => disk.name);
  const listed = new Map<string, CheckpointDisk>();
  for (const disk of cp.disks) {
    const where = `checkpoint '${cp.name}' <disk name='${disk.name}'>`;
    if (!known.includes(disk.name)) {
      throw new InvalidInputError(`${where}: no such disk in the VM (disks: ${known.join(', ') || 'none'})`, {
        hint: 'fix the name or remove the <disk> element',
      });
    }
    if (listed.has(disk.name)) {
      throw new InvalidInputError(`${where}: the disk is listed twice`, { hint: 'keep one <disk> element per disk' });
    }
    listed.set(disk.name, disk);
  }
  const disks: CheckpointDisk[] = vmDisks.map((vmDisk) => {
    const given = listed.get(vmDisk.name);
    if (given === undefined) {
      const bitmap = cp.disks.length === 0 && vmDisk.format === 'qcow2';
      return bitmap ? { name: vmDisk.name, checkpoint: 'bitmap', bitmap: cp.name } : { name: vmDisk.name, checkpoint: 'no' };
    }
    if (given.checkpoint === 'no') return { name: vmDisk.name, checkpoint: 'no' };
    if (vmDisk.format !== 'qcow2') {
      throw new InvalidInputError(
        `checkpoint '${cp.name}' <disk name='${vmDisk.name}' checkpoint='bitmap'>: the disk is ${vmDisk.format}, which cannot hold persistent bitmaps`,
        { hint: `use checkpoint='no' for ${vmDisk.name} or convert it to qcow2` },
      );
    }
    return { name: vmDisk.name, checkpoint: 'bitmap', bitmap: given.bitmap ?? cp.name };
  });
  return { ...cp, disks };
}
