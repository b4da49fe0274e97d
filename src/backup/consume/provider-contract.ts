// The external backup provider contract, version 1 (docs/providers.md), after Proxmox VE's
// PVE::BackupProvider::Plugin::Base: one verb per call (argv[1]), one JSON document on stdin, one JSON answer on
// stdout. The schemas below are the contract: fleece checks every request it sends and every answer it gets against
// them, and docs/provider-contract.schema.json is generated from them (a unit test keeps the two equal).
//
//   backup:  job-init → backup-init → get-mechanism → query-incremental → (point in time) → backup-vm
//            → backup-cleanup {success} → job-cleanup          (both cleanups run after a failure too)
//   restore: restore-get-mechanism → restore-vm-init → restore-volume-init → restore-volume-cleanup → restore-vm-cleanup
import { Type, type Static, type TSchema } from 'typebox';
import { Value } from 'typebox/value';
import { FleeceError } from '../../util/errors.js';

export const PROVIDER_CONTRACT_VERSION = 1;

/** A volume is named as the guest names the disk (`vda`, `sdb`): the key under `volumes`. */
export const VOLUME_NAME = '^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$';
/** What a provider may call a backup (Proxmox's archive name, plus `+`): restore names it with `--backup`. */
export const BACKUP_ID = '^[A-Za-z0-9][A-Za-z0-9_.:+/-]{0,199}$';

const Size = Type.Integer({ minimum: 0, description: 'bytes' });
const BackupId = Type.String({ pattern: BACKUP_ID, description: "the provider's name for the backup (backup-init chooses it)" });
const VmName = Type.String({ minLength: 1, description: "the VM's name in fleece (a libvirt domain's name)" });
const VmType = Type.Enum(['qemu'], { description: 'only QEMU VMs in version 1' });
const StartTime = Type.Integer({ minimum: 0, description: 'unix time in seconds' });
const volumes = <T extends TSchema>(value: T, description: string) =>
  Type.Record(Type.String({ pattern: VOLUME_NAME }), value, { additionalProperties: false, description });

const request = <T extends Record<string, TSchema>>(fields: T, description: string) =>
  Type.Object({
    contract: Type.Literal(1, { description: 'the contract version fleece speaks' }),
    provider: Type.String({ minLength: 1, description: 'the name the provider was registered under' }),
    config: Type.Optional(Type.String({ minLength: 1, description: 'the --config file given at `fleece provider add`' })),
    ...fields,
  }, { additionalProperties: false, description });

const reply = <T extends Record<string, TSchema>>(fields: T, description: string) =>
  Type.Object({
    contract: Type.Optional(Type.Literal(1, { description: 'when given, the version the provider speaks: it must be 1' })),
    warnings: Type.Optional(Type.Array(Type.String(), { description: 'shown to the user as warnings' })),
    ...fields,
  }, { additionalProperties: false, description });

const GuestConfig = Type.Union([
  Type.Object({
    format: Type.Enum(['libvirt-domain-xml'], { description: 'what `text` is' }),
    text: Type.String(),
  }, { additionalProperties: false }),
  Type.Null(),
], { description: "the guest's configuration at backup time (the libvirt domain XML), null for a bare QEMU" });

export const BitmapMode = Type.Enum(['none', 'new', 'reuse'], {
  description: 'none: no bitmap (a full read); new: a new bitmap starts here (a full read); reuse: only what changed since this provider\'s last successful backup',
});

const BackupVolume = Type.Object({
  size: Size,
  'bitmap-mode': BitmapMode,
  'bitmap-reason': Type.Optional(Type.String({ description: 'why the mode is none or new when the provider asked for use' })),
  'incremental-from': Type.Optional(Type.String({ description: 'reuse: the checkpoint the changes are counted from' })),
  'nbd-uri': Type.Optional(Type.String({ description: 'nbd: the point-in-time export (nbd+unix://…, a socket in a private 0700 directory)' })),
  'nbd-socket': Type.Optional(Type.String({ description: 'nbd: the unix socket of the export' })),
  'nbd-export': Type.Optional(Type.String({ description: 'nbd: the export name (the volume name)' })),
  'bitmap-name': Type.Optional(Type.String({ description: 'nbd, reuse: the bitmap exported with the volume' })),
  'meta-context': Type.Optional(Type.String({ description: 'nbd, reuse: the NBD meta context of the dirty bitmap (qemu:dirty-bitmap:NAME)' })),
  file: Type.Optional(Type.String({ description: 'file-handle: the path of a read-only virtual file showing the volume at the point in time' })),
  'dirty-regions': Type.Optional(Type.String({ description: 'file-handle: a file of `offset length` lines, ascending: the regions to read (the whole volume without a bitmap)' })),
  'dirty-bytes': Type.Optional(Type.Integer({ minimum: 0, description: 'the sum of the regions' })),
}, { additionalProperties: false });

