// Decoding of libvirt's virTypedParameter arrays (copied out of libvirt's memory by the worker) into plain records: pure.
import { endianness } from 'node:os';
import {
  JOB_TYPES, VIR_TYPED_PARAM_BOOLEAN, VIR_TYPED_PARAM_DOUBLE, VIR_TYPED_PARAM_FIELD_LENGTH, VIR_TYPED_PARAM_INT,
  VIR_TYPED_PARAM_LLONG, VIR_TYPED_PARAM_STRING, VIR_TYPED_PARAM_UINT, VIR_TYPED_PARAM_ULLONG,
} from './constants.js';

/**
 * `struct _virTypedParameter` on LP64 (libvirt-common.h): `char field[80]; int type;` then the 8-byte union
 * (int, unsigned int, long long, unsigned long long, double, char, char *) aligned to 8. The worker checks these
 * against koffi's own layout of the struct before it trusts them.
 */
export const TYPED_PARAM_LAYOUT = Object.freeze({ size: 96, fieldLength: VIR_TYPED_PARAM_FIELD_LENGTH, typeOffset: 80, valueOffset: 88 });

export type TypedParamValue = number | string | boolean;

/** What the worker sends for a virTypedParameter array: its bytes, and the strings it read behind the STRING params. */
export interface RawTypedParams {
  count: number;
  /** `count * TYPED_PARAM_LAYOUT.size` bytes, as in libvirt's memory (native byte order). */
  bytes: Uint8Array;
  /** Index of a STRING parameter → the string its `char *` points to. */
  strings: ReadonlyArray<readonly [number, string]>;
}

export type JobType = (typeof JOB_TYPES)[number];

/** virDomainGetJobStats, decoded: the job type and every typed parameter by its field name (`time_elapsed`, …). */
export interface JobStats {
  type: JobType;
  /** The `operation` field (VIR_DOMAIN_JOB_OPERATION_*, 9 = backup) when libvirt reported one. */
  operation?: number;
  fields: Record<string, number | string | boolean>;
}

/**
 * Decodes a typed parameter array by each parameter's type: INT, UINT, LLONG, ULLONG, DOUBLE → number (64-bit values
 * beyond 2^53 lose precision), BOOLEAN → boolean, STRING → the string from `raw.strings`. Parameters of an unknown
 * type are skipped; a later parameter of the same name wins.
 * @throws Error when the byte length does not match the count.
 */
export function decodeTypedParams(raw: RawTypedParams, littleEndian = endianness() === 'LE'): Record<string, TypedParamValue> {
  const { size, fieldLength, typeOffset, valueOffset } = TYPED_PARAM_LAYOUT;
  if (raw.bytes.byteLength !== raw.count * size) {
    throw new Error(`typed parameters: ${raw.bytes.byteLength} bytes for ${raw.count} parameters of ${size} bytes`);
  }
  const view = new DataView(raw.bytes.buffer, raw.bytes.byteOffset, raw.bytes.byteLength);
  const strings = new Map(raw.strings);
  const out: Record<string, TypedParamValue> = {};
  for (let i = 0; i < raw.count; i++) {
    const base = i * size;
    const name = fieldName(raw.bytes.subarray(base, base + fieldLength));
    const at = base + valueOffset;
    let value: TypedParamValue | undefined;
    switch (view.getInt32(base + typeOffset, littleEndian)) {
      case VIR_TYPED_PARAM_INT: value = view.getInt32(at, littleEndian); break;
      case VIR_TYPED_PARAM_UINT: value = view.getUint32(at, littleEndian); break;
      case VIR_TYPED_PARAM_LLONG: value = Number(view.getBigInt64(at, littleEndian)); break;
      case VIR_TYPED_PARAM_ULLONG: value = Number(view.getBigUint64(at, littleEndian)); break;
      case VIR_TYPED_PARAM_DOUBLE: value = view.getFloat64(at, littleEndian); break;
      case VIR_TYPED_PARAM_BOOLEAN: value = view.getInt8(at) !== 0; break;
      case VIR_TYPED_PARAM_STRING: value = strings.get(i) ?? ''; break;
      default: value = undefined;
    }
    if (value !== undefined) out[name] = value;
  }
  return out;
}

/** The field name: the bytes up to the first NUL (all 80 when there is none), as UTF-8. */
function fieldName(bytes: Uint8Array): string {
  const end = bytes.indexOf(0);
  return Buffer.from(bytes.buffer, bytes.byteOffset, end < 0 ? bytes.byteLength : end).toString('utf8');
}

/**
 * JobStats from virDomainGetJobStats' `type` and decoded parameters.
 * @throws Error for a job type outside virDomainJobType.
 */
export function jobStatsFrom(type: number, fields: Record<string, TypedParamValue>): JobStats {
  const name = JOB_TYPES[type];
  if (name === undefined) throw new Error(`virDomainGetJobStats returned the unknown job type ${type}`);
  const stats: JobStats = { type: name, fields };
  if (typeof fields.operation === 'number') stats.operation = fields.operation;
  return stats;
}
