// The pure parts of the libvirt binding: typed parameter decoding, job stats, flag words, LibvirtError's message.
import { endianness } from 'node:os';
import { LibvirtError, isLibvirtError } from '../../../native/libvirt-error.js';
import {
  VIR_ERR, VIR_ERR_NO_DOMAIN, VIR_TYPED_PARAM_BOOLEAN, VIR_TYPED_PARAM_DOUBLE, VIR_TYPED_PARAM_INT, VIR_TYPED_PARAM_LLONG,
  VIR_TYPED_PARAM_STRING, VIR_TYPED_PARAM_UINT, VIR_TYPED_PARAM_ULLONG,
} from '../../../native/libvirt/constants.js';
import {
  checkpointCreateFlags, checkpointDeleteFlags, checkpointListFlags, checkpointXmlFlags, domainXmlFlags, jobStatsFlags,
  undefineFlags, backupBeginFlags,
} from '../../../native/libvirt/flags.js';
import { decodeTypedParams, jobStatsFrom, TYPED_PARAM_LAYOUT, type RawTypedParams } from '../../../native/libvirt/typed-params.js';

const LE = endianness() === 'LE';

type Param = { field: string; type: number; value: number | bigint | boolean | string };

/** Lays parameters out as libvirt does on LP64: field[80], int type, 4 bytes padding, 8-byte union. */
function encode(params: Param[], littleEndian = LE): RawTypedParams {
  const { size, typeOffset, valueOffset } = TYPED_PARAM_LAYOUT;
  const bytes = new Uint8Array(params.length * size).fill(0xee);
  const view = new DataView(bytes.buffer);
  const strings: [number, string][] = [];
  params.forEach((p, i) => {
    const base = i * size;
    const name = Buffer.from(p.field, 'utf8');
    bytes.set(name.subarray(0, 80), base);
    if (name.length < 80) bytes[base + name.length] = 0;
    view.setInt32(base + typeOffset, p.type, littleEndian);
    const at = base + valueOffset;
    switch (p.type) {
      case VIR_TYPED_PARAM_INT: view.setInt32(at, Number(p.value), littleEndian); break;
      case VIR_TYPED_PARAM_UINT: view.setUint32(at, Number(p.value), littleEndian); break;
      case VIR_TYPED_PARAM_LLONG: view.setBigInt64(at, BigInt(p.value as number), littleEndian); break;
      case VIR_TYPED_PARAM_ULLONG: view.setBigUint64(at, BigInt(p.value as number), littleEndian); break;
      case VIR_TYPED_PARAM_DOUBLE: view.setFloat64(at, Number(p.value), littleEndian); break;
      case VIR_TYPED_PARAM_BOOLEAN: view.setInt8(at, p.value ? 1 : 0); break;
      case VIR_TYPED_PARAM_STRING: view.setBigUint64(at, 0x7f0000001000n, littleEndian); strings.push([i, String(p.value)]); break;
      default: break;
    }
  });
  return { count: params.length, bytes, strings };
}

describe('typed parameters', () => {
  test('the layout is the LP64 struct: 80-byte name, int type at 80, 8-byte value at 88, 96 bytes each', () => {
    expect(TYPED_PARAM_LAYOUT).toEqual({ size: 96, fieldLength: 80, typeOffset: 80, valueOffset: 88 });
  });

  test('each type decodes by its tag (as virDomainGetJobStats returns a pull backup)', () => {
    const raw = encode([
      { field: 'operation', type: VIR_TYPED_PARAM_INT, value: 9 },
      { field: 'time_elapsed', type: VIR_TYPED_PARAM_ULLONG, value: 20 },
      { field: 'disk_temp_total', type: VIR_TYPED_PARAM_ULLONG, value: 2 ** 40 + 5 },
      { field: 'signed', type: VIR_TYPED_PARAM_LLONG, value: -3 },
      { field: 'uint', type: VIR_TYPED_PARAM_UINT, value: 0xffffffff },
      { field: 'int', type: VIR_TYPED_PARAM_INT, value: -7 },
      { field: 'ratio', type: VIR_TYPED_PARAM_DOUBLE, value: 0.25 },
      { field: 'success', type: VIR_TYPED_PARAM_BOOLEAN, value: true },
      { field: 'failed', type: VIR_TYPED_PARAM_BOOLEAN, value: false },
      { field: 'errmsg', type: VIR_TYPED_PARAM_STRING, value: 'Operation canceled' },
    ]);
    expect(decodeTypedParams(raw)).toEqual({
      operation: 9, time_elapsed: 20, disk_temp_total: 2 ** 40 + 5, signed: -3, uint: 0xffffffff, int: -7, ratio: 0.25,
      success: true, failed: false, errmsg: 'Operation canceled',
    });
  });

  test('the byte order is a parameter (big-endian hosts)', () => {
    const raw = encode([{ field: 'x', type: VIR_TYPED_PARAM_ULLONG, value: 258 }], false);
    expect(decodeTypedParams(raw, false)).toEqual({ x: 258 });
  });

  test('unknown types are skipped, a later duplicate wins, an 80-byte name without NUL is kept whole', () => {
    const long = 'f'.repeat(80);
    const raw = encode([
      { field: 'a', type: 99, value: 1 },
      { field: 'b', type: VIR_TYPED_PARAM_INT, value: 1 },
      { field: 'b', type: VIR_TYPED_PARAM_INT, value: 2 },
      { field: long, type: VIR_TYPED_PARAM_INT, value: 3 },
    ]);
    expect(decodeTypedParams(raw)).toEqual({ b: 2, [long]: 3 });
  });

  test('a STRING parameter whose string the worker did not send is empty; no parameters is an empty record', () => {
    const raw = encode([{ field: 's', type: VIR_TYPED_PARAM_STRING, value: 'x' }]);
    expect(decodeTypedParams({ ...raw, strings: [] })).toEqual({ s: '' });
    expect(decodeTypedParams({ count: 0, bytes: new Uint8Array(0), strings: [] })).toEqual({});
  });

  test('a byte length that does not match the count is refused', () => {
    expect(() => decodeTypedParams({ count: 2, bytes: new Uint8Array(96), strings: [] })).toThrow(/96 bytes for 2 parameters/);
  });

  test('works on a view into a larger buffer (a transferred slice)', () => {
    const raw = encode([{ field: 'n', type: VIR_TYPED_PARAM_INT, value: 5 }]);
    const big = new Uint8Array(raw.bytes.byteLength + 16);
    big.set(raw.bytes, 16);
    expect(decodeTypedParams({ ...raw, bytes: big.subarray(16) })).toEqual({ n: 5 });
  });
});

