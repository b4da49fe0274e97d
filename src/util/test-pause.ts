// TEST ONLY: FLEECE_TEST_PAUSE_AT=<phase> makes a fleece process stop at that phase of a backup, say so on stderr
// and wait (for SIGUSR2 to go on, for its abort signal, or for the SIGKILL the fault suite sends), so that a fault
// lands at a known point. Phases: before-transaction, after-transaction, mid-read, commit. Never set it in production.
export type TestPausePhase = 'before-transaction' | 'after-transaction' | 'mid-read' | 'commit';

/** Resolves at once unless FLEECE_TEST_PAUSE_AT names `phase` (see the module comment). Never throws. */
export async function testPausePoint(phase: TestPausePhase, signal?: AbortSignal): Promise<void> {
  if (process.env.FLEECE_TEST_PAUSE_AT !== phase) return;
  process.stderr.write(`fleece: test pause at ${phase} (pid ${process.pid})\n`);
  await new Promise<void>((resolve) => {
    const done = () => {
      process.off('SIGUSR2', done);
      signal?.removeEventListener('abort', done);
      resolve();
    };
    process.on('SIGUSR2', done);
    if (signal?.aborted) done();
    else signal?.addEventListener('abort', done, { once: true });
  });
}
