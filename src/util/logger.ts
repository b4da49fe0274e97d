// The pino logger shared by every module: silent unless FLEECE_LOG_LEVEL or the CLI/daemon says otherwise.
//
// Modules take their logger at load time (`const log = getLogger('x')`), before the CLI or the daemon has set the root
// logger; so getLogger returns a stand-in that forwards each call to the current root's child. While nothing logs
// (the default: silent, no root set) pino itself is never loaded: `fleece --version` or `list` do not pay for it.
import { createRequire } from 'node:module';
import type { Logger } from 'pino';

const require = createRequire(import.meta.url);

let root: Logger | undefined;
let generation = 0;

function noop(): void {}

/** What a silent logger answers, without pino: every level a no-op, nothing enabled, children silent too. */
const SILENT: Record<string | symbol, unknown> = {
  level: 'silent',
  trace: noop, debug: noop, info: noop, warn: noop, error: noop, fatal: noop, silent: noop,
  isLevelEnabled: () => false,
  flush: noop,
  bindings: () => ({}),
};

function rootLogger(): Logger | undefined {
  if (root) return root;
  const level = process.env.FLEECE_LOG_LEVEL ?? 'silent';
  if (level === 'silent') return undefined;
  const { pino } = require('pino') as typeof import('pino');
  root = pino({ name: 'fleece', level });
  return root;
}

/** A stand-in for `target()` (a pino logger, or undefined for silent): property reads go to it at each use. */
function forwarding(target: () => Logger | undefined): Logger {
  return new Proxy({} as Logger, {
    get(_, property) {
      const logger = target();
      if (!logger) return property === 'child' ? () => silentChild : SILENT[property];
      const value = Reflect.get(logger, property, logger) as unknown;
      return typeof value === 'function' ? (value as (...args: unknown[]) => unknown).bind(logger) : value;
    },
  });
}

const silentChild: Logger = forwarding(() => undefined);

/** A child logger for one module; modules log commands and replies at debug, never at info. */
export function getLogger(module: string): Logger {
  let cached: { generation: number; logger: Logger | undefined } | undefined;
  return forwarding(() => {
    if (cached?.generation !== generation) {
      const current = rootLogger();
      cached = { generation, logger: current?.child({ module }) };
    }
    return cached.logger;
  });
}

/** Replaces the root logger (the CLI points it at --log-file, the daemon at its log). */
export function setRootLogger(logger: Logger): void {
  root = logger;
  generation += 1;
}

export type { Logger };
