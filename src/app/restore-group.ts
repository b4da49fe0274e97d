// VM-level restore: every disk backup of one group into `<outDir>/<disk>.<format>`, then, if asked, a new libvirt
// domain defined from the backup's domain XML on the restored images.
//
// Phases, as a single restore's checks but for the whole group and before anything is written: find the group,
// plan the outputs (refusing existing ones without `overwrite`), and with `define`: read and rewrite the domain XML
// (pure) and refuse a name that libvirt already has. Then restore the disks one after another; a failure removes
// the images this run made (never hiding the original error). Defining comes last; when it fails the images stay
// and the rewritten XML is written beside them for `virsh define`.
import { access, mkdir, rm, rmdir, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import type { BackupRecord, Repository } from '../repository/index.js';
import type { RestoreSummary } from '../restore/index.js';
import { ConflictError, FleeceError, IntegrityError, InvalidInputError, describeError, isFleeceError, throwIfAborted } from '../util/errors.js';
import { getLogger } from '../util/logger.js';
import { findGroup, readGuestConfig, restoreToFile } from './repository-operations.js';
import { rewriteDomainForRestore, sharedWritableDisks } from './restore-domain-xml.js';

const log = getLogger('app.restore-group');

/** What defining the restored VM needs of libvirt (a port: the CLI passes libvirt, tests a fake). */
export interface DomainDefiner {
  /** Whether a domain of this name is defined, running or not. */
  domainExists(name: string): Promise<boolean>;
  /** virDomainDefineXML: defines a persistent domain; returns its name. */
  defineXml(xml: string): Promise<string>;
  /** Never throws. */
  close(): Promise<void>;
}

/** Opens a DomainDefiner on a libvirt URI. */
export type DefinerFactory = (uri: string) => Promise<DomainDefiner>;

/**
 * A DomainDefiner on libvirt at `uri`. The binding is imported only here, so a restore without `define` never loads
 * libvirt. @throws LibvirtError (libvirt unreachable, libvirt.so.0 missing).
 */
export async function openLibvirtDefiner(uri: string): Promise<DomainDefiner> {
  const { LibvirtConnection } = await import('../../native/libvirt/index.js');
  const conn = await LibvirtConnection.open(uri);
  return {
    domainExists: async (name) => (await conn.listDomains()).includes(name),
    defineXml: (xml) => conn.defineXml(xml),
    close: () => conn.close(),
  };
}

export interface GroupRestoreOptions {
  /** Default qcow2. */
  format?: 'raw' | 'qcow2';
  /** Replace existing images. */
  overwrite?: boolean;
  /** Define a new libvirt domain `name` at `connect` on the restored images (default definer: libvirt). */
  define?: { name: string; connect: string; openDefiner?: DefinerFactory };
}

export interface GroupRestoreHooks {
  signal?: AbortSignal;
  /** A disk's restore starts (`index` from 0 of `count`). */
  onDisk?: (disk: { disk: string; backupId: string; out: string; index: number; count: number }) => void;
  onProgress?: (disk: string, done: number, total: number) => void;
}

export interface RestoredGroupDisk {
  disk: string;
  backupId: string;
  out: string;
  format: 'raw' | 'qcow2';
  summary: RestoreSummary;
}

export interface GroupRestoreResult {
  groupId: string;
  vm: string | undefined;
  outDir: string;
  disks: RestoredGroupDisk[];
  /** With `define`: the domain libvirt defined and the XML it was given. */
  defined?: { name: string; connect: string; xml: string };
  /** Things the user should know (a writable disk the new domain shares with the original VM). */
  warnings: string[];
}

/** A disk name that is safe as a file name (a manifest is data: `../x` must not escape the output directory). */
const DISK_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]*$/;

interface PlannedDisk { record: BackupRecord; disk: string; out: string }

function plan(groupId: string, members: BackupRecord[], outDir: string, format: 'raw' | 'qcow2'): PlannedDisk[] {
  const seen = new Map<string, string>();
  return members.map((record) => {
    const disk = record.disk ?? record.backupId;
    if (!DISK_NAME.test(disk)) {
      throw new IntegrityError(`backup ${record.backupId} of group '${groupId}' names its disk '${disk}', which is not a usable file name`, { hint: 'restore it alone with --backup and --out' });
    }
    const other = seen.get(disk);
    if (other !== undefined) {
      throw new IntegrityError(`group '${groupId}' holds two backups of disk ${disk} (${other} and ${record.backupId})`, { hint: 'restore them one by one with --backup and --out' });
    }
    seen.set(disk, record.backupId);
    return { record, disk, out: join(outDir, `${disk}.${format}`) };
  });
}

async function exists(path: string): Promise<boolean> {
  return access(path).then(() => true, () => false);
}

/** The rewritten domain XML for `disks`, and warnings. @throws InvalidInputError (no usable domain XML in the group). */
async function plannedDomain(
  repo: string | Repository, groupId: string, disks: PlannedDisk[], name: string, format: 'raw' | 'qcow2',
): Promise<{ xml: string; warnings: string[] }> {
  let config: Awaited<ReturnType<typeof readGuestConfig>>;
  for (const d of disks) {
    config = await readGuestConfig(repo, d.record.backupId);
    if (config) break;
  }
  if (!config) {
    throw new InvalidInputError(`the backups of group '${groupId}' carry no domain XML, so no domain can be defined from them`, {
      hint: 'restore without --define and define the domain yourself (the backup was not taken through libvirt)',
    });
  }
  if (config.format !== 'libvirt-domain-xml') {
    throw new InvalidInputError(`the guest configuration of group '${groupId}' is '${config.format}', not libvirt domain XML`, { hint: 'restore without --define' });
  }
  const missing = disks.filter((d) => d.record.disk === undefined);
  if (missing.length > 0) {
    throw new InvalidInputError(`backup ${missing[0]!.record.backupId} of group '${groupId}' records no disk target, so it cannot be placed in the domain`, { hint: 'restore without --define' });
  }
  const images = Object.fromEntries(disks.map((d) => [d.disk, { path: d.out, format }]));
  const xml = rewriteDomainForRestore(config.text, { name, disks: images });
  const warnings = sharedWritableDisks(config.text, disks.map((d) => d.disk)).map((s) =>
    `disk ${s.target} was not in the backup: domain '${name}' still uses ${s.source}, the original VM's image; do not run both at once`);
  return { xml, warnings };
}

