// virsh's output shapes (libvirt 9.0), pure: vshTable, checkpoint-list, domjobinfo, vshPrettyCapacity.
import { CheckpointChain, formatCheckpointTree } from '../app/vocabulary.js';
import type { Checkpoint } from '../app/vocabulary.js';
import type { JobInfo } from '../app/jobs/api-shapes.js';
import { InvalidInputError } from '../util/errors.js';

/**
 * A table as virsh's vshTable prints it: every cell after one space, columns padded to their widest cell plus two
 * spaces (the last one not padded), a line of dashes (width + 3 per column) under the header, and a blank line
 * at the end (vshTablePrintToStdout prints "%s\n").
 */
export function formatVshTable(header: readonly string[] | undefined, rows: readonly (readonly string[])[]): string {
  const all = header ? [header, ...rows] : [...rows];
  const columns = Math.max(0, ...all.map((r) => r.length));
  const widths = Array.from({ length: columns }, (_, i) => Math.max(0, ...all.map((r) => (r[i] ?? '').length)));
  const line = (row: readonly string[]): string =>
    row.map((cell, i) => ` ${i < row.length - 1 ? cell.padEnd(widths[i]! + 2) : cell}`).join('') + '\n';
  let out = '';
  if (header) {
    out += line(header);
    out += '-'.repeat(widths.reduce((sum, w) => sum + w + 3, 0)) + '\n';
  }
  for (const row of rows) out += line(row);
  return `${out}\n`;
}

/** strftime "%Y-%m-%d %H:%M:%S %z" in the local time zone, as virsh prints a checkpoint's creation time. */
export function formatVirshTime(unixSeconds: number): string {
  const d = new Date(unixSeconds * 1000);
  const two = (n: number) => String(n).padStart(2, '0');
  const offset = -d.getTimezoneOffset();
  const sign = offset < 0 ? '-' : '+';
  const abs = Math.abs(offset);
  return (
    `${d.getFullYear()}-${two(d.getMonth() + 1)}-${two(d.getDate())} ${two(d.getHours())}:${two(d.getMinutes())}:${two(d.getSeconds())} ` +
    `${sign}${two(Math.floor(abs / 60))}${two(abs % 60)}`
  );
}

/** A checkpoint as checkpoint-list needs it (the daemon's summary or a stored checkpoint). */
export interface CheckpointSummary {
  name: string;
  parent?: string | null;
  creationTime: number;
}

export interface CheckpointListOptions {
  tree?: boolean;
  parent?: boolean;
  name?: boolean;
  leaves?: boolean;
  noLeaves?: boolean;
  roots?: boolean;
}

/** The option pairs virsh 9.0 refuses together in checkpoint-list. */
const EXCLUSIVE: ReadonlyArray<[keyof CheckpointListOptions, keyof CheckpointListOptions]> = [
  ['tree', 'name'],
  ['parent', 'roots'],
  ['parent', 'tree'],
  ['roots', 'tree'],
  ['leaves', 'tree'],
  ['noLeaves', 'tree'],
];

const FLAG: Record<keyof CheckpointListOptions, string> = {
  tree: '--tree',
  parent: '--parent',
  name: '--name',
  leaves: '--leaves',
  noLeaves: '--no-leaves',
  roots: '--roots',
};

/** Throws InvalidInputError "Options --tree and --name are mutually exclusive" (virsh's words) for a bad pair. */
export function checkCheckpointListOptions(options: CheckpointListOptions): void {
  for (const [a, b] of EXCLUSIVE) {
    if (options[a] && options[b]) {
      // virsh words the leaves pairs without "Options" and with the leaves flag first.
      const text = a === 'leaves' || a === 'noLeaves' ? `${FLAG[a]} and ${FLAG[b]}` : `Options ${FLAG[a]} and ${FLAG[b]}`;
      throw new InvalidInputError(`${text} are mutually exclusive`, { hint: `give only one of ${FLAG[a]} and ${FLAG[b]}` });
    }
  }
}

function chainOf(checkpoints: readonly CheckpointSummary[]): CheckpointChain {
  return CheckpointChain.from(
    checkpoints.map((cp): Checkpoint => ({
      name: cp.name,
      creationTime: cp.creationTime,
      disks: [],
      ...(cp.parent ? { parent: cp.parent } : {}),
    })),
  );
}

/**
 * The checkpoints checkpoint-list shows, in virsh's order (by name, case-insensitively), after --roots, --leaves
 * and --no-leaves (--roots --leaves: checkpoints that are both).
 * @throws InvalidInputError for a broken parent chain.
 */
