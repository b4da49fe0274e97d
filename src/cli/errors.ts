// How the CLI reports errors and parses option values: `fleece: <message>` on stderr, a stack only with --verbose.
import { CommanderError, InvalidArgumentError } from 'commander';
import { EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, exitCodeFor } from './exit-codes.js';
import { FleeceError, describeError } from '../util/errors.js';

/** The exit code of a command that threw (commander's own errors: help/version 0, usage 2). */
export function exitCodeOf(error: unknown, interrupted: boolean): number {
  if (error instanceof CommanderError) {
    if (error.code === 'commander.helpDisplayed' || error.code === 'commander.help' || error.code === 'commander.version') return EXIT_OK;
    return error.exitCode === 0 ? EXIT_OK : EXIT_USAGE;
  }
  if (interrupted) return EXIT_INTERRUPTED;
  return error instanceof FleeceError ? exitCodeFor(error) : EXIT_FAILURE;
}

/** The text printed for an error: one line naming the thing and the fix; with `verbose`, stack and causes. */
export function formatCliError(error: unknown, verbose: boolean): string {
  const lines = [`fleece: ${describeError(error)}`];
  if (!(error instanceof FleeceError) && !verbose) lines.push('fleece: (an unexpected error; run with --verbose for details)');
  if (verbose) {
    let current: unknown = error;
    let depth = 0;
    while (current instanceof Error && depth < 5) {
      lines.push(depth === 0 ? (current.stack ?? current.message) : `caused by: ${current.stack ?? current.message}`);
      current = current.cause;
      depth += 1;
    }
  }
  return `${lines.join('\n')}\n`;
}

const UNITS: Record<string, number> = { '': 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3, t: 1024 ** 4 };

/** Parses `50M`, `1.5G`, `100MiB/s`, `4096` (binary units) into bytes. Throws commander's InvalidArgumentError. */
export function parseByteSize(text: string): number {
  const match = /^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?(?:\/s)?\s*$/i.exec(text);
  if (!match) throw new InvalidArgumentError(`'${text}' is not a size; use e.g. 4096, 50M, 1.5G (binary units, optionally /s)`);
  const bytes = Math.round(Number(match[1]) * UNITS[match[2]!.toLowerCase()]!);
  if (!(bytes > 0)) throw new InvalidArgumentError(`'${text}' must be more than 0 bytes`);
  return bytes;
}

/** Parses a positive integer option. Throws commander's InvalidArgumentError. */
export function parsePositiveInt(text: string): number {
  const n = Number(text);
  if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError(`'${text}' is not a positive integer`);
  return n;
}

/** Collects a repeatable option into a list. */
export function collect(value: string, previous: string[] | undefined): string[] {
  return [...(previous ?? []), value];
}
