// The fault suite's count: each case says when it injected its fault and when every check after it held, one line
// per event in FLEECE_FAULT_COUNT_DIR (scripts/run-tests.mjs makes it and prints `faults: N injected, N held`).
import { appendFileSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';

export interface InjectedFault {
  /** Call last in the case, once every check passed. */
  held(): void;
}

function note(event: 'injected' | 'held', name: string): void {
  const dir = process.env.FLEECE_FAULT_COUNT_DIR;
  if (!dir) return; // a single file run by hand: nothing counts
  mkdirSync(dir, { recursive: true });
  appendFileSync(join(dir, `${process.pid}.log`), `${event}\t${name}\n`);
}

/** Records that the fault `name` was injected (call at the moment it is). */
export function injectFault(name: string): InjectedFault {
  note('injected', name);
  return { held: () => note('held', name) };
}
