// fleece's version as package.json gives it, for /v1/health and --version.
import { existsSync, readFileSync } from 'node:fs';

/** fleece's version, from package.json (found from src/ and from dist/src/). */
export function daemonVersion(): string {
  for (const up of ['../../package.json', '../../../package.json']) {
    const url = new URL(up, import.meta.url);
    if (!existsSync(url)) continue;
    try {
      const pkg = JSON.parse(readFileSync(url, 'utf8')) as { name?: string; version?: string };
      if (pkg.name === 'fleece' && pkg.version) return pkg.version;
    } catch {
      // try the next candidate
    }
  }
  return '0.0.0';
}
