// JSON text exactly as Python's json.dumps(value, sort_keys=True, indent=2) writes it (Cinder's manifests).
import { InvalidInputError } from '../../util/errors.js';

/** A JSON value with no undefined members. */
export type JsonValue = null | boolean | number | string | JsonValue[] | { [key: string]: JsonValue };

const SURROGATE = /[\ud800-\udfff]/;

/** Compares by Unicode code point, as Python sorts str keys. */
function compareCodePoints(a: string, b: string): number {
  if (!SURROGATE.test(a) && !SURROGATE.test(b)) return a < b ? -1 : a > b ? 1 : 0; // UTF-16 order = code point order
  const ca = [...a];
  const cb = [...b];
  for (let i = 0; i < Math.min(ca.length, cb.length); i++) {
    const d = (ca[i]!.codePointAt(0) ?? 0) - (cb[i]!.codePointAt(0) ?? 0);
    if (d !== 0) return d;
  }
  return ca.length - cb.length;
}

/** A string literal with ensure_ascii=True: non-ASCII as \uXXXX (surrogate pairs for astral chars). */
const PLAIN = /^[\x20\x21\x23-\x5b\x5d-\x7e]*$/;

export function pythonJsonString(s: string): string {
  if (PLAIN.test(s)) return `"${s}"`; // printable ASCII without quote or backslash: as is
  let out = '"';
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c === 0x22) out += '\\"';
    else if (c === 0x5c) out += '\\\\';
    else if (c === 0x0a) out += '\\n';
    else if (c === 0x0d) out += '\\r';
    else if (c === 0x09) out += '\\t';
    else if (c === 0x08) out += '\\b';
    else if (c === 0x0c) out += '\\f';
    else if (c < 0x20 || c > 0x7e) out += `\\u${c.toString(16).padStart(4, '0')}`;
    else out += s[i];
  }
  return `${out}"`;
}

function numberText(n: number): string {
  if (!Number.isFinite(n)) throw new InvalidInputError(`cannot write ${n} in a manifest`, { hint: 'use finite numbers' });
  if (Number.isInteger(n)) return n.toFixed(0);
  return String(n); // floats never occur in Cinder manifests; repr may differ from Python for some values
}

/** Serializes like Python's json.dumps(value, sort_keys=True, indent=2). Throws InvalidInputError on NaN/undefined. */
export function pythonJsonDumps(value: JsonValue, indent = 2): string {
  const parts: string[] = [];
  write(value, 0, parts, indent);
  return parts.join('');
}

/** Like pythonJsonDumps, for a value nested `level` deep (its inner lines indented accordingly). */
export function pythonJsonDumpsAt(value: JsonValue, level: number, indent = 2): string {
  const parts: string[] = [];
  write(value, level, parts, indent);
  return parts.join('');
}

function write(value: JsonValue, level: number, out: string[], indent: number): void {
  if (value === null) out.push('null');
  else if (value === true) out.push('true');
  else if (value === false) out.push('false');
  else if (typeof value === 'number') out.push(numberText(value));
  else if (typeof value === 'string') out.push(pythonJsonString(value));
  else if (Array.isArray(value)) {
    if (value.length === 0) { out.push('[]'); return; }
    const inner = '\n' + ' '.repeat((level + 1) * indent);
    out.push('[');
    value.forEach((item, i) => {
      out.push(i === 0 ? inner : `,${inner}`);
      write(item, level + 1, out, indent);
    });
    out.push('\n' + ' '.repeat(level * indent) + ']');
  } else if (typeof value === 'object') {
    const keys = Object.keys(value).sort(compareCodePoints);
    if (keys.length === 0) { out.push('{}'); return; }
    const inner = '\n' + ' '.repeat((level + 1) * indent);
    out.push('{');
    keys.forEach((key, i) => {
      const member = value[key];
      if (member === undefined) throw new InvalidInputError(`manifest member "${key}" is undefined`, { hint: 'use null' });
      out.push(i === 0 ? inner : `,${inner}`);
      out.push(`${pythonJsonString(key)}: `);
      write(member, level + 1, out, indent);
    });
    out.push('\n' + ' '.repeat(level * indent) + '}');
  } else {
    throw new InvalidInputError(`cannot write a ${typeof value} in a manifest`);
  }
}
