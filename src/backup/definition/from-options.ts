// Builds a BackupDefinition from typed options (the CLI's flags), and a fully explicit one from a resolved backup.
import { validateCheckpointName } from '../../checkpoint/model.js';
import { InvalidInputError } from '../../util/errors.js';
import type { BackupDefinition, BackupDiskDefinition, BackupImageFormat, BackupMode, ResolvedBackup } from './types.js';

/** Backup options as the CLI or API take them (no XML). */
export interface BackupOptions {
  mode: BackupMode;
  /** Disks to back up; the others are left out. Default: every disk. */
  disks?: readonly string[];
  /** Incremental since this checkpoint (every disk). */
  incremental?: string;
  /** Push: a target path per disk; listed disks not in `disks` are added to it. */
  targets?: Readonly<Record<string, string>>;
  /** Push: directory for targets not given in `targets` (becomes the resolve default). */
  targetDir?: string;
  /** Pull: directory for scratch images (becomes the resolve default). */
  scratchDir?: string;
  /** Format of push targets (default qcow2). */
  format?: BackupImageFormat;
  /** Pull: NBD server on this unix socket. */
  socket?: string;
  /** Pull: NBD server on TCP instead. */
  tcp?: { name: string; port?: number; tls?: boolean };
}

/** A definition plus the directory defaults the options gave, to pass into resolveBackupDefinition's context. */
export interface BackupRequest {
  definition: BackupDefinition;
  defaults: { defaultTargetDir?: string; defaultScratchDir?: string };
}

/**
 * Builds a definition equivalent to the XML a user would write for these options.
 * @throws InvalidInputError naming the option: unknown mode, duplicate or empty disk names, a bad checkpoint name,
 * relative paths, push-only or pull-only options in the other mode, or both socket and tcp.
 */
export function backupDefinitionFromOptions(options: BackupOptions): BackupRequest {
  const { mode } = options;
  if (mode !== 'push' && mode !== 'pull') throw new InvalidInputError(`mode '${String(mode)}' is unknown`, { hint: "use 'push' or 'pull'" });
  const definition: BackupDefinition = { mode, disks: [] };
  if (options.incremental !== undefined) {
    validateCheckpointName(options.incremental, 'incremental checkpoint name');
    definition.incremental = options.incremental;
  }
  const absolute = (what: string, path: string | undefined): void => {
    if (path !== undefined && !path.startsWith('/')) throw new InvalidInputError(`${what} '${path}' is not an absolute path`, { hint: 'give an absolute path' });
  };
  const pushOnly = { targets: options.targets, targetDir: options.targetDir, format: options.format };
  const pullOnly = { scratchDir: options.scratchDir, socket: options.socket, tcp: options.tcp };
  for (const [key, value] of Object.entries(mode === 'push' ? pullOnly : pushOnly)) {
    if (value !== undefined) throw new InvalidInputError(`option ${key} is not used in ${mode} mode`, { hint: `remove it or use ${mode === 'push' ? 'pull' : 'push'} mode` });
  }
  absolute('targetDir', options.targetDir);
  absolute('scratchDir', options.scratchDir);

  const names: string[] = [];
  for (const name of [...(options.disks ?? []), ...Object.keys(options.targets ?? {})]) {
    if (name.trim() === '') throw new InvalidInputError('a disk name is empty', { hint: 'name VM disks by target, e.g. vda' });
    if ((options.disks ?? []).filter((d) => d === name).length > 1) throw new InvalidInputError(`disk '${name}' is given twice`, { hint: 'give each disk once' });
    if (!names.includes(name)) names.push(name);
  }
  for (const name of names) {
    const disk: BackupDiskDefinition = { name, backup: true };
    const target = options.targets?.[name];
    if (target !== undefined) {
      absolute(`target of disk ${name}`, target);
      disk.type = 'file';
      disk.path = target;
    }
    if (options.format !== undefined) disk.format = options.format;
    definition.disks.push(disk);
  }
  if (mode === 'push' && options.format !== undefined && names.length === 0) {
    throw new InvalidInputError('option format needs the disks listed', { hint: 'give disks, or leave format out for qcow2' });
  }

  if (mode === 'pull') {
    if (options.socket !== undefined && options.tcp !== undefined) throw new InvalidInputError('both socket and tcp are given', { hint: 'choose one NBD server' });
    if (options.socket !== undefined) {
      absolute('socket', options.socket);
      definition.server = { transport: 'unix', socket: options.socket };
    } else if (options.tcp !== undefined) {
      if (options.tcp.name.trim() === '') throw new InvalidInputError('tcp name is empty', { hint: 'give the address to listen on, e.g. localhost' });
      definition.server = { transport: 'tcp', ...options.tcp };
    }
  }
  const defaults: BackupRequest['defaults'] = {};
  if (options.targetDir !== undefined) defaults.defaultTargetDir = options.targetDir;
  if (options.scratchDir !== undefined) defaults.defaultScratchDir = options.scratchDir;
  return { definition, defaults };
}

/** The fully explicit definition of a resolved backup (every disk listed, every default written): backup-dumpxml. */
export function definitionFromResolved(resolved: ResolvedBackup): BackupDefinition {
  const def: BackupDefinition = { mode: resolved.mode, disks: [] };
  if (resolved.incremental !== undefined) def.incremental = resolved.incremental;
  if (resolved.server !== undefined) def.server = { ...resolved.server };
  for (const disk of resolved.disks) {
    if (!disk.included) {
      def.disks.push({ name: disk.name, backup: false });
      continue;
    }
    const out: BackupDiskDefinition = {
      name: disk.name,
      backup: true,
      backupMode: disk.incrementalFrom === undefined ? 'full' : 'incremental',
      type: disk.storage.type,
      path: disk.storage.path,
      format: disk.storage.format,
    };
    if (disk.incrementalFrom !== undefined) out.incremental = disk.incrementalFrom;
    if (disk.exportName !== undefined) out.exportName = disk.exportName;
    if (disk.exportBitmap !== undefined) out.exportBitmap = disk.exportBitmap;
    def.disks.push(out);
  }
  return def;
}
