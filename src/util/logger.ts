// The pino logger shared by every module: silent unless FLEECE_LOG_LEVEL or the CLI/daemon says otherwise.
import { pino, type Logger } from 'pino';

let root: Logger = pino({
  name: 'fleece',
  level: process.env.FLEECE_LOG_LEVEL ?? 'silent',
});

/** A child logger for one module; modules log commands and replies at debug, never at info. */
export function getLogger(module: string): Logger {
  return root.child({ module });
}

/** Replaces the root logger (the CLI points it at --log-file, the daemon at its log). */
export function setRootLogger(logger: Logger): void {
  root = logger;
}

export type { Logger };
