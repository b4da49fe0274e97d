// resolveBackupDefinition: defaults, exclusions, per-disk overrides, no mutation, and each rejection path.
import {
  backupDefinitionFromOptions,
  definitionFromResolved,
  formatBackupXml,
  parseBackupXml,
  resolveBackupDefinition,
  type BackupDefinition,
  type IncludedBackupDisk,
  type ResolveBackupContext,
} from '../../../../src/backup/definition/index.js';
import { InvalidInputError } from '../../../../src/util/errors.js';

const existing = new Set(['/dev/sdx', '/backups/old.qcow2']);
const context: ResolveBackupContext = {
  disks: [
    { target: 'vda', format: 'qcow2', sizeBytes: 1 << 30 },
    { target: 'vdb', format: 'qcow2', sizeBytes: 2 << 30 },
    { target: 'vdc', format: 'raw', sizeBytes: 1 << 20 },
  ],
  checkpoints: ['cp0', 'cp1'],
  exists: (path) => existing.has(path),
  reuseExternal: false,
  defaultTargetDir: '/backups',
  defaultScratchDir: '/scratch',
  defaultSocket: '/run/fleece/vm.sock',
  fileSuffix: '20240101T000000',
};

function deepFreeze<T>(value: T): T {
  if (value && typeof value === 'object') {
    for (const inner of Object.values(value)) deepFreeze(inner);
    Object.freeze(value);
  }
  return value;
}

function included(resolved: ReturnType<typeof resolveBackupDefinition>, name: string): IncludedBackupDisk {
  const disk = resolved.disks.find((d) => d.name === name);
  if (!disk?.included) throw new Error(`${name} not included`);
  return disk;
}

function refusal(def: BackupDefinition, ctx: Partial<ResolveBackupContext> = {}): string {
  try {
    resolveBackupDefinition(def, { ...context, ...ctx });
  } catch (error) {
    expect(error).toBeInstanceOf(InvalidInputError);
    return (error as Error).message;
  }
  throw new Error('resolution did not fail');
}

