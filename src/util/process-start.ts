// A process's identity on this host: its pid and its start time, so that a reused pid is not taken for the owner.
import { readFileSync } from 'node:fs';

/** The start time of a process (clock ticks since boot, field 22 of /proc/<pid>/stat), or undefined when it does not exist. */
export function processStartTime(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The command name (field 2) is in parentheses and may hold spaces: count fields after the last ')'.
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19];
  } catch {
    return undefined;
  }
}
