// The repository volume id of a VM disk: a UUID (version 5 layout, SHA-1 of "fleece:<vm>/<disk>"), stable across runs.
import { createHash } from 'node:crypto';

/**
 * The volume id every backup of disk `disk` of VM `vm` is filed under. Deterministic: the same VM and disk target
 * always give the same id, so incrementals continue the chain of the same volume; another VM or disk gives another.
 * Formatted as an RFC 4122 UUID (version 5 bits set) because Cinder expects volume ids to be UUIDs.
 */
export function volumeIdFor(vm: string, disk: string): string {
  const hash = createHash('sha1').update(`fleece:${vm}/${disk}`, 'utf8').digest();
  const bytes = Buffer.from(hash.subarray(0, 16));
  bytes[6] = (bytes[6]! & 0x0f) | 0x50;
  bytes[8] = (bytes[8]! & 0x3f) | 0x80;
  const hex = bytes.toString('hex');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}