describe('resolveBackupDefinition', () => {
  it('backs up every disk with defaults when <disks> is absent, without touching the definition', () => {
    const def = deepFreeze(parseBackupXml(`<domainbackup mode='push'/>`));
    const before = structuredClone(def);
    const full = resolveBackupDefinition(def, context);
    expect(def).toEqual(before);
    expect(full.disks.map((d) => [d.name, d.included])).toEqual([['vda', true], ['vdb', true], ['vdc', true]]);
    expect(included(full, 'vda').storage).toEqual({ type: 'file', path: '/backups/vda.20240101T000000.qcow2', format: 'qcow2', existing: false });
    expect(included(full, 'vda').incrementalFrom).toBeUndefined();
    expect(included(full, 'vdc').sourceFormat).toBe('raw');
    expect(included(full, 'vdb').sizeBytes).toBe(2 << 30);
    expect(full.server).toBeUndefined();
  });

  it('excludes unlisted disks and backup=no disks, and keeps VM order', () => {
    const def = parseBackupXml(`<domainbackup mode='push'><disks>
      <disk name='vdc' type='file'><target file='/t/vdc.img'/><driver type='raw'/></disk>
      <disk name='vda' backup='no'/></disks></domainbackup>`);
    const resolved = resolveBackupDefinition(def, context);
    expect(resolved.disks).toEqual([
      { name: 'vda', included: false, reason: 'backup-no' },
      { name: 'vdb', included: false, reason: 'not-listed' },
      { name: 'vdc', included: true, storage: { type: 'file', path: '/t/vdc.img', format: 'raw', existing: false }, sizeBytes: 1 << 20, sourceFormat: 'raw' },
    ]);
  });

  it('applies the global <incremental> and per-disk overrides (incremental=, backupmode=full)', () => {
    const def = deepFreeze(parseBackupXml(`<domainbackup mode='pull'><incremental>cp1</incremental><disks>
      <disk name='vda'/>
      <disk name='vdb' incremental='cp0' exportname='second'/>
      <disk name='vdc' backupmode='full'/></disks></domainbackup>`));
    const resolved = resolveBackupDefinition(def, context);
    expect(resolved.incremental).toBe('cp1');
    expect(included(resolved, 'vda')).toMatchObject({ incrementalFrom: 'cp1', exportName: 'vda', exportBitmap: 'backup-vda' });
    expect(included(resolved, 'vdb')).toMatchObject({ incrementalFrom: 'cp0', exportName: 'second', exportBitmap: 'backup-vdb' });
    expect(included(resolved, 'vdc').incrementalFrom).toBeUndefined();
    expect(included(resolved, 'vdc').exportBitmap).toBeUndefined();
    expect(included(resolved, 'vda').storage.path).toBe('/scratch/vda.20240101T000000.scratch.qcow2');
    expect(resolved.server).toEqual({ transport: 'unix', socket: '/run/fleece/vm.sock' });
  });

  it('fills a tcp port from the context and keeps tls', () => {
    const def = parseBackupXml(`<domainbackup mode='pull'><server transport='tcp' name='::1' tls='yes'/><disks><disk name='vda'/></disks></domainbackup>`);
    expect(resolveBackupDefinition(def, { ...context, defaultTcpPort: 10809 }).server).toEqual({ transport: 'tcp', name: '::1', port: 10809, tls: true });
    expect(refusal(def)).toContain("<server transport='tcp' name='::1'>: port= is missing");
  });

  it('gives tcp TLS by default when credentials are configured, unless tls=no says otherwise', () => {
    const bare = parseBackupXml(`<domainbackup mode='pull'><server transport='tcp' name='127.0.0.1' port='10809'/><disks><disk name='vda'/></disks></domainbackup>`);
    expect(resolveBackupDefinition(bare, context).server).toMatchObject({ tls: false });
    expect(resolveBackupDefinition(bare, { ...context, tlsConfigured: true }).server).toMatchObject({ tls: true });
    const no = parseBackupXml(`<domainbackup mode='pull'><server transport='tcp' name='127.0.0.1' port='10809' tls='no'/><disks><disk name='vda'/></disks></domainbackup>`);
    expect(resolveBackupDefinition(no, { ...context, tlsConfigured: true }).server).toMatchObject({ tls: false });
  });

  it('accepts an existing file only with reuseExternal, and requires block devices to exist', () => {
    const def = parseBackupXml(`<domainbackup><disks><disk name='vda'><target file='/backups/old.qcow2'/></disk></disks></domainbackup>`);
    expect(refusal(def)).toContain("<disk name='vda'> <target file='/backups/old.qcow2'>: the file already exists");
    expect(included(resolveBackupDefinition(def, { ...context, reuseExternal: true }), 'vda').storage.existing).toBe(true);
    const block = parseBackupXml(`<domainbackup><disks><disk name='vda' type='block'><target dev='/dev/sdx'/></disk></disks></domainbackup>`);
    expect(included(resolveBackupDefinition(block, context), 'vda').storage).toEqual({ type: 'block', path: '/dev/sdx', format: 'qcow2', existing: true });
    const missing = parseBackupXml(`<domainbackup><disks><disk name='vda' type='block'><target dev='/dev/nope'/></disk></disks></domainbackup>`);
    expect(refusal(missing)).toContain("<target dev='/dev/nope'>: the block device does not exist");
  });

  it.each([
    ['unknown disk', { mode: 'push', disks: [{ name: 'vdz' }] }, {}, "<disk name='vdz'>: no such disk in the VM (disks: vda, vdb, vdc)"],
    ['duplicate disk', { mode: 'push', disks: [{ name: 'vda' }, { name: 'vda' }] }, {}, "<disk name='vda'>: the disk is listed twice"],
    ['unknown global checkpoint', { mode: 'push', incremental: 'cpX', disks: [] }, {}, '<incremental>cpX</incremental>: no such checkpoint (checkpoints: cp0, cp1)'],
    ['unknown disk checkpoint', { mode: 'push', disks: [{ name: 'vda', incremental: 'cpY' }] }, {}, "<disk name='vda' incremental='cpY'>: no such checkpoint"],
    ['incremental on a raw disk', { mode: 'push', incremental: 'cp0', disks: [] }, {}, 'vdc is raw'],
    ['backupmode=incremental without a checkpoint', { mode: 'push', disks: [{ name: 'vda', backupMode: 'incremental' }] }, {}, 'no checkpoint to be incremental from'],
    ['full with a checkpoint', { mode: 'push', disks: [{ name: 'vda', backupMode: 'full', incremental: 'cp0' }] }, {}, "incremental='cp0' contradicts backupmode='full'"],
    ['push without target or default', { mode: 'push', disks: [{ name: 'vda' }] }, { defaultTargetDir: undefined }, 'push mode needs a <target>'],
    ['pull without scratch or default', { mode: 'pull', disks: [{ name: 'vda' }] }, { defaultScratchDir: undefined }, 'pull mode needs a <scratch>'],
    ['pull without server or default', { mode: 'pull', disks: [{ name: 'vda' }] }, { defaultSocket: undefined }, '<server> is missing'],
    ['server in push mode', { mode: 'push', server: { transport: 'unix', socket: '/s' }, disks: [{ name: 'vda' }] }, {}, '<server>: only used in pull mode'],
    ['export name in push mode', { mode: 'push', disks: [{ name: 'vda', exportName: 'x' }] }, {}, 'only used in pull mode'],
    ['export bitmap on a full disk', { mode: 'pull', disks: [{ name: 'vda', exportBitmap: 'b' }] }, {}, 'the disk is backed up in full'],
    ['two disks, one export name', { mode: 'pull', disks: [{ name: 'vda', exportName: 'x' }, { name: 'vdb', exportName: 'x' }] }, {}, "disk 'vda' already uses that export name"],
    ['two disks, one path', { mode: 'push', disks: [{ name: 'vda', type: 'file', path: '/p' }, { name: 'vdb', type: 'file', path: '/p' }] }, {}, "disk 'vda' already uses /p"],
    ['nothing to back up', { mode: 'push', disks: [{ name: 'vda', backup: false }] }, {}, 'no disk is backed up'],
    ['unknown mode', { mode: 'snapshot', disks: [] }, {}, "mode='snapshot'"],
    ['relative socket', { mode: 'pull', server: { transport: 'unix', socket: 'rel.sock' }, disks: [{ name: 'vda' }] }, {}, 'not an absolute path'],
    ['bad suffix', { mode: 'push', disks: [] }, { fileSuffix: '../x' }, "suffix '../x' is not allowed"],
    ['existing default target', { mode: 'push', disks: [{ name: 'vda' }] }, { fileSuffix: 'x', exists: (p: string) => p === '/backups/vda.x.qcow2' }, 'the file already exists'],
  ] as [string, BackupDefinition, Partial<ResolveBackupContext>, string][])('refuses %s', (_label, def, ctx, message) => {
    expect(refusal(def, ctx)).toContain(message);
  });
});

