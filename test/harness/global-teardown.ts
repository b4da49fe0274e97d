// Runs once after all suites; the leftover-process check lives in scripts/run-tests.mjs so it also covers crashed workers.
export default async function globalTeardown(): Promise<void> {}
