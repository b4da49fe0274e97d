// The code of the thread that owns one libvirt connection, as CommonJS text run with `eval: true` (ts-jest and dist alike).

/**
 * Messages in: {id, op, args}; out: {id, ok: true, value} | {id, ok: false, error: LibvirtErrorDetail & {operation}}. Calls run one at a
 * time, synchronously, on this thread, so libvirt's thread-local last error (virGetLastError) is read on the thread
 * that made the failing call. Ops take names (domain, checkpoint) and numeric flags computed by the main side;
 * virDomainPtrs are looked up once and cached by name (a cached pointer that libvirt no longer knows, e.g. after an
 * undefine and a new define, fails with VIR_ERR_NO_DOMAIN and is looked up again once; domainUuid, answered from the
 * pointer itself, always looks up afresh), and freed at `close`.
 * Error printing: libvirt prints every error to stderr unless an error handler is set. The handler installed (global
 * and per connection) is libvirt's own virResetError called as (NULL, err), a native no-op: a koffi-registered JS
 * callback would belong to this thread's isolate, while the global handler is shared by every thread of the process
 * (other connections' workers) and outlives this worker.
 * backupBegin first asks virDomainGetJobStats and refuses at once while a job runs: virDomainBackupBegin would wait
 * 30 s for the state-change lock that job holds, and block every later call on this connection meanwhile.
 * Each worker koffi.load()s libvirt.so.0 itself; libvirt.so.0 is linked NODELETE (readelf: FLAGS_1 NODELETE), so a
 * worker's exit never unmaps it under another thread's libvirt thread-local destructors.
 * workerData: libvirtWorkerData() in connection.ts (noopHandler null: libvirt's default printer, for tests).
 */
