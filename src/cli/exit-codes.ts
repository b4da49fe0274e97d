// Exit codes of the fleece CLI: 0 ok, 1 failure, 2 usage (bad arguments or input), 130 interrupted.
import { FleeceError } from '../util/errors.js';

export const EXIT_OK = 0;
export const EXIT_FAILURE = 1;
export const EXIT_USAGE = 2;
export const EXIT_INTERRUPTED = 130;

export function exitCodeFor(error: unknown): number {
  if (error instanceof FleeceError) {
    if (error.code === 'USAGE' || error.code === 'INVALID_INPUT') return EXIT_USAGE;
    if (error.code === 'ABORTED') return EXIT_INTERRUPTED;
  }
  return EXIT_FAILURE;
}
