// Tool drivers: a provider defined by configuration alone, after Cinder's TSM backup driver. Command templates for
// backup, restore and delete (`{path}`, `{backup_id}`, `{mode}`, `{vm}`, `{disk}`) run as argument vectors, never
// through a shell; mode `image` hands the tool the virtual file of the point-in-time export, mode `file` a regular
// temporary raw copy of it. Success is the exit code and, as the TSM driver checks dsmc, `key : value` lines of the
// output: a value matched exactly or at least (`Total number of objects backed up : 1`). The tool's output is kept
// in the backup's record (<stateDir>/providers/<name>/records/…) and shown on failure. Secrets come from a file or
// the environment into the tool's environment, never onto its command line. Tool drivers read whole volumes (no
// bitmap): incremental storage is the tool's own business (borg's deduplication, dsmc's image backups).
import { spawn } from 'node:child_process';
import { createWriteStream } from 'node:fs';
import { open, readFile, rm, stat, truncate } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { Type, type Static } from 'typebox';
import { InvalidInputError, describeError } from '../../util/errors.js';
import { lazyLogger } from './lazy-logger.js';
import type { CallOptions, ProviderEndpoint } from './provider-client.js';
import { contractViolation, ProviderError, type ProviderVerb, type ReplyOf, type RequestOf } from './provider-contract.js';
import { readToolRecord, toolRecordPath, writeToolRecord, type ToolBackupRecord, type ToolRun } from './provider-state.js';

const log = lazyLogger('backup.tool-driver');

const Check = Type.Object({
  'exit-codes': Type.Optional(Type.Array(Type.Integer(), { minItems: 1, description: 'exit codes that mean success (default [0])' })),
  expect: Type.Optional(Type.Array(Type.Object({
    key: Type.String({ minLength: 1, description: 'the text before the colon, e.g. "Total number of objects backed up"' }),
    value: Type.String({ minLength: 1 }),
    match: Type.Optional(Type.Enum(['exact', 'at-least'], { description: 'exact (default): equal text; at-least: a number at least this' })),
  }, { additionalProperties: false }), { description: '`key : value` lines the output must show' })),
  streams: Type.Optional(Type.Enum(['stdout', 'stderr', 'both'], { description: 'where the lines are looked for (default both)' })),
}, { additionalProperties: false });

const Command = Type.Object({
  argv: Type.Array(Type.String(), { minItems: 1, description: 'the command and its arguments, with {path} {backup_id} {mode} {vm} {disk}' }),
  success: Type.Optional(Check),
}, { additionalProperties: false });

const Secret = Type.Union([
  Type.String({ description: 'a plain value (not for secrets)' }),
  Type.Object({ file: Type.String({ minLength: 1, description: 'read from this file (the trailing newline dropped)' }) }, { additionalProperties: false }),
  Type.Object({ env: Type.String({ minLength: 1, description: "taken from this variable of fleece's environment" }) }, { additionalProperties: false }),
]);

/** The tool driver configuration (`fleece provider add NAME --tool CONFIG.json`), version 1. */
export const ToolConfigSchema = Type.Object({
  tool: Type.Literal(1, { description: 'the configuration version' }),
  description: Type.Optional(Type.String()),
  mode: Type.Enum(['image', 'file'], { description: 'image: {path} is the virtual file of the export; file: a regular raw file fleece copies the export into first' }),
  backup: Command,
  restore: Type.Object({
    argv: Type.Array(Type.String(), { minItems: 1 }),
    output: Type.Optional(Type.Enum(['path', 'stdout'], { description: 'path (default): the tool writes the image to {path}; stdout: fleece writes the tool\'s stdout there' })),
    success: Type.Optional(Check),
  }, { additionalProperties: false }),
  delete: Type.Optional(Command),
  env: Type.Optional(Type.Record(Type.String({ pattern: '^[A-Za-z_][A-Za-z0-9_]*$' }), Secret, { additionalProperties: false })),
  'timeout-seconds': Type.Optional(Type.Integer({ minimum: 1, description: 'per tool run (default 86400)' })),
}, { additionalProperties: false, description: 'a tool driver: a backup provider defined by configuration alone' });

export type ToolConfig = Static<typeof ToolConfigSchema>;
type CheckSpec = Static<typeof Check>;

