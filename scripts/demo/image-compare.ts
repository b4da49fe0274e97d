// Compares a restored raw image with the guest's disk at the backup's point in time, byte for byte, knowing one thing
// about ext4: quiescing writes its superblock. `fleece backup --quiesce` freezes the guest's file systems (the agent's
// guest-fsfreeze-freeze: ext4 flushes its journal, clears needs_recovery and writes the superblock), takes the point in
// time, and thaws them at once: the thaw writes the superblock again (needs_recovery set, write time, kbytes written,
// checksum). So the guest's disk after a quiesced backup is the backup's point in time plus that one write, and no copy
// taken from outside while the guest runs can be the frozen state itself. The hashes here mask exactly the superblock
// fields the thaw rewrites; every other byte of the image, the rest of the superblock included, must be equal.
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { AbortedError } from '../../src/util/errors.js';

/** The primary ext4 superblock: 1 KiB at byte 1024 of the file system (here the whole disk). */
export const SUPERBLOCK_OFFSET = 1024;
export const SUPERBLOCK_SIZE = 1024;
const EXT4_MAGIC = 0xef53;
const MAGIC_AT = 0x38;

interface SuperblockField {
  name: string;
  /** Offset in the superblock. */
  at: number;
  length: number;
  /** Only these bits (of a little-endian 32-bit field); undefined: all bytes. */
  bits?: number;
}

/** What ext4's freeze and thaw write (ext4_freeze / ext4_unfreeze → ext4_commit_super), and nothing else. */
export const THAW_FIELDS: readonly SuperblockField[] = [
  { name: 's_wtime', at: 0x30, length: 4 },
  { name: 's_wtime_hi', at: 0x274, length: 1 },
  { name: 'needs_recovery', at: 0x60, length: 4, bits: 0x0004 }, // s_feature_incompat RECOVER
  { name: 'orphan_present', at: 0x64, length: 4, bits: 0x10000 }, // s_feature_ro_compat ORPHAN_PRESENT
  { name: 's_kbytes_written', at: 0x178, length: 8 },
  { name: 's_checksum', at: 0x3fc, length: 4 },
];

export interface ImageHash {
  size: number;
  /** sha256 of the image with THAW_FIELDS zeroed in the superblock (all of it hashed as is when it holds no ext4). */
  sha256: string;
  /** The superblock as read (undefined when the image is smaller than 2 KiB). */
  superblock?: Buffer;
  ext4: boolean;
}

function isExt4(superblock: Buffer): boolean {
  return superblock.length >= SUPERBLOCK_SIZE && superblock.readUInt16LE(MAGIC_AT) === EXT4_MAGIC;
}

/** `superblock` with THAW_FIELDS cleared (a copy). Pure. */
export function maskSuperblock(superblock: Buffer): Buffer {
  const masked = Buffer.from(superblock);
  for (const f of THAW_FIELDS) {
    if (f.bits === undefined) masked.fill(0, f.at, f.at + f.length);
    else masked.writeUInt32LE((masked.readUInt32LE(f.at) & ~f.bits) >>> 0, f.at);
  }
  return masked;
}

/** The THAW_FIELDS whose values differ between two superblocks. Pure. */
export function differingThawFields(a: Buffer, b: Buffer): string[] {
  return THAW_FIELDS.filter((f) => {
    if (f.bits === undefined) return !a.subarray(f.at, f.at + f.length).equals(b.subarray(f.at, f.at + f.length));
    return ((a.readUInt32LE(f.at) ^ b.readUInt32LE(f.at)) & f.bits) !== 0;
  }).map((f) => f.name);
}

/** Hashes an image (see ImageHash), streaming it. Throws the read error, AbortedError. */
export async function hashImage(path: string, signal?: AbortSignal): Promise<ImageHash> {
  const hash = createHash('sha256');
  const head = Buffer.alloc(SUPERBLOCK_OFFSET + SUPERBLOCK_SIZE);
  let headFilled = 0;
  let size = 0;
  const stream = createReadStream(path, { highWaterMark: 4 << 20, ...(signal ? { signal } : {}) });
  try {
    for await (const piece of stream) {
      const chunk = piece as Buffer;
      if (headFilled < head.length) {
        // Hold back the first 2 KiB until the superblock is complete, to hash it masked.
        const take = Math.min(head.length - headFilled, chunk.length);
        chunk.copy(head, headFilled, 0, take);
        headFilled += take;
        if (headFilled === head.length) hash.update(maskedHead(head));
        if (take < chunk.length) hash.update(chunk.subarray(take));
      } else {
        hash.update(chunk);
      }
      size += chunk.length;
    }
  } catch (error) {
    if (signal?.aborted) throw new AbortedError(`hashing ${path} was interrupted`);
    throw error;
  }
  if (headFilled < head.length) {
    hash.update(head.subarray(0, headFilled));
    return { size, sha256: hash.digest('hex'), ext4: false };
  }
  const superblock = Buffer.from(head.subarray(SUPERBLOCK_OFFSET));
  return { size, sha256: hash.digest('hex'), superblock, ext4: isExt4(superblock) };
}

function maskedHead(head: Buffer): Buffer {
  const superblock = head.subarray(SUPERBLOCK_OFFSET);
  if (!isExt4(superblock)) return head;
  return Buffer.concat([head.subarray(0, SUPERBLOCK_OFFSET), maskSuperblock(superblock)]);
}

export interface Comparison {
  /** Every byte equal, but for THAW_FIELDS. */
  same: boolean;
  /** The THAW_FIELDS that differ (when same). */
  thawFields: string[];
  /** Why not the same. */
  why?: string;
}

/** Compares a restored image's hash with the reference's. Pure. */
export function compareHashes(restored: ImageHash, reference: ImageHash): Comparison {
  if (restored.size !== reference.size) {
    return { same: false, thawFields: [], why: `${restored.size} bytes restored, the guest disk has ${reference.size}` };
  }
  if (restored.ext4 !== reference.ext4) {
    return { same: false, thawFields: [], why: `the ext4 superblock is ${restored.ext4 ? 'only in the restored image' : 'missing from the restored image'}` };
  }
  if (restored.sha256 !== reference.sha256) return { same: false, thawFields: [], why: 'the sha256 differ' };
  const thawFields = restored.superblock && reference.superblock ? differingThawFields(restored.superblock, reference.superblock) : [];
  return { same: true, thawFields };
}

/** needs_recovery is set in this superblock (the journal must be replayed before the file system is consistent). */
export function needsRecovery(superblock: Buffer | undefined): boolean {
  return superblock !== undefined && isExt4(superblock) && (superblock.readUInt32LE(0x60) & 0x0004) !== 0;
}