export const LIBVIRT_WORKER_SOURCE = String.raw`
'use strict';
const { parentPort, workerData } = require('node:worker_threads');
const koffi = require(workerData.koffiPath);
const littleEndian = require('node:os').endianness() === 'LE';
const L = workerData.layout;

let fn = null;
let free = null;
let conn = null;
let noop = null;
let ErrorStruct = null;
const domains = new Map();

class Failure extends Error {
  constructor(detail) {
    super(detail.message);
    this.detail = detail;
  }
}

function nameOf(prototype) {
  const m = /([A-Za-z_][A-Za-z0-9_]*)\(/.exec(prototype);
  if (!m) throw new Error('bad prototype ' + prototype);
  return m[1];
}

function load() {
  if (fn) return;
  let lib;
  try {
    lib = koffi.load('libvirt.so.0');
  } catch (e) {
    throw new Failure({ operation: 'dlopen', code: -1, domain: -1, message: 'cannot load libvirt.so.0 (' + (e && e.message) + ')', local: 'unavailable' });
  }
  koffi.pointer('virConnectPtr', koffi.opaque('virConnect'));
  koffi.pointer('virDomainPtr', koffi.opaque('virDomain'));
  koffi.pointer('virDomainCheckpointPtr', koffi.opaque('virDomainCheckpoint'));
  koffi.opaque('owned_char');
  koffi.struct('virDomainBlockInfo', { capacity: 'unsigned long long', allocation: 'unsigned long long', physical: 'unsigned long long' });
  ErrorStruct = koffi.struct('virError', {
    code: 'int', domain: 'int', message: 'char *', level: 'int', conn: 'void *', dom: 'void *',
    str1: 'char *', str2: 'char *', str3: 'char *', int1: 'int', int2: 'int', net: 'void *',
  });
  const TypedParameter = koffi.struct('virTypedParameter', {
    field: koffi.array('char', L.fieldLength),
    type: 'int',
    value: koffi.union('virTypedParameterValue', { i: 'int', ui: 'unsigned int', l: 'long long', ul: 'unsigned long long', d: 'double', b: 'char', s: 'char *' }),
  });
  if (koffi.sizeof(TypedParameter) !== L.size || koffi.offsetof(TypedParameter, 'type') !== L.typeOffset || koffi.offsetof(TypedParameter, 'value') !== L.valueOffset) {
    throw new Error('virTypedParameter layout is not the expected ' + JSON.stringify(L));
  }
  const f = {};
  for (const p of workerData.prototypes) f[nameOf(p)] = lib.func(p);
  const libc = koffi.load('libc.so.6');
  for (const p of workerData.libcPrototypes) if (nameOf(p) === 'free') free = libc.func(p);
  noop = workerData.noopHandler ? lib.symbol(workerData.noopHandler) : null;
  f.virSetErrorFunc(null, noop);
  fn = f;
}

/** The calling thread's last libvirt error, as a plain object; resets it. */
function lastError(operation) {
  const p = fn.virGetLastError();
  if (!p) return { operation, code: -1, domain: -1, level: 0, message: operation + ' failed and libvirt set no error' };
  const e = koffi.decode(p, ErrorStruct);
  fn.virResetLastError();
  return { operation, code: e.code, domain: e.domain, level: e.level, message: e.message || '', str1: e.str1, str2: e.str2, str3: e.str3, int1: e.int1, int2: e.int2 };
}
function fail(operation) {
  return new Failure(lastError(operation));
}
/** An int-returning call: -1 (any negative) is a failure. */
function int(operation, result) {
  if (result < 0) throw fail(operation);
  return result;
}
/** A pointer-returning call: NULL is a failure. */
function ptr(operation, result) {
  if (!result) throw fail(operation);
  return result;
}
/** Decodes a string libvirt allocated for the caller, then frees it. */
function ownedString(operation, p) {
  if (!p) throw fail(operation);
  try {
    return koffi.decode.string(p);
  } finally {
    free(p);
  }
}
function connection() {
  if (!conn) throw new Failure({ operation: 'virConnectOpen', code: -1, domain: -1, message: 'the connection is not open', local: 'closed' });
  return conn;
}
function lookup(name) {
  let d = domains.get(name);
  if (!d) {
    d = ptr('virDomainLookupByName', fn.virDomainLookupByName(connection(), name));
    domains.set(name, d);
  }
  return d;
}
function forget(name) {
  const d = domains.get(name);
  if (!d) return;
  domains.delete(name);
  fn.virDomainFree(d);
}
/** Runs fn on the domain; when a cached pointer is no longer known to libvirt, looks the name up again once. */
function onDomain(name, body) {
  const cached = domains.has(name);
  try {
    return body(lookup(name));
  } catch (e) {
    if (!cached || !(e instanceof Failure) || e.detail.code !== 42) throw e;
    forget(name);
    return body(lookup(name));
  }
}
function withCheckpoint(d, checkpoint, body) {
  const cp = ptr('virDomainCheckpointLookupByName', fn.virDomainCheckpointLookupByName(d, checkpoint, 0));
  try {
    return body(cp);
  } finally {
    fn.virDomainCheckpointFree(cp);
  }
}
/** Reads an array of n pointers that libvirt allocated, hands each to take (which frees it), frees the array. */
function takeArray(array, n, take) {
  const out = [];
  if (!array) return out;
  try {
    const items = n > 0 ? koffi.decode(array, 'void *', n) : [];
    let error = null;
    for (const item of items) {
      if (!item) continue;
      try {
        if (error === null) out.push(take(item));
      } catch (e) {
        error = e;
      }
    }
    if (error) throw error;
    return out;
  } finally {
    free(array);
  }
}

const ops = {
  open(uri, readOnly) {
    load();
    if (conn) throw new Error('already open');
    conn = ptr('virConnectOpen', readOnly ? fn.virConnectOpenReadOnly(uri) : fn.virConnectOpen(uri));
    fn.virConnSetErrorFunc(conn, null, noop);
    return null;
  },
  close() {
    for (const name of [...domains.keys()]) forget(name);
    if (conn) {
      const c = conn;
      conn = null;
      if (fn.virConnectClose(c) < 0) lastError('virConnectClose');
    }
    return null;
  },
  alive() {
    return int('virConnectIsAlive', fn.virConnectIsAlive(connection())) === 1;
  },
  version() {
    const lib = [0];
    const hv = [0];
    int('virConnectGetLibVersion', fn.virConnectGetLibVersion(connection(), lib));
    int('virConnectGetVersion', fn.virConnectGetVersion(connection(), hv));
    return { libvirt: Number(lib[0]), hypervisor: Number(hv[0]) };
  },
  listDomains(flags) {
    const out = [null];
    const n = int('virConnectListAllDomains', fn.virConnectListAllDomains(connection(), out, flags));
    return takeArray(out[0], n, (d) => {
      try {
        return fn.virDomainGetName(d);
      } finally {
        fn.virDomainFree(d);
      }
    });
  },
  defineXml(xml) {
    const d = ptr('virDomainDefineXML', fn.virDomainDefineXML(connection(), xml));
    const name = fn.virDomainGetName(d);
    forget(name);
    domains.set(name, d);
    return name;
  },
  domainXml(name, flags) {
    return onDomain(name, (d) => ownedString('virDomainGetXMLDesc', fn.virDomainGetXMLDesc(d, flags)));
  },
  domainState(name) {
    return onDomain(name, (d) => {
      const state = [0];
      const reason = [0];
      int('virDomainGetState', fn.virDomainGetState(d, state, reason, 0));
      return { state: state[0], reason: reason[0] };
    });
  },
  domainUuid(name) {
    // virDomainGetUUIDString reads the pointer's own copy (no call to libvirtd): look the name up afresh.
    forget(name);
    return onDomain(name, (d) => {
      const buf = Buffer.alloc(L.uuidBuflen);
      int('virDomainGetUUIDString', fn.virDomainGetUUIDString(d, buf));
      const end = buf.indexOf(0);
      return buf.subarray(0, end < 0 ? buf.length : end).toString('latin1');
    });
  },
  blockInfo(name, disk) {
    return onDomain(name, (d) => {
      const info = {};
      int('virDomainGetBlockInfo', fn.virDomainGetBlockInfo(d, disk, info, 0));
      return { capacity: Number(info.capacity), allocation: Number(info.allocation), physical: Number(info.physical) };
    });
  },
  start(name) {
    onDomain(name, (d) => int('virDomainCreate', fn.virDomainCreate(d)));
    return null;
  },
  destroy(name) {
    onDomain(name, (d) => int('virDomainDestroy', fn.virDomainDestroy(d)));
    return null;
  },
  undefine(name, flags) {
    onDomain(name, (d) => int('virDomainUndefineFlags', fn.virDomainUndefineFlags(d, flags)));
    forget(name);
    return null;
  },
  backupBegin(name, backupXml, checkpointXml, flags) {
    onDomain(name, (d) => {
      // libvirt would wait 30 s for the domain's state-change lock held by the running job, then fail: refuse at once.
      const type = [0];
      const params = [null];
      const count = [0];
      int('virDomainGetJobStats', fn.virDomainGetJobStats(d, type, params, count, 0));
      if (params[0]) fn.virTypedParamsFree(params[0], count[0]);
      if (type[0] !== 0) {
        throw new Failure({ operation: 'virDomainBackupBegin', code: L.operationInvalid, domain: -1, message: 'another job is already running on the domain (a job of type ' + (L.jobTypes[type[0]] || type[0]) + '); end it first (abortJob for a pull backup)', local: 'busy' });
      }
      int('virDomainBackupBegin', fn.virDomainBackupBegin(d, backupXml, checkpointXml, flags));
    });
    return null;
  },
  backupXml(name) {
    return onDomain(name, (d) => ownedString('virDomainBackupGetXMLDesc', fn.virDomainBackupGetXMLDesc(d, 0)));
  },
  jobStats(name, flags) {
    return onDomain(name, (d) => {
      const type = [0];
      const params = [null];
      const count = [0];
      int('virDomainGetJobStats', fn.virDomainGetJobStats(d, type, params, count, flags));
      const n = count[0];
      const p = params[0];
      try {
        if (!p || n <= 0) return { type: type[0], params: { count: 0, bytes: new Uint8Array(0), strings: [] } };
        const bytes = new Uint8Array(koffi.view(p, n * L.size)).slice();
        const strings = [];
        const types = new DataView(bytes.buffer);
        for (let i = 0; i < n; i++) {
          if (types.getInt32(i * L.size + L.typeOffset, littleEndian) !== L.stringType) continue;
          const s = koffi.decode(p, i * L.size + L.valueOffset, 'char *');
          strings.push([i, s == null ? '' : s]);
        }
        return { type: type[0], params: { count: n, bytes, strings } };
      } finally {
        if (p) fn.virTypedParamsFree(p, n);
      }
    });
  },
  abortJob(name) {
    onDomain(name, (d) => int('virDomainAbortJob', fn.virDomainAbortJob(d)));
    return null;
  },
  fsFreeze(name, mountpoints) {
    return onDomain(name, (d) => int('virDomainFSFreeze', fn.virDomainFSFreeze(d, mountpoints.length ? mountpoints : null, mountpoints.length, 0)));
  },
  fsThaw(name, mountpoints) {
    return onDomain(name, (d) => int('virDomainFSThaw', fn.virDomainFSThaw(d, mountpoints.length ? mountpoints : null, mountpoints.length, 0)));
  },
  checkpointCreate(name, xml, flags) {
    return onDomain(name, (d) => {
      const cp = ptr('virDomainCheckpointCreateXML', fn.virDomainCheckpointCreateXML(d, xml, flags));
      try {
        return fn.virDomainCheckpointGetName(cp);
      } finally {
        fn.virDomainCheckpointFree(cp);
      }
    });
  },
  listCheckpoints(name, flags) {
    return onDomain(name, (d) => {
      const out = [null];
      const n = int('virDomainListAllCheckpoints', fn.virDomainListAllCheckpoints(d, out, flags));
      return takeArray(out[0], n, (cp) => {
        try {
          return fn.virDomainCheckpointGetName(cp);
        } finally {
          fn.virDomainCheckpointFree(cp);
        }
      });
    });
  },
  checkpointXml(name, checkpoint, flags) {
    return onDomain(name, (d) => withCheckpoint(d, checkpoint, (cp) => ownedString('virDomainCheckpointGetXMLDesc', fn.virDomainCheckpointGetXMLDesc(cp, flags))));
  },
  checkpointDelete(name, checkpoint, flags) {
    onDomain(name, (d) => withCheckpoint(d, checkpoint, (cp) => int('virDomainCheckpointDelete', fn.virDomainCheckpointDelete(cp, flags))));
    return null;
  },
};

parentPort.on('message', (msg) => {
  const op = ops[msg.op];
  try {
    if (!op) throw new Error('unknown op ' + msg.op);
    const value = op(...msg.args);
    const transfer = value && value.params && value.params.bytes ? [value.params.bytes.buffer] : [];
    parentPort.postMessage({ id: msg.id, ok: true, value }, transfer);
  } catch (e) {
    const error = e instanceof Failure ? e.detail : { operation: msg.op, code: -1, domain: -1, message: String((e && e.stack) || e), local: 'worker' };
    parentPort.postMessage({ id: msg.id, ok: false, error });
  }
});
`;