const PLACEHOLDERS = new Set(['path', 'backup_id', 'mode', 'vm', 'disk']);
const PASSWORD_ARG = /(^|[-_])(pass(word|wd|phrase)?|secret|token)\s*[=:]|^--?pass(word|wd|phrase)?$/i;

/**
 * Reads and checks a tool driver configuration.
 * @throws InvalidInputError naming the file and what is wrong (unknown field, unknown placeholder, a password on
 *   the command line).
 */
export async function loadToolConfig(path: string): Promise<ToolConfig> {
  let doc: unknown;
  try {
    doc = JSON.parse(await readFile(path, 'utf8'));
  } catch (error) {
    throw new InvalidInputError(`the tool driver configuration ${path} cannot be read: ${describeError(error)}`, { cause: error });
  }
  return checkToolConfig(doc, path);
}

/** @throws InvalidInputError (see loadToolConfig). */
export function checkToolConfig(doc: unknown, where: string): ToolConfig {
  const wrong = contractViolation(ToolConfigSchema, doc);
  if (wrong) throw new InvalidInputError(`the tool driver configuration ${where} ${wrong}`, { hint: 'see docs/providers.md, "Tool drivers"' });
  const config = doc as ToolConfig;
  const commands: [string, string[]][] = [['backup', config.backup.argv], ['restore', config.restore.argv], ...(config.delete ? [['delete', config.delete.argv] as [string, string[]]] : [])];
  for (const [what, argv] of commands) {
    for (const arg of argv) {
      for (const m of arg.matchAll(/\{([^{}]*)\}/g)) {
        if (!PLACEHOLDERS.has(m[1]!)) {
          throw new InvalidInputError(`the ${what} command of ${where} has an unknown placeholder {${m[1]}}`, { hint: `use ${[...PLACEHOLDERS].map((p) => `{${p}}`).join(', ')}` });
        }
      }
      if (PASSWORD_ARG.test(arg)) {
        throw new InvalidInputError(`the ${what} command of ${where} puts a secret on the command line (${JSON.stringify(arg)}): every user of the host can read it there`, {
          hint: 'give it to the tool through its environment: "env": {"NAME": {"file": "/etc/fleece/secret"}} or {"env": "VARIABLE"}',
        });
      }
    }
  }
  return config;
}

/** `text` with the placeholders filled (pure). */
export function fillTemplate(argv: readonly string[], values: Record<string, string>): string[] {
  return argv.map((arg) => arg.replace(/\{([^{}]*)\}/g, (_, name: string) => {
    const value = values[name];
    if (value === undefined) throw new InvalidInputError(`placeholder {${name}} has no value here`);
    return value;
  }));
}

/** `key : value` lines of a tool's output, as Cinder's TSM driver reads dsmc (pure). */
export function parseKeyValues(output: string): Map<string, string> {
  const map = new Map<string, string>();
  for (const line of output.split('\n')) {
    const at = line.indexOf(':');
    if (at < 0) continue;
    const key = line.slice(0, at).trim();
    const value = line.slice(at + 1).trim();
    if (key !== '' && value !== '') map.set(key, value);
  }
  return map;
}

/** Why a run did not succeed, or undefined when it did (pure). */
export function checkToolOutput(check: CheckSpec | undefined, result: { exitCode: number | null; signal: string | null; stdout: string; stderr: string }): string | undefined {
  const codes = check?.['exit-codes'] ?? [0];
  if (result.signal) return `it was killed by ${result.signal}`;
  if (result.exitCode === null || !codes.includes(result.exitCode)) return `it exited with status ${result.exitCode} (success is ${codes.join(' or ')})`;
  const streams = check?.streams ?? 'both';
  const text = streams === 'stdout' ? result.stdout : streams === 'stderr' ? result.stderr : `${result.stdout}\n${result.stderr}`;
  const values = parseKeyValues(text);
  for (const e of check?.expect ?? []) {
    const found = values.get(e.key);
    if (found === undefined) return `its output has no line '${e.key} : ${e.value}'`;
    if ((e.match ?? 'exact') === 'exact') {
      if (found !== e.value) return `its output says '${e.key} : ${found}', not '${e.value}'`;
    } else {
      const n = Number(found.replace(/,/g, ''));
      const want = Number(e.value.replace(/,/g, ''));
      if (!Number.isFinite(n) || n < want) return `its output says '${e.key} : ${found}', less than ${e.value}`;
    }
  }
  return undefined;
}

