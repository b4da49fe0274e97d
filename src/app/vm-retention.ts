// A VM's own retention policy (in its registry entry, off unless set): after each successful backup of the VM, from
// the CLI or fleeced, its backup groups are pruned by these keep rules (the same pruneBackups as `fleece prune`) and
// its checkpoints by keepCheckpoints.
import type { KeepOptions } from '../repository/index.js';
import { InvalidInputError } from '../util/errors.js';

export interface VmRetention {
  keep: KeepOptions;
  /** The time zone the hourly/daily/… rules count in (default UTC). */
  timeZone?: string;
  /** Checkpoints with a backup behind them kept per disk (default 3). */
  keepCheckpoints?: number;
}

const RULES = ['last', 'hourly', 'daily', 'weekly', 'monthly', 'yearly'] as const;

/**
 * Parses `last=3,daily=7,weekly=4,checkpoints=2,timezone=Europe/Berlin` (each part optional, at least one keep rule).
 * @throws InvalidInputError naming the part and what is allowed.
 */
export function parseVmRetention(text: string): VmRetention {
  const keep: KeepOptions = {};
  const out: VmRetention = { keep };
  const allowed = `${RULES.join(', ')}, checkpoints (counts) and timezone`;
  for (const part of text.split(',').map((p) => p.trim()).filter((p) => p !== '')) {
    const [key, value, ...rest] = part.split('=');
    if (value === undefined || rest.length > 0 || key === undefined) throw new InvalidInputError(`retention '${part}' is not KEY=VALUE`, { hint: `e.g. last=3,daily=7,checkpoints=2; keys: ${allowed}` });
    const name = key.trim().replace(/^keep-/, '');
    if (name === 'timezone') {
      out.timeZone = value.trim();
      continue;
    }
    if (!/^\d+$/.test(value.trim())) throw new InvalidInputError(`retention ${name}=${value}: not a count`, { hint: 'give a whole number, e.g. daily=7' });
    const n = Number(value);
    if (name === 'checkpoints') {
      if (n < 1) throw new InvalidInputError('retention checkpoints must be 1 or more');
      out.keepCheckpoints = n;
    } else if ((RULES as readonly string[]).includes(name)) {
      keep[name as (typeof RULES)[number]] = n;
    } else {
      throw new InvalidInputError(`retention: unknown key '${name}'`, { hint: `keys: ${allowed}` });
    }
  }
  if (!Object.values(keep).some((n) => n > 0)) {
    throw new InvalidInputError(`retention '${text}' keeps nothing: give at least one keep rule of 1 or more`, { hint: 'e.g. last=3,daily=7' });
  }
  return out;
}

/** The policy in the same words (for `fleece vm list`). */
export function formatVmRetention(r: VmRetention): string {
  const parts = RULES.flatMap((rule) => (r.keep[rule] !== undefined ? [`${rule}=${r.keep[rule]}`] : []));
  if (r.keepCheckpoints !== undefined) parts.push(`checkpoints=${r.keepCheckpoints}`);
  if (r.timeZone !== undefined) parts.push(`timezone=${r.timeZone}`);
  return parts.join(',');
}