async function refuseExistingDomain(definer: DomainDefiner, name: string, connect: string): Promise<void> {
  if (await definer.domainExists(name)) {
    throw new ConflictError(`libvirt at ${connect} already has a domain '${name}'`, { hint: 'choose another name with --define, or undefine that domain first' });
  }
}

/**
 * Restores every disk backup of `groupId` into `<outDir>/<disk>.<raw|qcow2>` (the directory is created), one after
 * another, with the checks of a single restore (md5 per object, final sha256s); with `options.define`, then defines
 * a new libvirt domain from the group's domain XML (see restore-domain-xml.ts) on the restored images.
 * Nothing is restored when the group is missing, an image exists (without `overwrite`), the domain XML cannot be
 * rewritten or the domain name is taken. A failed disk removes the images this call made.
 * @throws NotFoundError (no such group, broken chain), ConflictError (an image exists, the domain exists),
 *   InvalidInputError (no domain XML, a disk the XML lacks), IntegrityError, StoreError, AbortedError, LibvirtError
 *   (libvirt unreachable); a failed define throws a FleeceError with the original's code after the disks were restored.
 */
export async function restoreGroup(
  repo: string | Repository,
  groupId: string,
  outDir: string,
  options: GroupRestoreOptions = {},
  hooks: GroupRestoreHooks = {},
): Promise<GroupRestoreResult> {
  const format = options.format ?? 'qcow2';
  const dir = resolve(outDir);
  const members = await findGroup(repo, groupId, hooks.signal ? { signal: hooks.signal } : {});
  const disks = plan(groupId, members, dir, format);

  if (!options.overwrite) {
    const taken = [];
    for (const d of disks) if (await exists(d.out)) taken.push(d.out);
    if (taken.length > 0) {
      throw new ConflictError(`the restore target${taken.length > 1 ? 's' : ''} ${taken.join(', ')} already exist${taken.length > 1 ? '' : 's'}`, {
        hint: 'choose another --out-dir, or pass --force to replace them',
      });
    }
  }

  let domain: { xml: string; warnings: string[] } | undefined;
  const define = options.define;
  const openDefiner = define?.openDefiner ?? openLibvirtDefiner;
  if (define) {
    domain = await plannedDomain(repo, groupId, disks, define.name, format);
    const definer = await openDefiner(define.connect);
    try {
      await refuseExistingDomain(definer, define.name, define.connect);
    } finally {
      await definer.close();
    }
  }

  throwIfAborted(hooks.signal, 'the restore');
  const createdDir = await mkdir(dir, { recursive: true });
  const restored: RestoredGroupDisk[] = [];
  try {
    for (const [index, d] of disks.entries()) {
      throwIfAborted(hooks.signal, 'the restore');
      hooks.onDisk?.({ disk: d.disk, backupId: d.record.backupId, out: d.out, index, count: disks.length });
      const result = await restoreToFile(
        { repo, selector: { backupId: d.record.backupId }, out: d.out, format, ...(options.overwrite ? { overwrite: true } : {}) },
        {
          ...(hooks.signal ? { signal: hooks.signal } : {}),
          ...(hooks.onProgress ? { onProgress: (done: number, total: number) => hooks.onProgress!(d.disk, done, total) } : {}),
        },
      );
      restored.push({ disk: d.disk, backupId: d.record.backupId, out: d.out, format, summary: result.summary });
    }
  } catch (error) {
    for (const r of restored) await rm(r.out, { force: true }).catch((e: unknown) => log.warn({ err: e, path: r.out }, 'a restored image could not be removed'));
    if (createdDir !== undefined) await rmdir(dir).catch(() => undefined); // only when empty
    throw error;
  }

  const result: GroupRestoreResult = { groupId, vm: members[0]!.vm, outDir: dir, disks: restored, warnings: domain?.warnings ?? [] };
  if (define && domain) {
    const xml = domain.xml;
    let name: string;
    try {
      const definer = await openDefiner(define.connect);
      try {
        await refuseExistingDomain(definer, define.name, define.connect);
        name = await definer.defineXml(xml);
      } finally {
        await definer.close();
      }
    } catch (error) {
      const file = join(dir, `${define.name}.xml`);
      const saved = await writeFile(file, xml, { flag: 'wx' }).then(() => true, () => false);
      throw new FleeceError(isFleeceError(error) ? error.code : 'INTERNAL', `the disks of group '${groupId}' were restored to ${dir}, but defining domain '${define.name}' failed: ${describeError(error)}`, {
        cause: error,
        hint: saved ? `fix the cause, then define it with \`virsh -c '${define.connect}' define ${file}\`` : 'fix the cause and run the restore again with --force',
      });
    }
    result.defined = { name, connect: define.connect, xml };
  }
  return result;
}