const KEEP_OUTPUT = 256 * 1024;

function tailOf(text: string, lines = 8): string {
  return text.trim().split('\n').slice(-lines).join(' | ');
}

export interface ToolDriverOptions {
  name: string;
  configPath: string;
  stateDir: string;
  env?: NodeJS.ProcessEnv;
}

/** A tool driver as a provider endpoint: the contract's verbs answered inside fleece by running the tool. */
export class ToolDriver implements ProviderEndpoint {
  readonly kind = 'tool' as const;
  readonly name: string;
  #config: ToolConfig | undefined;
  #record: ToolBackupRecord | undefined;

  constructor(private readonly options: ToolDriverOptions) {
    this.name = options.name;
  }

  async config(): Promise<ToolConfig> {
    this.#config ??= await loadToolConfig(this.options.configPath);
    return this.#config;
  }

  async #env(config: ToolConfig): Promise<NodeJS.ProcessEnv> {
    const env: NodeJS.ProcessEnv = { ...(this.options.env ?? process.env) };
    for (const [key, value] of Object.entries(config.env ?? {})) {
      if (typeof value === 'string') env[key] = value;
      else if ('file' in value) env[key] = (await readFile(value.file, 'utf8')).replace(/\r?\n$/, '');
      else {
        const from = (this.options.env ?? process.env)[value.env];
        if (from === undefined) throw new InvalidInputError(`tool driver '${this.name}' takes ${key} from the environment variable ${value.env}, which is not set`);
        env[key] = from;
      }
    }
    return env;
  }

  /** Runs one command of the tool; stdout goes to `stdoutTo` instead of the record when given. */
  async #run(
    op: ToolRun['op'],
    disk: string,
    toolBackupId: string,
    argv: string[],
    check: CheckSpec | undefined,
    options: CallOptions & { stdoutTo?: string },
  ): Promise<ToolRun> {
    const config = await this.config();
    const env = await this.#env(config);
    const timeoutMs = options.timeoutMs ?? (config['timeout-seconds'] ?? 86_400) * 1000;
    const startedAt = new Date().toISOString();
    const result = await new Promise<{ exitCode: number | null; signal: string | null; stdout: string; stderr: string; error?: string }>((resolve) => {
      const child = spawn(argv[0]!, argv.slice(1), { env, detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
      let stdout = '';
      let stderr = '';
      let why: string | undefined;
      const sink = options.stdoutTo ? createWriteStream(options.stdoutTo, { flags: 'w', mode: 0o600 }) : undefined;
      if (sink) child.stdout!.pipe(sink);
      else child.stdout!.on('data', (c: Buffer) => { stdout = (stdout + c.toString()).slice(-KEEP_OUTPUT); });
      child.stderr!.on('data', (c: Buffer) => {
        const text = c.toString();
        stderr = (stderr + text).slice(-KEEP_OUTPUT);
        for (const line of text.split('\n').filter(Boolean)) log.info({ provider: this.name, op, disk }, line);
      });
      const kill = (reason: string) => {
        why ??= reason;
        try {
          process.kill(-child.pid!, 'SIGTERM');
          setTimeout(() => { try { process.kill(-child.pid!, 'SIGKILL'); } catch { /* gone */ } }, 3000).unref();
        } catch {
          // gone
        }
      };
      const timer = setTimeout(() => kill(`it did not end within ${Math.round(timeoutMs / 1000)} s`), timeoutMs);
      const onAbort = () => kill('the operation was aborted');
      options.signal?.addEventListener('abort', onAbort, { once: true });
      child.once('error', (error) => {
        clearTimeout(timer);
        options.signal?.removeEventListener('abort', onAbort);
        resolve({ exitCode: null, signal: null, stdout, stderr, error: `${argv[0]} could not be run: ${describeError(error)}` });
      });
      child.once('close', (code, signal) => {
        clearTimeout(timer);
        options.signal?.removeEventListener('abort', onAbort);
        const done = () => resolve({ exitCode: code, signal, stdout, stderr, ...(why ? { error: why } : {}) });
        if (sink) sink.end(done);
        else done();
      });
    });
    const failure = result.error ?? checkToolOutput(check, result);
    const run: ToolRun = {
      op, disk, toolBackupId, argv, exitCode: result.exitCode, signal: result.signal, stdout: result.stdout, stderr: result.stderr,
      ok: failure === undefined, ...(failure ? { failure } : {}), startedAt, finishedAt: new Date().toISOString(),
    };
    return run;
  }

  #fail(verb: ProviderVerb, run: ToolRun, recordPath: string, aborted: boolean): ProviderError {
    const output = [run.stdout && `stdout: ${tailOf(run.stdout)}`, run.stderr && `stderr: ${tailOf(run.stderr)}`].filter(Boolean).join('; ');
    return new ProviderError(this.name, verb, aborted ? 'aborted' : run.exitCode === 0 ? 'check' : 'exit',
      `failed the ${run.op} of disk ${run.disk}: ${basename(run.argv[0]!)}: ${run.failure}${output ? `; ${output}` : ''}`, {
        hint: `the whole output is in ${recordPath}`,
      });
  }

  async #save(): Promise<string> {
    return writeToolRecord(this.options.stateDir, this.#record!);
  }

  async call<V extends ProviderVerb>(verb: V, params: RequestOf<V>, options: CallOptions = {}): Promise<ReplyOf<V>> {
    const answer = await this.#answer(verb, params as never, options);
    return answer as ReplyOf<V>;
  }

  async #answer(verb: ProviderVerb, params: Record<string, unknown>, options: CallOptions): Promise<unknown> {
    const config = await this.config();
    const { stateDir } = this.options;
    switch (verb) {
      case 'job-init':
      case 'job-cleanup':
      case 'restore-vm-cleanup':
        return {};
      case 'backup-init': {
        const stamp = new Date().toISOString().replace(/[-:]/g, '').replace(/\.\d+Z$/, 'Z');
        const backupId = `${String(params.vm)}-${stamp}-${randomBytes(2).toString('hex')}`;
        this.#record = { version: 1, provider: this.name, backupId, vm: String(params.vm), mode: config.mode, state: 'running', createdAt: new Date().toISOString(), disks: {}, runs: [] };
        await this.#save();
        return { 'backup-id': backupId };
      }
      case 'get-mechanism':
        return { mechanism: 'file-handle' };
      case 'query-incremental':
        // The tool reads whole volumes: no bitmap.
        return { volumes: {} };
      case 'backup-vm': {
        const request = params as RequestOf<'backup-vm'>;
        this.#record ??= await readToolRecord(stateDir, this.name, request['backup-id']);
        for (const [disk, volume] of Object.entries(request.volumes)) {
          if (!volume.file) throw new ProviderError(this.name, verb, 'contract', `got no file for volume ${disk}`);
          const toolBackupId = `${request['backup-id']}-${disk}`;
          this.#record.disks[disk] = { size: volume.size, toolBackupId, stored: false };
          let path = volume.file;
          let copy: string | undefined;
          if (config.mode === 'file') {
            copy = join(options.workDir ?? '/nonexistent', `${disk}.raw`);
            await copySparse(volume.file, copy, volume.size, options.signal);
            path = copy;
          }
          try {
            const argv = fillTemplate(config.backup.argv, { path, backup_id: toolBackupId, mode: config.mode, vm: request.vm, disk });
            const run = await this.#run('backup', disk, toolBackupId, argv, config.backup.success, options);
            this.#record.runs.push(run);
            this.#record.disks[disk]!.stored = run.ok;
            const recordPath = await this.#save();
            if (!run.ok) throw this.#fail(verb, run, recordPath, options.signal?.aborted ?? false);
          } finally {
            if (copy) await rm(copy, { force: true });
          }
        }
        return {};
      }
      case 'backup-cleanup': {
        const request = params as RequestOf<'backup-cleanup'>;
        const record = this.#record ?? await readToolRecord(stateDir, this.name, request['backup-id']).catch(() => undefined);
        if (!record) return {};
        this.#record = record;
        if (request.success) {
          record.state = 'complete';
        } else {
          record.state = 'failed';
          // What was stored of a failed backup goes again (the TSM driver's delete; a failed delete is only logged).
          for (const [disk, d] of Object.entries(record.disks)) {
            if (!d.stored || !config.delete) continue;
            const argv = fillTemplate(config.delete.argv, { path: '', backup_id: d.toolBackupId, mode: config.mode, vm: record.vm, disk });
            const run = await this.#run('delete', disk, d.toolBackupId, argv, config.delete.success, options);
            record.runs.push(run);
            if (run.ok) d.stored = false;
            else log.warn({ provider: this.name, disk, failure: run.failure }, 'the tool could not delete a part of a failed backup');
          }
        }
        await this.#save();
        return {};
      }
      case 'restore-get-mechanism':
        return { mechanism: 'qemu-img', 'vm-type': 'qemu' };
      case 'restore-vm-init': {
        const request = params as RequestOf<'restore-vm-init'>;
        const record = await readToolRecord(stateDir, this.name, request['backup-id']);
        if (record.state !== 'complete') {
          throw new ProviderError(this.name, verb, 'exit', `cannot restore backup ${record.backupId}: it is ${record.state}`, { hint: `see ${toolRecordPath(stateDir, this.name, record.backupId)}` });
        }
        this.#record = record;
        return { volumes: Object.fromEntries(Object.entries(record.disks).map(([disk, d]) => [disk, { size: d.size }])) };
      }
      case 'restore-volume-init': {
        const request = params as RequestOf<'restore-volume-init'>;
        const record = this.#record ?? await readToolRecord(stateDir, this.name, request['backup-id']);
        const disk = record.disks[request.volume];
        if (!disk) throw new ProviderError(this.name, verb, 'exit', `backup ${record.backupId} has no volume ${request.volume}`);
        const out = join(options.workDir ?? '/nonexistent', `${request.volume}.raw`);
        const toStdout = config.restore.output === 'stdout';
        if (config.mode === 'image' && !toStdout) {
          await (await open(out, 'wx', 0o600)).close();
          await truncate(out, disk.size);
        }
        const argv = fillTemplate(config.restore.argv, { path: out, backup_id: disk.toolBackupId, mode: config.mode, vm: record.vm, disk: request.volume });
        const run = await this.#run('restore', request.volume, disk.toolBackupId, argv, config.restore.success, { ...options, ...(toStdout ? { stdoutTo: out } : {}) });
        record.runs.push(run);
        this.#record = record;
        const recordPath = await this.#save();
        if (!run.ok) throw this.#fail(verb, run, recordPath, options.signal?.aborted ?? false);
        const size = await stat(out).then((s) => s.size, () => -1);
        if (size !== disk.size) {
          throw new ProviderError(this.name, verb, 'check', `restored ${size < 0 ? 'nothing' : `${size} bytes`} of volume ${request.volume}, not ${disk.size}`, { hint: `the tool's output is in ${recordPath}` });
        }
        return { 'qemu-img-path': out };
      }
      case 'restore-volume-cleanup': {
        const request = params as RequestOf<'restore-volume-cleanup'>;
        if (options.workDir) await rm(join(options.workDir, `${request.volume}.raw`), { force: true });
        return {};
      }
    }
  }
}

/** Copies `size` bytes of `from` into a new sparse raw file `to` (all-zero blocks become holes). */
async function copySparse(from: string, to: string, size: number, signal?: AbortSignal): Promise<void> {
  const BLOCK = 1024 * 1024;
  const input = await open(from, 'r');
  const output = await open(to, 'wx', 0o600);
  try {
    await output.truncate(size);
    const buffer = Buffer.allocUnsafe(BLOCK);
    for (let at = 0; at < size; at += BLOCK) {
      if (signal?.aborted) throw new ProviderError('tool', 'backup-vm', 'aborted', 'was stopped: the operation was aborted');
      const n = Math.min(BLOCK, size - at);
      const { bytesRead } = await input.read(buffer, 0, n, at);
      if (bytesRead !== n) throw new InvalidInputError(`reading ${from} ended at ${at + bytesRead} of ${size} bytes`);
      let zero = true;
      for (let i = 0; i < n && zero; i += 8) {
        zero = i + 8 <= n ? buffer.readBigUInt64LE(i) === 0n : buffer.subarray(i, n).every((b) => b === 0);
      }
      if (!zero) await output.write(buffer, 0, n, at);
    }
    await output.sync();
  } finally {
    await input.close();
    await output.close();
  }
}