const Stats = Type.Object({
  'bytes-read': Type.Optional(Size),
  'bytes-written': Type.Optional(Size),
  'archive-size': Type.Optional(Size),
}, { additionalProperties: false, description: 'what the provider wants fleece to report' });

/** Every verb: what fleece sends, what the provider answers. */
export const CONTRACT = {
  'job-init': {
    request: request({ 'start-time': StartTime }, 'a backup job starts (check the server, open a connection)'),
    reply: reply({}, 'nothing'),
  },
  'job-cleanup': {
    request: request({ success: Type.Boolean() }, 'the job ended, well or not: always called once job-init was'),
    reply: reply({}, 'nothing'),
  },
  'backup-init': {
    request: request({ vm: VmName, 'vm-type': VmType, 'start-time': StartTime }, 'one VM backup starts: name it'),
    reply: reply({ 'backup-id': BackupId }, 'the backup id'),
  },
  'backup-cleanup': {
    request: request({
      vm: VmName,
      'backup-id': BackupId,
      success: Type.Boolean(),
      error: Type.Optional(Type.String({ description: 'why it failed' })),
    }, 'the VM backup ended: always called once backup-init was; success false: throw away what was written'),
    reply: reply({ stats: Type.Optional(Stats) }, 'optional statistics'),
  },
  'get-mechanism': {
    request: request({ vm: VmName, 'vm-type': VmType, 'backup-id': BackupId }, 'how the provider wants the data'),
    reply: reply({ mechanism: Type.Enum(['nbd', 'file-handle']) }, 'nbd: an NBD export per volume; file-handle: a virtual file per volume'),
  },
  'query-incremental': {
    request: request({
      vm: VmName,
      'backup-id': BackupId,
      volumes: volumes(Type.Object({ size: Size }, { additionalProperties: false }), 'the volumes to back up'),
    }, 'which volumes the provider wants incremental'),
    reply: reply({
      volumes: volumes(Type.Enum(['new', 'use']), 'new: start a new bitmap (full); use: reuse the last one (incremental). A volume left out gets no bitmap'),
    }, 'per volume new or use'),
  },
  'backup-vm': {
    request: request({
      vm: VmName,
      'backup-id': BackupId,
      mechanism: Type.Enum(['nbd', 'file-handle']),
      'guest-config': GuestConfig,
      volumes: volumes(BackupVolume, 'the volumes at the point in time'),
      info: Type.Object({
        'start-time': StartTime,
        'control-plane': Type.Enum(['qmp', 'libvirt', 'offline'], { description: 'who took the point in time' }),
        checkpoint: Type.Union([Type.String(), Type.Null()], { description: 'the checkpoint this backup ends at' }),
        'bandwidth-limit': Type.Optional(Type.Integer({ minimum: 1, description: 'bytes per second the provider should keep to' })),
      }, { additionalProperties: false }),
    }, 'read the volumes and store them; answer when done'),
    reply: reply({ stats: Type.Optional(Stats) }, 'optional statistics'),
  },
  'restore-get-mechanism': {
    request: request({ 'backup-id': BackupId }, 'how the provider gives a backup back'),
    reply: reply({
      mechanism: Type.Enum(['qemu-img', 'nbd-target']),
      'vm-type': Type.Optional(VmType),
    }, 'qemu-img: the provider names something qemu-img convert reads; nbd-target: fleece gives a writable NBD export of the new image'),
  },
  'restore-vm-init': {
    request: request({ 'backup-id': BackupId }, 'a restore of the backup starts'),
    reply: reply({
      volumes: volumes(Type.Object({ size: Size }, { additionalProperties: false }), 'the volumes in the backup'),
    }, 'the volumes and their sizes'),
  },
  'restore-volume-init': {
    request: request({
      'backup-id': BackupId,
      volume: Type.String({ pattern: VOLUME_NAME }),
      mechanism: Type.Enum(['qemu-img', 'nbd-target']),
      info: Type.Object({
        size: Size,
        'nbd-uri': Type.Optional(Type.String({ description: 'nbd-target: write the volume here, then answer' })),
        'nbd-socket': Type.Optional(Type.String()),
        'nbd-export': Type.Optional(Type.String()),
      }, { additionalProperties: false }),
    }, 'make one volume available'),
    reply: reply({
      'qemu-img-path': Type.Optional(Type.String({ minLength: 1, description: 'qemu-img: a raw image path or NBD URI (read as raw)' })),
    }, 'qemu-img: the path; nbd-target: nothing (the volume is written)'),
  },
  'restore-volume-cleanup': {
    request: request({ 'backup-id': BackupId, volume: Type.String({ pattern: VOLUME_NAME }), success: Type.Boolean() }, 'the volume is restored (or not): always called once restore-volume-init was'),
    reply: reply({}, 'nothing'),
  },
  'restore-vm-cleanup': {
    request: request({ 'backup-id': BackupId, success: Type.Boolean() }, 'the restore ended: always called once restore-vm-init was'),
    reply: reply({}, 'nothing'),
  },
} as const;

