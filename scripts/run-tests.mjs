#!/usr/bin/env node
// `npm test`: makes sure the system packages and node_modules are there, typechecks, runs every jest suite,
// prints a plain "N passed, N failed" line (and the fault suite's "faults: N injected, N held"), and fails if any test left a QEMU, qemu-nbd or nbdkit process behind.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
process.chdir(root);

function run(cmd, args, options = {}) {
  const result = spawnSync(cmd, args, { stdio: 'inherit', ...options });
  if (result.error) throw result.error;
  return result.status ?? 1;
}

if (run('bash', ['scripts/install-system-deps.sh']) !== 0) process.exit(1);
if (!existsSync('node_modules/.package-lock.json')) {
  console.log('node_modules is missing: running npm ci');
  if (run('npm', ['ci']) !== 0) process.exit(1);
}
if (run('npx', ['tsc', '-p', 'tsconfig.json']) !== 0) {
  console.error('typecheck failed');
  process.exit(1);
}

const results = join(tmpdir(), `fleece-jest-${process.pid}.json`);
// The fault suite (test/faults) writes a line per injected fault and per fault that held (test/faults/fault-count.ts).
const faultDir = mkdtempSync(join(tmpdir(), 'fleece-faults-'));
const extra = process.argv.slice(2);
const status = run(process.execPath, [
  '--experimental-vm-modules', 'node_modules/jest/bin/jest.js',
  '--maxWorkers=2', '--json', `--outputFile=${results}`, ...extra,
], { env: { ...process.env, FLEECE_FAULT_COUNT_DIR: faultDir } });
const faultEvents = readdirSync(faultDir).flatMap((name) => readFileSync(join(faultDir, name), 'utf8').split('\n').filter(Boolean));
rmSync(faultDir, { recursive: true, force: true });
const injected = faultEvents.filter((line) => line.startsWith('injected\t')).length;
const held = faultEvents.filter((line) => line.startsWith('held\t')).length;

let passed = 0, failed = 0, skipped = 0;
if (existsSync(results)) {
  const summary = JSON.parse(readFileSync(results, 'utf8'));
  passed = summary.numPassedTests;
  failed = summary.numFailedTests + summary.numRuntimeErrorTestSuites;
  skipped = summary.numPendingTests + summary.numTodoTests;
  rmSync(results, { force: true });
}

const leftovers = spawnSync('pgrep', ['-a', '-f', 'fleece-test-'], { encoding: 'utf8' }).stdout
  .split('\n').filter((line) => /qemu|nbdkit|nbdcopy|fleece/.test(line) && !line.includes('pgrep'));
if (leftovers.length > 0) {
  console.error(`tests left these processes running:\n${leftovers.join('\n')}`);
  for (const line of leftovers) {
    const pid = Number(line.split(' ')[0]);
    try { process.kill(pid, 'SIGKILL'); } catch { /* already gone */ }
  }
  failed += 1;
}

console.log(`${passed} passed, ${failed} failed${skipped ? `, ${skipped} skipped` : ''}`);
if (injected > 0) console.log(`faults: ${injected} injected, ${held} held`);
process.exit(status !== 0 || failed > 0 ? 1 : 0);
