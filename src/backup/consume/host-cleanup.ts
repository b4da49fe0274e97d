// Undoing what a provider backup or restore made on the host, also from another process after a SIGKILL: a FUSE
// mount, a helper process in its own process group (told from a reused pid by its start time).
import { execa } from 'execa';
import { setTimeout as delay } from 'node:timers/promises';
import { processStartTime } from '../journal.js';

/** Unmounts a FUSE mount (fusermount3 when installed, else umount; lazily when busy). Never throws. */
export async function unmountFuse(path: string): Promise<boolean> {
  for (const argv of [['fusermount3', '-u', path], ['umount', path], ['umount', '-l', path]]) {
    const result = await execa(argv[0]!, argv.slice(1), { reject: false, stdin: 'ignore' }).catch(() => undefined);
    if (result && result.exitCode === 0) return true;
  }
  return false;
}

/** Kills a process group (or the process) whose pid still has `startTime`; waits up to 5 s. Never throws. */
export async function killIfSame(pid: number | undefined, startTime: string | undefined): Promise<void> {
  if (pid === undefined || startTime === undefined || processStartTime(pid) !== startTime) return;
  for (const signal of ['SIGTERM', 'SIGKILL'] as const) {
    try {
      process.kill(-pid, signal);
    } catch {
      try {
        process.kill(pid, signal);
      } catch {
        return;
      }
    }
    for (let i = 0; i < 25 && processStartTime(pid) === startTime; i++) await delay(100);
    if (processStartTime(pid) !== startTime) return;
  }
}