describe('job stats', () => {
  test('type names follow virDomainJobType; operation is lifted from the fields', () => {
    expect(jobStatsFrom(0, {})).toEqual({ type: 'none', fields: {} });
    expect(jobStatsFrom(2, { operation: 9, time_elapsed: 3 })).toEqual({ type: 'unbounded', operation: 9, fields: { operation: 9, time_elapsed: 3 } });
    expect(jobStatsFrom(3, {}).type).toBe('completed');
    expect(jobStatsFrom(5, {}).type).toBe('cancelled');
    expect(() => jobStatsFrom(6, {})).toThrow(/unknown job type 6/);
  });
});

describe('flag words (libvirt 9.0 headers)', () => {
  test('domain XML, undefine, backup, job stats', () => {
    expect(domainXmlFlags()).toBe(0);
    expect(domainXmlFlags({ secure: true })).toBe(1);
    expect(domainXmlFlags({ inactive: true })).toBe(2);
    expect(domainXmlFlags({ migratable: true, inactive: true })).toBe(10);
    expect(undefineFlags({ checkpointsMetadata: true })).toBe(16);
    expect(undefineFlags({ managedSave: true, snapshotsMetadata: true, nvram: true })).toBe(7);
    expect(backupBeginFlags({ reuseExternal: true })).toBe(1);
    expect(jobStatsFlags({ completed: true })).toBe(1);
    expect(jobStatsFlags({ completed: true, keepCompleted: true })).toBe(3);
  });

  test('checkpoints', () => {
    expect(checkpointCreateFlags({ redefine: true })).toBe(1);
    expect(checkpointCreateFlags({ quiesce: true })).toBe(2);
    expect(checkpointCreateFlags({ redefine: true, redefineValidate: true })).toBe(5);
    expect(checkpointXmlFlags({ securityInfo: true })).toBe(1);
    expect(checkpointXmlFlags({ noDomain: true })).toBe(2);
    expect(checkpointXmlFlags({ size: true })).toBe(4);
    expect(checkpointListFlags({ topological: true })).toBe(2);
    expect(checkpointListFlags({ roots: true, leaves: true })).toBe(5);
    expect(checkpointDeleteFlags({ children: true })).toBe(1);
    expect(checkpointDeleteFlags({ metadataOnly: true })).toBe(2);
    expect(checkpointDeleteFlags({ childrenOnly: true })).toBe(4);
    expect(checkpointDeleteFlags({ metadataOnly: false })).toBe(0);
  });
});

describe('LibvirtError', () => {
  test('names what failed, the C function, libvirt\'s message and code name; keeps the virError fields', () => {
    const error = new LibvirtError('virDomainLookupByName', {
      code: 42, domain: 10, level: 2, message: "Domain not found: no domain with matching name 'x'", str1: 'x',
    }, { what: "domain 'x'" });
    expect(error.message).toBe("domain 'x': virDomainLookupByName failed: Domain not found: no domain with matching name 'x' (VIR_ERR_NO_DOMAIN)");
    expect(error.code).toBe('LIBVIRT');
    expect(error.name).toBe('LibvirtError');
    expect(error.libvirtCode).toBe(VIR_ERR_NO_DOMAIN);
    expect(error.libvirtDomain).toBe(10);
    expect(error.operation).toBe('virDomainLookupByName');
    expect(error.detail.str1).toBe('x');
    expect(error.local).toBeUndefined();
    expect(isLibvirtError(error)).toBe(true);
    expect(isLibvirtError(error, VIR_ERR.NO_DOMAIN_CHECKPOINT, VIR_ERR.NO_DOMAIN)).toBe(true);
    expect(isLibvirtError(error, VIR_ERR.OPERATION_INVALID)).toBe(false);
  });

  test('local failures carry their reason; unknown codes are shown by number; hints are appended', () => {
    const closed = new LibvirtError('virDomainGetXMLDesc', { code: -1, domain: -1, message: 'the connection is closed', local: 'closed' });
    expect(closed.message).toBe('virDomainGetXMLDesc failed: the connection is closed');
    expect(closed.local).toBe('closed');
    const odd = new LibvirtError('virDomainCreate', { code: 1234, domain: 0, message: 'm' }, { hint: 'do x' });
    expect(odd.message).toBe('virDomainCreate failed: m (code 1234); do x');
    expect(VIR_ERR.CHECKPOINT_INCONSISTENT).toBe(109);
    expect(VIR_ERR.NO_DOMAIN_CHECKPOINT).toBe(103);
  });
});
