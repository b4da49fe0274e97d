// The backup definition: libvirt's <domainbackup> in and out, typed options, and resolution against a VM.
export type * from './types.js';
export { parseBackupXml } from './parse-backup-xml.js';
export { formatBackupXml, type FormatBackupOptions } from './format-backup-xml.js';
export { backupDefinitionFromOptions, definitionFromResolved, type BackupOptions, type BackupRequest } from './from-options.js';
export { resolveBackupDefinition } from './resolve.js';
