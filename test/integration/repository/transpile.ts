// Test helper: transpiles the repository and util sources to plain ESM JavaScript in a temp dir, for child processes.
import { mkdir, readdir, readFile, symlink, writeFile } from 'node:fs/promises';
import { join, dirname } from 'node:path';
import ts from 'typescript';

async function* walk(dir: string): AsyncGenerator<string> {
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) yield* walk(path);
    else if (entry.name.endsWith('.ts') && !entry.name.endsWith('.d.ts')) yield path;
  }
}

/** Writes `<out>/src/{util,repository,restore}/**.js` and links node_modules; returns `<out>/src`. */
export async function transpileSources(out: string, root = process.cwd()): Promise<string> {
  for (const layer of ['util', 'repository', 'restore']) {
    for await (const file of walk(join(root, 'src', layer))) {
      const rel = file.slice(root.length + 1).replace(/\.ts$/, '.js');
      const js = ts.transpileModule(await readFile(file, 'utf8'), {
        compilerOptions: { module: ts.ModuleKind.ESNext, target: ts.ScriptTarget.ES2022, esModuleInterop: true },
      }).outputText;
      await mkdir(dirname(join(out, rel)), { recursive: true });
      await writeFile(join(out, rel), js);
    }
  }
  await writeFile(join(out, 'package.json'), '{"type":"module"}');
  await symlink(join(root, 'node_modules'), join(out, 'node_modules'));
  return join(out, 'src');
}
