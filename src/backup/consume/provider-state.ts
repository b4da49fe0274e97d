// What fleece remembers per provider: per VM, the checkpoint its last SUCCESSFUL backup ended at on each disk
// (`<stateDir>/providers/<name>/<vm>.json`, written only after backup-cleanup {success: true} answered), which is
// what `reuse` means; and, for tool drivers, the record of every backup with the tool's output
// (`<stateDir>/providers/<name>/records/<backup-id>.json`).
import { mkdir, readFile, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { writeFileAtomic } from '../../util/atomic-file.js';
import { InvalidInputError, NotFoundError } from '../../util/errors.js';
import type { BitmapModeValue } from './provider-contract.js';

export interface ProviderDiskState {
  size: number;
  bitmapMode: BitmapModeValue;
  /** The checkpoint this disk's data ends at; null when the disk holds no bitmap for the provider. */
  checkpoint: string | null;
}

export interface ProviderVmState {
  version: 1;
  provider: string;
  vm: string;
  backupId: string;
  /** The checkpoint the backup made (null when no disk could hold a bitmap). */
  checkpoint: string | null;
  finishedAt: string;
  disks: Record<string, ProviderDiskState>;
}

const NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;

export function providerDir(stateDir: string, provider: string): string {
  if (!NAME.test(provider)) throw new InvalidInputError(`provider name '${provider}' is not valid`);
  return join(stateDir, 'providers', provider);
}

function statePath(stateDir: string, provider: string, vm: string): string {
  if (!/^[A-Za-z0-9][A-Za-z0-9_.+:@-]{0,199}$/.test(vm)) throw new InvalidInputError(`VM name '${vm}' cannot name a provider state file`);
  return join(providerDir(stateDir, provider), `${vm}.json`);
}

/** The provider's last successful backup of the VM, or undefined. @throws InvalidInputError on a damaged file. */
export async function readProviderState(stateDir: string, provider: string, vm: string): Promise<ProviderVmState | undefined> {
  const path = statePath(stateDir, provider, vm);
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw error;
  }
  try {
    const state = JSON.parse(text) as ProviderVmState;
    if (state.version !== 1 || typeof state.disks !== 'object') throw new Error('not a version 1 provider state');
    return state;
  } catch (error) {
    throw new InvalidInputError(`the provider state ${path} is damaged: ${String(error)}`, { hint: 'remove it: the next backup is then full', cause: error });
  }
}

/** Records a successful backup (atomic). */
export async function writeProviderState(stateDir: string, state: ProviderVmState): Promise<void> {
  await mkdir(providerDir(stateDir, state.provider), { recursive: true, mode: 0o700 });
  await writeFileAtomic(statePath(stateDir, state.provider, state.vm), `${JSON.stringify(state, null, 2)}\n`, 0o600);
}

/** One run of a tool (backup, restore or delete of one disk), as kept in the record. */
export interface ToolRun {
  op: 'backup' | 'restore' | 'delete';
  disk: string;
  /** The tool's backup id of this disk (the `{backup_id}` placeholder). */
  toolBackupId: string;
  argv: string[];
  exitCode: number | null;
  signal: string | null;
  stdout: string;
  stderr: string;
  ok: boolean;
  /** Why the run failed (exit code, the output check), when it did. */
  failure?: string;
  startedAt: string;
  finishedAt: string;
}

export interface ToolBackupRecord {
  version: 1;
  provider: string;
  backupId: string;
  vm: string;
  mode: 'image' | 'file';
  state: 'running' | 'complete' | 'failed' | 'deleted';
  createdAt: string;
  disks: Record<string, { size: number; toolBackupId: string; stored: boolean }>;
  runs: ToolRun[];
}

function recordPath(stateDir: string, provider: string, backupId: string): string {
  return join(providerDir(stateDir, provider), 'records', `${encodeURIComponent(backupId)}.json`);
}

export async function writeToolRecord(stateDir: string, record: ToolBackupRecord): Promise<string> {
  const path = recordPath(stateDir, record.provider, record.backupId);
  await mkdir(join(providerDir(stateDir, record.provider), 'records'), { recursive: true, mode: 0o700 });
  await writeFileAtomic(path, `${JSON.stringify(record, null, 2)}\n`, 0o600);
  return path;
}

/** @throws NotFoundError when the provider has no record of the backup. */
export async function readToolRecord(stateDir: string, provider: string, backupId: string): Promise<ToolBackupRecord> {
  const path = recordPath(stateDir, provider, backupId);
  try {
    return JSON.parse(await readFile(path, 'utf8')) as ToolBackupRecord;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') {
      throw new NotFoundError(`provider '${provider}' has no backup '${backupId}'`, { hint: `its backups are in ${join(providerDir(stateDir, provider), 'records')}` });
    }
    throw error;
  }
}

export async function listToolRecords(stateDir: string, provider: string): Promise<ToolBackupRecord[]> {
  const dir = join(providerDir(stateDir, provider), 'records');
  const names = await readdir(dir).catch(() => [] as string[]);
  const out: ToolBackupRecord[] = [];
  for (const n of names.filter((x) => x.endsWith('.json') && !x.startsWith('.'))) {
    out.push(JSON.parse(await readFile(join(dir, n), 'utf8')) as ToolBackupRecord);
  }
  return out.sort((a, b) => a.createdAt.localeCompare(b.createdAt));
}

export { recordPath as toolRecordPath };

/** The checkpoints a state names (the backup's own and each disk's). */
export function stateCheckpoints(state: ProviderVmState | undefined): string[] {
  if (!state) return [];
  const names = [state.checkpoint, ...Object.values(state.disks).map((d) => d.checkpoint)];
  return [...new Set(names.filter((n): n is string => n !== null))];
}

/** The checkpoints of VM `vm` that the last successful backup of any provider but `except` still starts from. */
export async function checkpointsOfOtherProviders(stateDir: string, vm: string, except: string): Promise<Set<string>> {
  const names = await readdir(join(stateDir, 'providers')).catch(() => [] as string[]);
  const used = new Set<string>();
  for (const name of names.filter((n) => n !== except && NAME.test(n))) {
    const state = await readProviderState(stateDir, name, vm).catch(() => undefined);
    for (const cp of stateCheckpoints(state)) used.add(cp);
  }
  return used;
}