describe('backupDefinitionFromOptions', () => {
  it('builds the same definition as the equivalent XML', () => {
    const { definition, defaults } = backupDefinitionFromOptions({ mode: 'pull', incremental: 'cp1', disks: ['vda'], socket: '/run/s.sock', scratchDir: '/scratch' });
    expect(definition).toEqual({ mode: 'pull', incremental: 'cp1', server: { transport: 'unix', socket: '/run/s.sock' }, disks: [{ name: 'vda', backup: true }] });
    expect(defaults).toEqual({ defaultScratchDir: '/scratch' });
    expect(parseBackupXml(formatBackupXml(definition))).toEqual(definition);
  });

  it('takes per-disk push targets and a format', () => {
    const { definition } = backupDefinitionFromOptions({ mode: 'push', disks: ['vda'], targets: { vdb: '/t/vdb.img' }, format: 'raw' });
    expect(definition.disks).toEqual([
      { name: 'vda', backup: true, format: 'raw' },
      { name: 'vdb', backup: true, type: 'file', path: '/t/vdb.img', format: 'raw' },
    ]);
  });

  it.each([
    [{ mode: 'push', socket: '/s' }, 'option socket is not used in push mode'],
    [{ mode: 'pull', targetDir: '/t' }, 'option targetDir is not used in pull mode'],
    [{ mode: 'pull', socket: '/s', tcp: { name: 'h' } }, 'both socket and tcp'],
    [{ mode: 'push', disks: ['vda', 'vda'] }, "disk 'vda' is given twice"],
    [{ mode: 'push', incremental: 'a/b' }, "contains '/'"],
    [{ mode: 'push', targetDir: 'rel' }, "targetDir 'rel' is not an absolute path"],
    [{ mode: 'copy' }, "mode 'copy' is unknown"],
  ] as [Parameters<typeof backupDefinitionFromOptions>[0], string][])('refuses %j', (options, message) => {
    expect(() => backupDefinitionFromOptions(options)).toThrow(message);
  });
});

describe('definitionFromResolved (backup-dumpxml)', () => {
  it('writes every default explicitly, and resolves back to the same plan input', () => {
    const def = parseBackupXml(`<domainbackup mode='pull'><incremental>cp1</incremental><disks><disk name='vda'/><disk name='vdc' backupmode='full'/></disks></domainbackup>`);
    const resolved = resolveBackupDefinition(def, context);
    const explicit = definitionFromResolved(resolved);
    const xml = formatBackupXml(explicit, { indexes: { vda: 3 } });
    expect(xml).toBe(
      [
        "<domainbackup mode='pull'>",
        '  <incremental>cp1</incremental>',
        "  <server transport='unix' socket='/run/fleece/vm.sock'/>",
        '  <disks>',
        "    <disk name='vda' backup='yes' backupmode='incremental' incremental='cp1' type='file' exportname='vda' exportbitmap='backup-vda'>",
        "      <driver type='qcow2'/>",
        "      <scratch file='/scratch/vda.20240101T000000.scratch.qcow2' index='3'/>",
        '    </disk>',
        "    <disk name='vdb' backup='no'/>",
        "    <disk name='vdc' backup='yes' backupmode='full' type='file' exportname='vdc'>",
        "      <driver type='qcow2'/>",
        "      <scratch file='/scratch/vdc.20240101T000000.scratch.qcow2'/>",
        '    </disk>',
        '  </disks>',
        '</domainbackup>',
        '',
      ].join('\n'),
    );
    const reparsed = parseBackupXml(xml);
    expect(reparsed.disks[0].index).toBe(3);
    // The explicit form says backup='no' where the original left vdb out: otherwise identical.
    const again = resolveBackupDefinition(reparsed, context);
    const withoutReason = (r: typeof resolved): unknown => r.disks.map((d) => (d.included ? d : { name: d.name, included: false }));
    expect(withoutReason(again)).toEqual(withoutReason(resolved));
    expect({ ...again, disks: [] }).toEqual({ ...resolved, disks: [] });
  });
});
