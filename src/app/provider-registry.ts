// Registered backup providers, kept in <configDir>/providers.json: a name bound to an executable that speaks the
// provider contract (docs/providers.md; with an optional --config file passed in every request and per-verb
// timeouts), or to a tool driver configuration (--tool CONFIG.json). Registered once, used by name.
import { constants } from 'node:fs';
import { access, mkdir, readFile } from 'node:fs/promises';
import { isAbsolute, join } from 'node:path';
import { ExecProvider, type ProviderEndpoint } from '../backup/consume/provider-client.js';
import { isProviderVerb, type ProviderVerb } from '../backup/consume/provider-contract.js';
import { ToolDriver, loadToolConfig } from '../backup/consume/tool-driver.js';
import { writeFileAtomic } from '../util/atomic-file.js';
import { ConflictError, InvalidInputError, NotFoundError } from '../util/errors.js';

export interface ProviderEntry {
  name: string;
  kind: 'exec' | 'tool';
  /** kind exec: the executable. */
  exec?: string;
  /** kind exec: the provider's own configuration file, passed as `config` in every request. */
  config?: string;
  /** kind exec: seconds per verb, over the defaults. */
  timeouts?: Partial<Record<ProviderVerb, number>>;
  /** kind tool: the tool driver configuration. */
  tool?: string;
  addedAt: string;
}

const PROVIDER_NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;

/** Throws InvalidInputError unless `name` can name a provider (and its state directory). */
export function validateProviderName(name: string): void {
  if (!PROVIDER_NAME.test(name)) {
    throw new InvalidInputError(`provider name '${name}' is not valid`, { hint: 'use letters, digits, ".", "_" or "-", starting with a letter or digit (at most 64 characters)' });
  }
}

/** Parses `--timeout VERB=SECONDS` values. @throws InvalidInputError on an unknown verb or a bad number. */
export function parseTimeouts(specs: readonly string[]): Partial<Record<ProviderVerb, number>> {
  const out: Partial<Record<ProviderVerb, number>> = {};
  for (const spec of specs) {
    const m = /^([a-z-]+)=(\d+)$/.exec(spec);
    if (!m || !isProviderVerb(m[1]!) || Number(m[2]) < 1) {
      throw new InvalidInputError(`--timeout '${spec}' is not VERB=SECONDS`, { hint: 'e.g. --timeout backup-vm=7200 (verbs: see docs/providers.md)' });
    }
    out[m[1] as ProviderVerb] = Number(m[2]);
  }
  return out;
}

export class ProviderRegistry {
  constructor(private readonly configDir: string) {}

  private get file(): string {
    return join(this.configDir, 'providers.json');
  }

  /** Every registered provider; none when the file is absent. @throws InvalidInputError naming a corrupt file. */
  async list(): Promise<ProviderEntry[]> {
    let text: string;
    try {
      text = await readFile(this.file, 'utf8');
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw error;
    }
    try {
      const doc = JSON.parse(text) as { version: number; providers: ProviderEntry[] };
      if (doc.version !== 1 || !Array.isArray(doc.providers)) throw new Error('not a version 1 provider list');
      return doc.providers;
    } catch (error) {
      throw new InvalidInputError(`the provider registry ${this.file} is damaged: ${String(error)}`, { cause: error });
    }
  }

  /** @throws NotFoundError when no provider has that name. */
  async get(name: string): Promise<ProviderEntry> {
    validateProviderName(name);
    const entry = (await this.list()).find((p) => p.name === name);
    if (!entry) throw new NotFoundError(`no backup provider '${name}' is registered`, { hint: `register it with \`fleece provider add ${name} --exec PATH\` (or --tool CONFIG.json)` });
    return entry;
  }

  /**
   * Registers a provider after checking it: the executable exists and may be run, the config file exists, a tool
   * configuration is valid. @throws ConflictError (the name is taken), InvalidInputError.
   */
  async add(entry: Omit<ProviderEntry, 'addedAt'>): Promise<ProviderEntry> {
    validateProviderName(entry.name);
    const list = await this.list();
    if (list.some((p) => p.name === entry.name)) {
      throw new ConflictError(`a backup provider '${entry.name}' is registered already`, { hint: `remove it first: \`fleece provider remove ${entry.name}\`` });
    }
    if (entry.kind === 'exec') {
      if (!entry.exec || !isAbsolute(entry.exec)) throw new InvalidInputError(`--exec '${entry.exec ?? ''}' is not an absolute path`);
      await access(entry.exec, constants.X_OK).catch(() => {
        throw new InvalidInputError(`the provider executable ${entry.exec} does not exist or may not be run`, { hint: 'chmod +x it' });
      });
      if (entry.config !== undefined) {
        if (!isAbsolute(entry.config)) throw new InvalidInputError(`--config '${entry.config}' is not an absolute path`);
        await access(entry.config, constants.R_OK).catch(() => {
          throw new InvalidInputError(`the provider configuration ${entry.config} cannot be read`);
        });
      }
    } else {
      if (!entry.tool || !isAbsolute(entry.tool)) throw new InvalidInputError(`--tool '${entry.tool ?? ''}' is not an absolute path`);
      await loadToolConfig(entry.tool);
    }
    const added: ProviderEntry = { ...entry, addedAt: new Date().toISOString() };
    await mkdir(this.configDir, { recursive: true, mode: 0o755 });
    await writeFileAtomic(this.file, `${JSON.stringify({ version: 1, providers: [...list, added] }, null, 2)}\n`, 0o600);
    return added;
  }

  /** @throws NotFoundError when no provider has that name. */
  async remove(name: string): Promise<ProviderEntry> {
    const entry = await this.get(name);
    const rest = (await this.list()).filter((p) => p.name !== name);
    await writeFileAtomic(this.file, `${JSON.stringify({ version: 1, providers: rest }, null, 2)}\n`, 0o600);
    return entry;
  }
}

/** The endpoint of a registered provider: the executable, or the tool driver. */
export function endpointOf(
  entry: ProviderEntry,
  env: { stateDir: string; onStderr?: (line: string, verb: ProviderVerb) => void },
): ProviderEndpoint {
  if (entry.kind === 'tool') return new ToolDriver({ name: entry.name, configPath: entry.tool!, stateDir: env.stateDir });
  return new ExecProvider({
    name: entry.name,
    exec: entry.exec!,
    ...(entry.config ? { config: entry.config } : {}),
    ...(entry.timeouts ? { timeouts: entry.timeouts } : {}),
    ...(env.onStderr ? { onStderr: env.onStderr } : {}),
  });
}
