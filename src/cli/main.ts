#!/usr/bin/env node
// The fleece CLI entry point: builds the program, turns SIGINT/SIGTERM into an abort (cleanup runs), maps errors to exit codes.
import '../util/threadpool-size.js';
import { setMaxListeners } from 'node:events';
import { buildProgram } from './program.js';
import { EXIT_INTERRUPTED } from './exit-codes.js';
import { exitCodeOf, formatCliError } from './errors.js';
import { AbortedError } from '../util/errors.js';

async function main(argv: string[]): Promise<number> {
  const controller = new AbortController();
  // One command's signal is watched by every disk, writer, NBD connection and QMP call it starts: more than Node's
  // default of 10 listeners is expected, not a leak.
  setMaxListeners(256, controller.signal);
  let signals = 0;
  const onSignal = (name: NodeJS.Signals) => {
    signals += 1;
    if (signals > 1) {
      process.stderr.write(`fleece: ${name} again: exiting without cleanup\n`);
      process.exit(EXIT_INTERRUPTED);
    }
    process.stderr.write(`\nfleece: ${name}: stopping and cleaning up (send it again to exit at once)\n`);
    controller.abort(new AbortedError(`interrupted by ${name}`));
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  // A closed terminal is an interruption: clean up as for Ctrl-C.
  process.on('SIGHUP', onSignal);
  // A closed stdout or stderr (`fleece backup … | head -1`) is not a crash: the backup goes on, or cleans up,
  // and never dies half way; what cannot be written is dropped.
  for (const stream of [process.stdout, process.stderr]) {
    stream.on('error', (error: NodeJS.ErrnoException) => {
      if (error.code !== 'EPIPE' && error.code !== 'ERR_STREAM_DESTROYED') throw error;
    });
  }
  const verbose = argv.includes('--verbose') || argv.includes('-v');
  try {
    const program = buildProgram(controller.signal);
    await program.parseAsync(argv);
    return typeof process.exitCode === 'number' ? process.exitCode : 0; // a command that finished but failed in part (list, recover)
  } catch (error) {
    const code = exitCodeOf(error, controller.signal.aborted);
    const commanderError = typeof error === 'object' && error !== null && 'code' in error && String((error as { code: unknown }).code).startsWith('commander.');
    if (!commanderError) process.stderr.write(formatCliError(error, verbose));
    return code;
  }
}

process.exit(await main(process.argv));
