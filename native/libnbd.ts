// The raw libnbd binding (koffi over the system libnbd.so.0): C names and prototypes 1:1, typed, loaded on first use.
import koffi from 'koffi';

/** An opaque `struct nbd_handle *` as koffi hands it out. Never null once created. */
export type NbdHandlePtr = { readonly __brand: 'nbd_handle *' };

/** A callback registered with koffi (the value koffi.register returns), or null for "no callback". */
export type RegisteredCallback = ReturnType<typeof koffi.register>;

/** `nbd_completion_callback` passed by value; null members mean "no callback". */
export interface CompletionCallbackStruct {
  callback: RegisteredCallback | null;
  user_data: null;
  free: null;
}

/** `nbd_extent_callback` passed by value. */
export interface ExtentCallbackStruct {
  callback: RegisteredCallback | null;
  user_data: null;
  free: null;
}

/** JS side of `nbd_extent_cb`: entries is a pointer to `nr_entries` uint32 values, (length, flags) pairs. */
export type ExtentCallbackFn = (userData: unknown, metacontext: string, offset: number | bigint, entries: unknown, nrEntries: number, error: unknown) => number;

export const LIBNBD_TLS_DISABLE = 0;
export const LIBNBD_TLS_ALLOW = 1;
export const LIBNBD_TLS_REQUIRE = 2;
export const LIBNBD_SIZE_MINIMUM = 0;
export const LIBNBD_SIZE_PREFERRED = 1;
export const LIBNBD_SIZE_MAXIMUM = 2;
export const LIBNBD_CMD_FLAG_FUA = 0x01;
export const LIBNBD_CMD_FLAG_NO_HOLE = 0x02;
export const LIBNBD_CMD_FLAG_DF = 0x04;
export const LIBNBD_CMD_FLAG_REQ_ONE = 0x08;
export const LIBNBD_CMD_FLAG_FAST_ZERO = 0x10;
export const LIBNBD_SHUTDOWN_ABANDON_PENDING = 0x10000;
export const LIBNBD_AIO_DIRECTION_READ = 1;
export const LIBNBD_AIO_DIRECTION_WRITE = 2;
export const LIBNBD_AIO_DIRECTION_BOTH = 3;
/** `base:allocation` flag: the extent is a hole (not allocated). */
export const LIBNBD_STATE_HOLE = 1;
/** `base:allocation` flag: the extent reads as zeroes. */
export const LIBNBD_STATE_ZERO = 2;
/** `qemu:dirty-bitmap:NAME` flag: the extent is dirty. */
export const LIBNBD_STATE_DIRTY = 1;
export const LIBNBD_CONTEXT_BASE_ALLOCATION = 'base:allocation';

type Ptr = NbdHandlePtr;
type U64 = number | bigint;

/** The libnbd functions fleece uses, with their C names and C argument order. Each returns what C returns. */
export interface Libnbd {
  nbd_create(): Ptr | null;
  nbd_close(h: Ptr): void;
  nbd_get_error(): string | null;
  nbd_get_errno(): number;
  nbd_set_export_name(h: Ptr, name: string): number;
  nbd_set_handle_name(h: Ptr, name: string): number;
  nbd_add_meta_context(h: Ptr, name: string): number;
  nbd_set_tls(h: Ptr, tls: number): number;
  nbd_set_tls_certificates(h: Ptr, dir: string): number;
  nbd_set_tls_verify_peer(h: Ptr, verify: boolean): number;
  nbd_set_tls_username(h: Ptr, username: string): number;
  nbd_set_tls_psk_file(h: Ptr, filename: string): number;
  nbd_supports_tls(h: Ptr): number;
  nbd_get_tls_negotiated(h: Ptr): number;
  nbd_supports_uri(h: Ptr): number;
  nbd_connect_uri(h: Ptr, uri: string): number;
  nbd_connect_unix(h: Ptr, path: string): number;
  nbd_connect_tcp(h: Ptr, hostname: string, port: string): number;
  nbd_aio_connect_uri(h: Ptr, uri: string): number;
  nbd_aio_connect_unix(h: Ptr, path: string): number;
  nbd_aio_connect_tcp(h: Ptr, hostname: string, port: string): number;
  nbd_get_size(h: Ptr): number | bigint;
  nbd_get_block_size(h: Ptr, sizeType: number): number | bigint;
  nbd_is_read_only(h: Ptr): number;
  nbd_can_trim(h: Ptr): number;
  nbd_can_multi_conn(h: Ptr): number;
  nbd_can_meta_context(h: Ptr, name: string): number;
  nbd_get_protocol(h: Ptr): string | null;
  nbd_pread(h: Ptr, buf: Uint8Array, count: number, offset: U64, flags: number): number;
  nbd_block_status(h: Ptr, count: U64, offset: U64, cb: ExtentCallbackStruct, flags: number): number;
  nbd_trim(h: Ptr, count: U64, offset: U64, flags: number): number;
  nbd_shutdown(h: Ptr, flags: number): number;
  nbd_aio_pread(h: Ptr, buf: Uint8Array, count: number, offset: U64, cb: CompletionCallbackStruct, flags: number): number | bigint;
  nbd_aio_block_status(h: Ptr, count: U64, offset: U64, ecb: ExtentCallbackStruct, ccb: CompletionCallbackStruct, flags: number): number | bigint;
  nbd_aio_trim(h: Ptr, count: U64, offset: U64, cb: CompletionCallbackStruct, flags: number): number | bigint;
  nbd_aio_pwrite(h: Ptr, buf: Uint8Array, count: number, offset: U64, cb: CompletionCallbackStruct, flags: number): number | bigint;
  nbd_aio_zero(h: Ptr, count: U64, offset: U64, cb: CompletionCallbackStruct, flags: number): number | bigint;
  nbd_aio_flush(h: Ptr, cb: CompletionCallbackStruct, flags: number): number | bigint;
  nbd_can_zero(h: Ptr): number;
  nbd_can_flush(h: Ptr): number;
  nbd_aio_get_fd(h: Ptr): number;
  nbd_aio_get_direction(h: Ptr): number;
  nbd_aio_notify_read(h: Ptr): number;
  nbd_aio_notify_write(h: Ptr): number;
  nbd_aio_is_connecting(h: Ptr): number;
  nbd_aio_is_ready(h: Ptr): number;
  nbd_aio_is_processing(h: Ptr): number;
  nbd_aio_is_dead(h: Ptr): number;
  nbd_aio_is_closed(h: Ptr): number;
  nbd_aio_command_completed(h: Ptr, cookie: U64): number;
  nbd_aio_peek_command_completed(h: Ptr): number | bigint;
  nbd_aio_in_flight(h: Ptr): number;
  nbd_connection_state(h: Ptr): string | null;
}