export function selectCheckpoints(checkpoints: readonly CheckpointSummary[], options: CheckpointListOptions): CheckpointSummary[] {
  const chain = chainOf(checkpoints);
  const byName = new Map(checkpoints.map((cp) => [cp.name, cp]));
  let names = chain.list().map((cp) => cp.name);
  if (options.roots) {
    const roots = new Set(chain.roots().map((cp) => cp.name));
    names = names.filter((n) => roots.has(n));
  }
  if (options.leaves || options.noLeaves) {
    const leaves = new Set(chain.leaves().map((cp) => cp.name));
    // Both at once select nothing, as in virsh.
    if (options.leaves) names = names.filter((n) => leaves.has(n));
    if (options.noLeaves) names = names.filter((n) => !leaves.has(n));
  }
  const sorted = [...names].sort((a, b) => {
    const la = a.toLowerCase();
    const lb = b.toLowerCase();
    return la < lb ? -1 : la > lb ? 1 : a < b ? -1 : a > b ? 1 : 0;
  });
  return sorted.map((n) => byName.get(n)!);
}

/**
 * checkpoint-list's output, byte for byte as virsh 9.0 prints it: the table (` Name   Creation Time[   Parent]`),
 * the names one a line with --name, or vshTreePrint's tree with --tree; each ends with a blank line.
 * @throws InvalidInputError for options virsh refuses together.
 */
export function formatCheckpointList(checkpoints: readonly CheckpointSummary[], options: CheckpointListOptions = {}): string {
  checkCheckpointListOptions(options);
  if (options.tree) return checkpoints.length === 0 ? '\n' : formatCheckpointTree(chainOf(checkpoints).tree());
  const selected = selectCheckpoints(checkpoints, options);
  if (options.name) {
    return `${selected.map((cp) => `${cp.name}\n`).join('')}\n`;
  }
  const header = options.parent ? ['Name', 'Creation Time', 'Parent'] : ['Name', 'Creation Time'];
  const rows = selected.map((cp) => {
    const row = [cp.name, formatVirshTime(cp.creationTime)];
    if (options.parent) row.push(cp.parent ?? '');
    return row;
  });
  return formatVshTable(header, rows);
}

/** vshPrettyCapacity: the value in the largest binary unit under which it is 1024 or more. */
export function prettyCapacity(bytes: number): { value: number; unit: string } {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB', 'EiB'];
  let limit = 1024;
  for (let i = 0; i < units.length - 1; i++) {
    if (bytes < limit) return { value: i === 0 ? bytes : bytes / (limit / 1024), unit: units[i]! };
    limit *= 1024;
  }
  return { value: bytes / (limit / 1024), unit: units[units.length - 1]! };
}

/** virsh's job type for a fleece job state. */
export function virshJobType(state: JobInfo['state'] | undefined): string {
  switch (state) {
    case undefined:
      return 'None';
    case 'completed':
      return 'Completed';
    case 'failed':
      return 'Failed';
    case 'cancelled':
      return 'Cancelled';
    default:
      return 'Unbounded';
  }
}

const label = (text: string) => text.padEnd(17);
const capacityLine = (name: string, bytes: number) => {
  const { value, unit } = prettyCapacity(bytes);
  return `${label(name)} ${value.toFixed(3)} ${unit}\n`;
};

/**
 * domjobinfo's output as virsh 9.0 prints it for a backup job: `Job type:` (None, Unbounded, Completed, Failed,
 * Cancelled; `%-17s %-12s`), `Operation:        Backup`, `Time elapsed:` in ms, `File processed/remaining/total`
 * (libvirt's disk counters of a backup job), `Temporary disk space use:` (the pull job's scratch), `Error message:`.
 */
export function formatDomJobInfo(job: JobInfo | null): string {
  let out = `${label('Job type:')} ${virshJobType(job?.state).padEnd(12)}\n`;
  if (!job) return out;
  out += `${label('Operation:')} ${'Backup'.padEnd(12)}\n`;
  out += `${label('Time elapsed:')} ${String(Math.round(job.elapsedMs)).padEnd(12)} ms\n`;
  if (job.dataTotal || job.dataRemaining || job.dataProcessed) {
    out += capacityLine('File processed:', job.dataProcessed);
    out += capacityLine('File remaining:', job.dataRemaining);
    out += capacityLine('File total:', job.dataTotal);
  }
  if (job.scratchBytes) out += capacityLine('Temporary disk space use:', job.scratchBytes);
  if (job.error) out += `${label('Error message:')} ${job.error}\n`;
  return out;
}

/** Removes the `<domain>` element from checkpoint XML in libvirt's output shape (checkpoint-dumpxml --no-domain). */
export function stripDomainElement(xml: string): string {
  return xml.replace(/^[ \t]*<domain[\s>][\s\S]*?^[ \t]*<\/domain>[ \t]*\n/m, '').replace(/^[ \t]*<domain(\s[^>]*)?\/>[ \t]*\n/m, '');
}
