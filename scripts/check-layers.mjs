#!/usr/bin/env node
// Checks that imports point downward only (STYLE.md "What we take", 1): fails naming each import that points up.
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join, relative, dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
// Which top-level folders each layer may import (besides itself).
const allowed = {
  util: [],
  qmp: ['util'],
  qemu: ['qmp', 'util'],
  checkpoint: ['qemu', 'qmp', 'util'],
  nbd: ['native', 'util'],
  native: ['util'],
  repository: ['util'],
  restore: ['repository', 'nbd', 'native', 'util'],
  backup: ['checkpoint', 'qemu', 'qmp', 'nbd', 'native', 'repository', 'util'],
  app: ['backup', 'checkpoint', 'qemu', 'qmp', 'nbd', 'native', 'repository', 'restore', 'util'],
  // The CLI and the daemon hold no business logic: they import app (the composition root) only.
  cli: ['app', 'util'],
  daemon: ['app', 'util'],
};

function layerOf(file) {
  const rel = relative(root, file).split('/');
  if (rel[0] === 'native') return 'native';
  if (rel[0] === 'src') return rel[1];
  return undefined;
}

function* walk(dir) {
  for (const name of readdirSync(dir)) {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) yield* walk(path);
    else if (path.endsWith('.ts')) yield path;
  }
}

const problems = [];
for (const base of ['src', 'native']) {
  let files;
  try { files = [...walk(join(root, base))]; } catch { continue; }
  for (const file of files) {
    const from = layerOf(file);
    const text = readFileSync(file, 'utf8');
    // Static imports and lazy `import('…')` alike (the CLI loads most of its code lazily).
    for (const match of text.matchAll(/(?:from\s+|import\(\s*)'(\.[^']+)'/g)) {
      const to = layerOf(resolve(dirname(file), match[1]));
      if (!to || to === from) continue;
      if (!(allowed[from] ?? []).includes(to)) {
        problems.push(`${relative(root, file)} imports ${match[1]} (${from} may not depend on ${to})`);
      }
    }
  }
}
if (problems.length) {
  console.error(`layer violations:\n${problems.join('\n')}`);
  process.exit(1);
}
console.log('layers ok');