/** The koffi types the binding declares, for callers that register callbacks. */
export interface LibnbdTypes {
  extentCallbackProto: ReturnType<typeof koffi.proto>;
  completionCallbackProto: ReturnType<typeof koffi.proto>;
}

type LoadedLibnbd = { lib: Libnbd; types: LibnbdTypes };

let loaded: LoadedLibnbd | undefined;

// koffi's type names (nbd_handle, nbd_extent_cb, …) live in one registry per process, while a second copy of this module
// may load in the same process (jest gives every test file its own module registry and globals in a shared worker):
// reuse a name that is already declared instead of declaring it twice.
function declareOnce<T>(name: string, declare: () => T): T {
  try {
    return koffi.type(name) as T;
  } catch {
    return declare();
  }
}

const PROTOTYPES = [
  'nbd_handle *nbd_create()',
  'void nbd_close(nbd_handle *h)',
  'const char *nbd_get_error()',
  'int nbd_get_errno()',
  'int nbd_set_export_name(nbd_handle *h, const char *name)',
  'int nbd_set_handle_name(nbd_handle *h, const char *name)',
  'int nbd_add_meta_context(nbd_handle *h, const char *name)',
  'int nbd_set_tls(nbd_handle *h, int tls)',
  'int nbd_set_tls_certificates(nbd_handle *h, const char *dir)',
  'int nbd_set_tls_verify_peer(nbd_handle *h, bool verify)',
  'int nbd_set_tls_username(nbd_handle *h, const char *username)',
  'int nbd_set_tls_psk_file(nbd_handle *h, const char *filename)',
  'int nbd_supports_tls(nbd_handle *h)',
  'int nbd_get_tls_negotiated(nbd_handle *h)',
  'int nbd_supports_uri(nbd_handle *h)',
  'int nbd_connect_uri(nbd_handle *h, const char *uri)',
  'int nbd_connect_unix(nbd_handle *h, const char *unixsocket)',
  'int nbd_connect_tcp(nbd_handle *h, const char *hostname, const char *port)',
  'int nbd_aio_connect_uri(nbd_handle *h, const char *uri)',
  'int nbd_aio_connect_unix(nbd_handle *h, const char *unixsocket)',
  'int nbd_aio_connect_tcp(nbd_handle *h, const char *hostname, const char *port)',
  'int64_t nbd_get_size(nbd_handle *h)',
  'int64_t nbd_get_block_size(nbd_handle *h, int size_type)',
  'int nbd_is_read_only(nbd_handle *h)',
  'int nbd_can_trim(nbd_handle *h)',
  'int nbd_can_multi_conn(nbd_handle *h)',
  'int nbd_can_meta_context(nbd_handle *h, const char *name)',
  'const char *nbd_get_protocol(nbd_handle *h)',
  'int nbd_pread(nbd_handle *h, void *buf, size_t count, uint64_t offset, uint32_t flags)',
  'int nbd_block_status(nbd_handle *h, uint64_t count, uint64_t offset, nbd_extent_callback cb, uint32_t flags)',
  'int nbd_trim(nbd_handle *h, uint64_t count, uint64_t offset, uint32_t flags)',
  'int nbd_shutdown(nbd_handle *h, uint32_t flags)',
  'int64_t nbd_aio_pread(nbd_handle *h, void *buf, size_t count, uint64_t offset, nbd_completion_callback cb, uint32_t flags)',
  'int64_t nbd_aio_block_status(nbd_handle *h, uint64_t count, uint64_t offset, nbd_extent_callback ecb, nbd_completion_callback ccb, uint32_t flags)',
  'int64_t nbd_aio_trim(nbd_handle *h, uint64_t count, uint64_t offset, nbd_completion_callback cb, uint32_t flags)',
  'int64_t nbd_aio_pwrite(nbd_handle *h, const void *buf, size_t count, uint64_t offset, nbd_completion_callback cb, uint32_t flags)',
  'int64_t nbd_aio_zero(nbd_handle *h, uint64_t count, uint64_t offset, nbd_completion_callback cb, uint32_t flags)',
  'int64_t nbd_aio_flush(nbd_handle *h, nbd_completion_callback cb, uint32_t flags)',
  'int nbd_can_zero(nbd_handle *h)',
  'int nbd_can_flush(nbd_handle *h)',
  'int nbd_aio_get_fd(nbd_handle *h)',
  'unsigned int nbd_aio_get_direction(nbd_handle *h)',
  'int nbd_aio_notify_read(nbd_handle *h)',
  'int nbd_aio_notify_write(nbd_handle *h)',
  'int nbd_aio_is_connecting(nbd_handle *h)',
  'int nbd_aio_is_ready(nbd_handle *h)',
  'int nbd_aio_is_processing(nbd_handle *h)',
  'int nbd_aio_is_dead(nbd_handle *h)',
  'int nbd_aio_is_closed(nbd_handle *h)',
  'int nbd_aio_command_completed(nbd_handle *h, uint64_t cookie)',
  'int64_t nbd_aio_peek_command_completed(nbd_handle *h)',
  'int nbd_aio_in_flight(nbd_handle *h)',
  'const char *nbd_connection_state(nbd_handle *h)',
] as const;

