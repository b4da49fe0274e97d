// A module logger looked up at each call: the CLI points the root logger at --log-file (and the daemon at its log)
// after the modules were loaded, and a provider's stderr lines must reach that log.
import { getLogger } from '../../util/logger.js';

type Fields = Record<string, unknown>;

export interface LazyLogger {
  debug(fields: Fields, message: string): void;
  info(fields: Fields, message: string): void;
  warn(fields: Fields, message: string): void;
}

export function lazyLogger(module: string): LazyLogger {
  return {
    debug: (fields, message) => getLogger(module).debug(fields, message),
    info: (fields, message) => getLogger(module).info(fields, message),
    warn: (fields, message) => getLogger(module).warn(fields, message),
  };
}
