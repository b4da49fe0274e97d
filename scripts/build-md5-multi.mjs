#!/usr/bin/env node
// Builds native/md5-multi/build/libmd5multi.so (multi-buffer MD5, native/md5-multi/md5-multi.c) with the system C
// compiler; run by `npm install` / `npm ci` (the package's install script) and by hand. The library is optional:
// without it fleece hashes with node:crypto, so this never fails: it says what went wrong and exits 0.
// A plain shared library loaded with koffi, not a node-gyp addon: it needs a C compiler only (no Node headers, no
// python, no download), and one build serves the main thread and every worker thread.
// Env: CC (default cc), FLEECE_MD5_MULTI_BUILD=0 to skip.
import { spawnSync } from 'node:child_process';
import { mkdirSync, renameSync, rmSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const dir = join(root, 'native', 'md5-multi');
const source = join(dir, 'md5-multi.c');
const out = join(dir, 'build', 'libmd5multi.so');
const say = (text) => process.stderr.write(`md5-multi: ${text}\n`);

function build() {
  if (process.env.FLEECE_MD5_MULTI_BUILD === '0') return say('skipped (FLEECE_MD5_MULTI_BUILD=0): md5 uses node:crypto');
  if (process.platform !== 'linux' || process.arch !== 'x64') return say(`skipped on ${process.platform}-${process.arch}: md5 uses node:crypto`);
  const cc = process.env.CC || 'cc';
  mkdirSync(dirname(out), { recursive: true });
  const tmp = `${out}.${process.pid}.tmp`;
  const args = ['-O3', '-std=gnu11', '-shared', '-fPIC', '-fvisibility=hidden', '-Wall', '-Wextra', '-o', tmp, source];
  const r = spawnSync(cc, args, { cwd: dir, encoding: 'utf8', timeout: 120_000 });
  if (r.error || r.status !== 0) {
    rmSync(tmp, { force: true });
    const detail = r.error ? r.error.message : `${cc} exited ${r.status}: ${(r.stderr || '').trim().split('\n').slice(-5).join(' | ')}`;
    return say(`not built (${detail}): md5 uses node:crypto`);
  }
  renameSync(tmp, out);
  say(`built ${out} (${statSync(out).size} bytes)`);
}

try {
  build();
} catch (error) {
  say(`not built (${error?.message ?? error}): md5 uses node:crypto`);
}
process.exitCode = 0;
