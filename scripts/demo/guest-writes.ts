// What the demo's guest does between the two backups, as one shell script run by its kernel on /mnt (the ext4 on vda):
// new files, a log growing, a file rewritten in place, a zero-filled file, a file deleted; then sync. About 1/32 of the
// disk (64 MiB of a 2 GiB disk). Pure: the script and what it does, in words.
import type { PlannedFile } from './ext4-disk.js';

const MiB = 1024 * 1024;

export interface GuestWrites {
  /** For `/bin/sh -c` in the guest (busybox); prints `ok` last when every step worked. */
  script: string;
  /** Bytes it writes. */
  bytes: number;
  /** One line per step, for the user. */
  steps: string[];
}

/** The guest's writes for a disk of `diskSize` bytes holding `files` (mounted on `mount`). Pure. */
export function planGuestWrites(files: readonly PlannedFile[], diskSize: number, mount = '/mnt'): GuestWrites {
  const total = Math.max(4, Math.floor(diskSize / 32 / MiB)); // MiB
  const quarter = Math.max(1, Math.floor(total / 4));
  const eighth = Math.max(1, Math.floor(total / 8));
  const random = files.filter((f) => f.kind === 'random').sort((a, b) => b.size - a.size || a.path.localeCompare(b.path));
  const logs = files.filter((f) => f.kind === 'text' && f.path.startsWith('log/'));
  const rewritten = random[0];
  const deleted = random[1];
  const log = logs[0];
  const commands: string[] = [`cd ${mount}`, 'mkdir -p new'];
  const steps: string[] = [];
  let bytes = 0;
  commands.push(`dd if=/dev/urandom of=new/blob-1.bin bs=1M count=${quarter} 2>/dev/null`);
  commands.push(`dd if=/dev/urandom of=new/blob-2.bin bs=1M count=${quarter} 2>/dev/null`);
  steps.push(`2 new files of random data (new/blob-1.bin, new/blob-2.bin, ${quarter} MiB each)`);
  bytes += 2 * quarter * MiB;
  if (log) {
    commands.push(`cat log/*.log | head -c ${quarter * MiB} >> ${log.path}`);
    steps.push(`${quarter} MiB of log lines appended to ${log.path}`);
    bytes += quarter * MiB;
  }
  if (rewritten) {
    // 64 KiB blocks from the middle of the file (which is at least 64 KiB long)
    const blocks = Math.min(eighth * 16, Math.floor(rewritten.size / (64 * 1024)));
    const seek = Math.floor((Math.floor(rewritten.size / (64 * 1024)) - blocks) / 2);
    commands.push(`dd if=/dev/urandom of=${rewritten.path} bs=64k count=${blocks} seek=${seek} conv=notrunc 2>/dev/null`);
    steps.push(`${(blocks * 64) / 1024} MiB rewritten in place in the middle of ${rewritten.path}`);
    bytes += blocks * 64 * 1024;
  }
  commands.push(`dd if=/dev/zero of=new/zeros.img bs=1M count=${eighth} 2>/dev/null`);
  steps.push(`a zero-filled file (new/zeros.img, ${eighth} MiB, allocated)`);
  bytes += eighth * MiB;
  if (deleted) {
    commands.push(`rm ${deleted.path}`);
    steps.push(`${deleted.path} deleted (${Math.round(deleted.size / MiB)} MiB freed: its blocks keep their old data)`);
  }
  commands.push('sync');
  steps.push('sync');
  return { script: `${commands.join(' && ')} && echo ok`, bytes, steps };
}