/**
 * Loads libnbd.so.0 once and returns its functions and callback types.
 * @throws Error when libnbd.so.0 is not installed (Debian package libnbd0).
 */
export function loadLibnbd(): { lib: Libnbd; types: LibnbdTypes } {
  if (loaded) return loaded;
  let handle;
  try {
    handle = koffi.load('libnbd.so.0');
  } catch (error) {
    throw new Error(`cannot load libnbd.so.0 (${String(error)}); install it with: apt-get install -y libnbd0`, { cause: error });
  }
  declareOnce('nbd_handle', () => koffi.opaque('nbd_handle'));
  const extentCallbackProto = declareOnce('nbd_extent_cb', () => koffi.proto(
    'int nbd_extent_cb(void *user_data, const char *metacontext, uint64_t offset, uint32_t *entries, size_t nr_entries, int *error)',
  ));
  const completionCallbackProto = declareOnce('nbd_completion_cb', () => koffi.proto('int nbd_completion_cb(void *user_data, int *error)'));
  declareOnce('nbd_free_cb', () => koffi.proto('void nbd_free_cb(void *user_data)'));
  declareOnce('nbd_extent_callback', () => koffi.struct('nbd_extent_callback', { callback: 'nbd_extent_cb *', user_data: 'void *', free: 'nbd_free_cb *' }));
  declareOnce('nbd_completion_callback', () => koffi.struct('nbd_completion_callback', { callback: 'nbd_completion_cb *', user_data: 'void *', free: 'nbd_free_cb *' }));
  const lib: Record<string, unknown> = {};
  for (const prototype of PROTOTYPES) {
    const fn = handle.func(prototype);
    const name = /([a-z_]+)\(/.exec(prototype)?.[1];
    if (!name) throw new Error(`bad prototype ${prototype}`);
    lib[name] = fn;
  }
  loaded = { lib: lib as unknown as Libnbd, types: { extentCallbackProto, completionCallbackProto } };
  return loaded;
}

/** Decodes the `entries` pointer of an extent callback into [length, flags, length, flags, ...]. */
export function decodeExtentEntries(entries: unknown, nrEntries: number): number[] {
  if (nrEntries === 0) return [];
  return Array.from(koffi.decode(entries, koffi.array('uint32_t', nrEntries)) as ArrayLike<number>);
}

/** Registers a JS extent callback with koffi; pair with `unregisterCallback`. */
export function registerExtentCallback(fn: ExtentCallbackFn): RegisteredCallback {
  const { types } = loadLibnbd();
  return koffi.register(fn, koffi.pointer(types.extentCallbackProto));
}

/** Releases a callback registered with `registerExtentCallback`. */
export function unregisterCallback(cb: RegisteredCallback): void {
  koffi.unregister(cb);
}

/** The "no callback" value for `nbd_completion_callback` arguments. */
export const NULL_COMPLETION: CompletionCallbackStruct = Object.freeze({ callback: null, user_data: null, free: null }) as CompletionCallbackStruct;