export type ProviderVerb = keyof typeof CONTRACT;
export const PROVIDER_VERBS = Object.keys(CONTRACT) as ProviderVerb[];

/** The document fleece sends for `verb` (without the common fields, which the client adds). */
export type RequestOf<V extends ProviderVerb> = Omit<Static<(typeof CONTRACT)[V]['request']>, 'contract' | 'provider' | 'config'>;
export type ReplyOf<V extends ProviderVerb> = Static<(typeof CONTRACT)[V]['reply']>;
export type ProviderBackupVolume = Static<typeof BackupVolume>;
export type BitmapModeValue = Static<typeof BitmapMode>;

export function isProviderVerb(verb: string): verb is ProviderVerb {
  return Object.prototype.hasOwnProperty.call(CONTRACT, verb);
}

export type ProviderFailure =
  | 'spawn' | 'exit' | 'signal' | 'timeout' | 'aborted' | 'bad-json' | 'contract' | 'unknown-verb' | 'too-much-output'
  /** A tool driver's tool ran but its output did not show success (Cinder's TSM check). */
  | 'check';

/** A provider failed a call, or answered against the contract: names the provider, the verb and what was wrong. */
export class ProviderError extends FleeceError {
  constructor(
    readonly provider: string,
    readonly verb: string,
    readonly reason: ProviderFailure,
    detail: string,
    options: { cause?: unknown; hint?: string } = {},
  ) {
    super(reason === 'aborted' ? 'ABORTED' : 'STORE', `backup provider '${provider}' ${detail} (verb ${verb})`, options);
  }
}

/** `volumes.vda.bitmap-mode` from a JSON pointer `/volumes/vda/bitmap-mode`. */
function fieldName(pointer: string, extra?: string): string {
  const parts = pointer.split('/').filter(Boolean).map((p) => p.replace(/~1/g, '/').replace(/~0/g, '~'));
  if (extra !== undefined) parts.push(extra);
  return parts.length === 0 ? 'the document' : `field '${parts.join('.')}'`;
}

function shown(value: unknown): string {
  const text = JSON.stringify(value);
  return text === undefined ? 'undefined' : text.length > 60 ? `${text.slice(0, 57)}...` : text;
}

function valueAt(document: unknown, pointer: string): unknown {
  let at: unknown = document;
  for (const part of pointer.split('/').filter(Boolean)) {
    if (typeof at !== 'object' || at === null) return undefined;
    at = (at as Record<string, unknown>)[part.replace(/~1/g, '/').replace(/~0/g, '~')];
  }
  return at;
}

/** The first thing wrong with `document` against `schema`, in words; undefined when it conforms. */
export function contractViolation(schema: TSchema, document: unknown): string | undefined {
  if (Value.Check(schema, document)) return undefined;
  const errors = [...Value.Errors(schema, document)].filter((e) => e.keyword !== 'boolean');
  // The most telling first: unknown and missing fields, then wrong values; unions (anyOf) say least.
  const rank = (k: string) => ['additionalProperties', 'required', 'enum', 'const', 'type', 'pattern', 'minimum', 'minLength', 'minProperties'].indexOf(k);
  errors.sort((a, b) => (rank(a.keyword) === -1 ? 99 : rank(a.keyword)) - (rank(b.keyword) === -1 ? 99 : rank(b.keyword)));
  const e = errors[0];
  if (!e) return 'does not match the contract';
  const params = e.params as Record<string, unknown>;
  const value = valueAt(document, e.instancePath);
  switch (e.keyword) {
    case 'additionalProperties':
      return `has unknown ${fieldName(e.instancePath, String((params.additionalProperties as string[])[0]))}`;
    case 'required':
      return `lacks ${fieldName(e.instancePath, String((params.requiredProperties as string[])[0]))}`;
    case 'enum':
      return `has ${fieldName(e.instancePath)} ${shown(value)}, not one of ${(params.allowedValues as unknown[]).map(String).join(', ')}`;
    case 'const':
      return `has ${fieldName(e.instancePath)} ${shown(value)}, not ${shown(params.allowedValue)}`;
    case 'type':
      return `has ${fieldName(e.instancePath)} ${shown(value)}, not ${Array.isArray(params.type) ? params.type.join(' or ') : String(params.type)}`;
    case 'pattern':
      return `has ${fieldName(e.instancePath)} ${shown(value)}, which does not match ${String(params.pattern)}`;
    default:
      return `has ${fieldName(e.instancePath)} ${shown(value)}: ${e.message}`;
  }
}

/** The common fields of every request. */
export interface RequestEnvelope {
  provider: string;
  config?: string;
}

/**
 * The whole request document for `verb`, checked against the contract (fleece's own side of the check).
 * @throws ProviderError('contract') naming the field fleece got wrong (a bug in fleece, never the provider's).
 */
export function buildRequest<V extends ProviderVerb>(verb: V, envelope: RequestEnvelope, params: RequestOf<V>): Record<string, unknown> {
  const document = { contract: PROVIDER_CONTRACT_VERSION, provider: envelope.provider, ...(envelope.config ? { config: envelope.config } : {}), ...params };
  const wrong = contractViolation(CONTRACT[verb].request, document);
  if (wrong) throw new ProviderError(envelope.provider, verb, 'contract', `was not called: fleece's own request ${wrong}`);
  return document;
}

/**
 * Parses and checks the provider's answer to `verb`.
 * @throws ProviderError('bad-json') when stdout is not one JSON object, ProviderError('contract') naming the field.
 */
export function parseReply<V extends ProviderVerb>(provider: string, verb: V, stdout: string): ReplyOf<V> {
  let document: unknown;
  const text = stdout.trim();
  try {
    document = JSON.parse(text === '' ? '""' : text);
  } catch (error) {
    throw new ProviderError(provider, verb, 'bad-json', `answered with bad JSON (${(error as Error).message}); its stdout began ${shown(text.slice(0, 80))}`, {
      cause: error,
      hint: 'a provider prints exactly one JSON object on stdout, and its messages on stderr (docs/providers.md)',
    });
  }
  if (typeof document !== 'object' || document === null || Array.isArray(document)) {
    throw new ProviderError(provider, verb, 'bad-json', `answered ${shown(document)}, not a JSON object`, {
      hint: 'answer {} when there is nothing to say (docs/providers.md)',
    });
  }
  const wrong = contractViolation(CONTRACT[verb].reply, document);
  if (wrong) {
    throw new ProviderError(provider, verb, 'contract', `answered against contract ${PROVIDER_CONTRACT_VERSION}: its answer ${wrong}`, {
      hint: 'see docs/providers.md and docs/provider-contract.schema.json',
    });
  }
  return document as ReplyOf<V>;
}

/** The machine-readable contract: docs/provider-contract.schema.json is exactly this (JSON Schema 2020-12). */
export function contractJsonSchema(extra: Record<string, TSchema> = {}): Record<string, unknown> {
  const defs: Record<string, unknown> = {};
  for (const verb of PROVIDER_VERBS) {
    defs[`${verb}.request`] = CONTRACT[verb].request;
    defs[`${verb}.reply`] = CONTRACT[verb].reply;
  }
  for (const [name, schema] of Object.entries(extra)) defs[name] = schema;
  return JSON.parse(JSON.stringify({
    $schema: 'https://json-schema.org/draft/2020-12/schema',
    $id: 'https://fleece.invalid/provider-contract/1',
    title: 'fleece external backup provider contract',
    description: 'One verb per call (argv[1]); the request on stdin is $defs["<verb>.request"], the answer on stdout $defs["<verb>.reply"]. See docs/providers.md.',
    'x-contract-version': PROVIDER_CONTRACT_VERSION,
    'x-verbs': PROVIDER_VERBS,
    $defs: defs,
  })) as Record<string, unknown>;
}
