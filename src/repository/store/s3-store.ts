// The S3 ObjectStore adapter (@aws-sdk/client-s3): objects are keys `<prefix>/<container>/<name>` in one bucket.
//
// Puts are atomic on S3 by themselves (a PUT or a completed multipart upload shows the whole object or nothing) and
// durable when they resolve, so there is no temporary name and no syncContainer. Every put carries a Content-MD5
// the server checks (BadDigest otherwise). A buffer goes as one PUT up to `multipartThreshold`, else as a multipart
// upload; a stream (the _sha256file of a big disk, the _metadata) is cut into parts of `partSize` with at most two
// parts in memory, and goes as one PUT when it ends before its first part is full. The leftovers of interrupted
// multipart uploads are this store's temporary objects (listTemporary / deleteTemporary abort them).
//
// Errors: a missing object is ObjectNotFoundError; everything else an S3StoreError (a StoreError) whose message
// names the bucket and the endpoint and whose hint says what to fix (credentials, secret, bucket, permissions,
// region, reachability). `transient` marks what is worth retrying (throttling, 5xx, connection resets, timeouts): the
// RetryStore decorator retries those, never a 4xx; this store retries only the parts of a streamed upload, which no
// decorator can replay.
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import {
  AbortMultipartUploadCommand, CompleteMultipartUploadCommand, CreateMultipartUploadCommand, DeleteObjectCommand,
  GetObjectCommand, HeadObjectCommand, ListMultipartUploadsCommand, ListObjectsV2Command, PutObjectCommand,
  S3Client, UploadPartCommand, type S3ClientConfig,
} from '@aws-sdk/client-s3';
import { AbortedError, throwIfAborted } from '../../util/errors.js';
import { getLogger } from '../../util/logger.js';
import {
  ObjectNotFoundError, StoreError, checkObjectPath,
  type ObjectInfo, type ObjectStore, type PutOptions, type StoreCallOptions,
} from './object-store.js';
import { formatS3Location } from './s3-location.js';
import { S3StoreError } from './s3-store-error.js';
import { DEFAULT_RETRY_POLICY, withRetry, type RetryPolicy } from './retry-store.js';
import type { ListedObject, ListsEverything } from './listing-snapshot.js';
import type { HoldsRootObjects } from './root-objects.js';

const log = getLogger('repository.s3-store');

export { S3StoreError };

export interface S3StoreOptions {
  bucket: string;
  /** Key prefix ('' or `a/b`, no leading or trailing '/'). */
  prefix?: string;
  /** Explicit endpoint URL; else AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL, the profile's endpoint_url, else AWS. */
  endpoint?: string;
  /** Else AWS_REGION, AWS_DEFAULT_REGION, the profile's region, else us-east-1. */
  region?: string;
  /**
   * Path-style addressing (`endpoint/bucket/key`) instead of virtual hosts (`bucket.endpoint/key`); else
   * FLEECE_S3_PATH_STYLE (1/0, true/false), else on for any endpoint that is not AWS's.
   */
  forcePathStyle?: boolean;
  /** Else the SDK's chain: environment, the profile in ~/.aws/credentials and config, SSO, IMDS… */
  credentials?: { accessKeyId: string; secretAccessKey: string; sessionToken?: string };
  /** Else AWS_PROFILE, else `default`. */
  profile?: string;
  /** Part size of multipart uploads (default 8 MiB; S3 wants at least 5 MiB). */
  partSize?: number;
  /** Buffers larger than this go as multipart uploads (default 64 MiB). */
  multipartThreshold?: number;
  /** Connections to the endpoint at most (default 16): requests beyond wait for one. */
  maxSockets?: number;
  /** Keys per list request (default 1000, S3's most; tests use fewer to cross pages). */
  pageSize?: number;
  /** Retries of each part of a streamed upload (default DEFAULT_RETRY_POLICY). */
  partRetry?: RetryPolicy;
  /** Milliseconds to connect, and without a byte on an open request (defaults 10 s, 120 s). */
  connectTimeoutMs?: number;
  requestTimeoutMs?: number;
}

const NETWORK_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'EPIPE', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENETUNREACH', 'EAI_AGAIN', 'ENOTFOUND', 'ECONNABORTED', 'EADDRNOTAVAIL']);
/** Network failures worth another try (ENOTFOUND is a wrong name: final). */
const TRANSIENT_NETWORK = new Set(['ECONNREFUSED', 'ECONNRESET', 'EPIPE', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENETUNREACH', 'EAI_AGAIN', 'ECONNABORTED', 'TimeoutError', 'RequestTimeout']);
/** S3 codes of throttling (503 SlowDown on AWS; some servers answer 429). */
const THROTTLING = new Set(['SlowDown', 'Throttling', 'ThrottlingException', 'TooManyRequests', 'TooManyRequestsException', 'RequestLimitExceeded', 'ServiceUnavailable']);

const UNSIGNED_PAYLOAD_COMMANDS = new Set(['PutObjectCommand', 'UploadPartCommand']);
const MD5 = (data: Uint8Array): string => createHash('md5').update(data).digest('base64');

interface SdkError { name?: string; Code?: string; code?: string; message?: string; $metadata?: { httpStatusCode?: number }; cause?: unknown; $response?: { headers?: Record<string, string> } }

/** The setting `key` of `profile` in the shared config file (~/.aws/config or AWS_CONFIG_FILE), if any. */
function profileSetting(profile: string, key: string): string | undefined {
  let text: string;
  try {
    text = readFileSync(process.env.AWS_CONFIG_FILE ?? join(homedir(), '.aws', 'config'), 'utf8');
  } catch {
    return undefined;
  }
  const wanted = profile === 'default' ? new Set(['default', 'profile default']) : new Set([`profile ${profile}`]);
  let inside = false;
  for (const raw of text.split('\n')) {
    const line = raw.replace(/[#;].*$/, '').trim();
    const section = /^\[\s*(.+?)\s*\]$/.exec(line);
    if (section) { inside = wanted.has(section[1]!.replace(/\s+/g, ' ')); continue; }
    const kv = /^([A-Za-z0-9_]+)\s*=\s*(.*)$/.exec(line);
    if (inside && kv && kv[1] === key && kv[2] !== '') return kv[2];
  }
  return undefined;
}

function pathStyleFromEnv(): boolean | undefined {
  const v = process.env.FLEECE_S3_PATH_STYLE?.trim().toLowerCase();
  if (v === undefined || v === '') return undefined;
  if (['1', 'true', 'yes', 'on'].includes(v)) return true;
  if (['0', 'false', 'no', 'off'].includes(v)) return false;
  return undefined;
}

function isAwsEndpoint(endpoint: string): boolean {
  try {
    const host = new URL(endpoint).hostname;
    return host === 'amazonaws.com' || host.endsWith('.amazonaws.com') || host.endsWith('.amazonaws.com.cn');
  } catch {
    return false;
  }
}

/** Temporary names of multipart uploads: `.<name>.upload-<uploadId, URI-encoded>`. */
const UPLOAD_MARK = '.upload-';
const temporaryName = (name: string, uploadId: string) => `.${name}${UPLOAD_MARK}${encodeURIComponent(uploadId)}`;
function parseTemporaryName(temp: string): { name: string; uploadId: string } | undefined {
  const at = temp.lastIndexOf(UPLOAD_MARK);
  if (!temp.startsWith('.') || at <= 1) return undefined;
  try {
    return { name: temp.slice(1, at), uploadId: decodeURIComponent(temp.slice(at + UPLOAD_MARK.length)) };
  } catch {
    return undefined;
  }
}

/** One bucket (and prefix) as an ObjectStore. Create it with the options or let the SDK find everything. */
export class S3ObjectStore implements ObjectStore, ListsEverything, HoldsRootObjects {
  readonly location: string;
  readonly bucket: string;
  readonly prefix: string;
  /** The endpoint requests go to (for messages): the configured one, or AWS's for the region. */
  readonly endpoint: string;
  readonly region: string;
  readonly pathStyle: boolean;
  readonly client: S3Client;
  private readonly root: string;
  private readonly partSize: number;
  private readonly multipartThreshold: number;
  private readonly pageSize: number;
  private readonly partRetry: RetryPolicy;
  private accessKey: string | undefined;

  /** Throws InvalidInputError-like StoreError for options S3 cannot take (a part size below 5 MiB). */
  constructor(options: S3StoreOptions) {
    // The SDK warns on stderr about Node 20 on its first client; fleece supports Node 20 (see package.json).
    process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';
    this.bucket = options.bucket;
    this.prefix = options.prefix ?? '';
    this.root = this.prefix === '' ? '' : `${this.prefix}/`;
    const profile = options.profile ?? process.env.AWS_PROFILE ?? 'default';
    const configured = options.endpoint ?? process.env.AWS_ENDPOINT_URL_S3 ?? process.env.AWS_ENDPOINT_URL ?? profileSetting(profile, 'endpoint_url');
    this.region = options.region ?? process.env.AWS_REGION ?? process.env.AWS_DEFAULT_REGION ?? profileSetting(profile, 'region') ?? 'us-east-1';
    this.pathStyle = options.forcePathStyle ?? pathStyleFromEnv() ?? (configured !== undefined && !isAwsEndpoint(configured));
    this.endpoint = configured ?? `https://s3.${this.region}.amazonaws.com`;
    this.partSize = options.partSize ?? 8 * 1024 * 1024;
    this.multipartThreshold = Math.max(options.multipartThreshold ?? 64 * 1024 * 1024, this.partSize);
    this.pageSize = options.pageSize ?? 1000;
    this.partRetry = options.partRetry ?? DEFAULT_RETRY_POLICY;
    if (this.partSize < 5 * 1024 * 1024) throw new StoreError(`S3 part size ${this.partSize} is below S3's minimum of 5 MiB`);
    this.location = formatS3Location({ bucket: this.bucket, prefix: this.prefix });
    this.accessKey = options.credentials?.accessKeyId ?? process.env.AWS_ACCESS_KEY_ID;
    const config: S3ClientConfig = {
      region: this.region,
      forcePathStyle: this.pathStyle,
      ...(configured !== undefined ? { endpoint: configured } : {}),
      ...(options.credentials ? { credentials: options.credentials } : {}),
      ...(options.profile ? { profile: options.profile } : {}),
      // Retries are the RetryStore decorator's (one policy, visible in one place), not the SDK's.
      maxAttempts: 1,
      // The SDK's default CRC32 trailers (aws-chunked bodies) are refused by many non-AWS servers; fleece sends a
      // Content-MD5 on every put instead, which every S3 server checks.
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
      requestHandler: {
        connectionTimeout: options.connectTimeoutMs ?? 10_000,
        requestTimeout: options.requestTimeoutMs ?? 120_000,
        httpAgent: { keepAlive: true, maxSockets: options.maxSockets ?? 16 },
        httpsAgent: { keepAlive: true, maxSockets: options.maxSockets ?? 16 },
      },
    };
    // The SDK warns on every run under Node < 22 that its releases after January 2027 will need Node 22: nothing an
    // operator can act on (package-lock.json pins the SDK fleece is tested with), so it is not printed.
    process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';
    this.client = new S3Client(config);
    // SigV4 signs a sha256 of every body by default: a second full hash of each object on the main thread (~0.9 s
    // per GiB here), and the server hashes it again. The body is already bound by its Content-MD5, which is a signed
    // header the server checks, so uploads are signed as UNSIGNED-PAYLOAD (what the SDKs do over HTTPS).
    this.client.middlewareStack.add((next, context) => async (args) => {
      const request = args.request as { headers?: Record<string, string> };
      if (UNSIGNED_PAYLOAD_COMMANDS.has(context.commandName ?? '') && request.headers) request.headers['x-amz-content-sha256'] = 'UNSIGNED-PAYLOAD';
      return next(args);
    }, { step: 'build', name: 'fleeceUnsignedPayload' });
  }

  /** Where the store is, for messages: `s3://bucket/prefix at http://endpoint`. */
  private where(): string {
    return `${this.location} at ${this.endpoint}`;
  }

  private key(container: string, name: string): string {
    return `${this.root}${container}/${name}`;
  }

  /** Turns an SDK failure into ObjectNotFoundError, AbortedError or S3StoreError with a message that says what to fix. */
  private fail(action: string, container: string | undefined, name: string | undefined, error: unknown, signal?: AbortSignal): never {
    if (error instanceof StoreError || error instanceof ObjectNotFoundError || error instanceof AbortedError) throw error;
    const e = (error ?? {}) as SdkError;
    const what = container === undefined ? this.location : name === undefined ? `${container}` : `${container}/${name}`;
    if (e.name === 'AbortError' || signal?.aborted) throw new AbortedError(`${action} ${what} was aborted`, { cause: error });
    const status = e.$metadata?.httpStatusCode;
    const cause = e.cause as { code?: string } | undefined;
    // (a socket error thrown across realms, as under jest's VM, reaches us only as text: "…connect ECONNREFUSED…")
    const textCode = /\b(E[A-Z]{4,})\b/.exec(e.message ?? '')?.[1];
    const code = e.Code ?? (e.code && NETWORK_CODES.has(e.code) ? e.code : undefined) ?? (cause?.code && NETWORK_CODES.has(cause.code) ? cause.code : undefined)
      ?? (e.name && e.name !== 'Error' && e.name !== 'UnknownError' ? e.name : undefined) ?? (textCode && NETWORK_CODES.has(textCode) ? textCode : undefined);
    if ((code === 'NoSuchKey' || code === 'NotFound') && name !== undefined) throw new ObjectNotFoundError(this.location, container ?? '', name, { cause: error });
    const key = this.accessKey ? `"${this.accessKey}"` : 'the configured access key';
    const base = container === undefined ? `cannot ${action} ${this.where()}` : `cannot ${action} ${what} in ${this.where()}`;
    let message: string;
    let hint: string | undefined;
    let transient = false;
    if (e.name === 'CredentialsProviderError' || /Could not load credentials/i.test(e.message ?? '')) {
      message = `${base}: no S3 credentials were found`;
      hint = 'set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE naming a profile in ~/.aws/credentials';
    } else if (code === 'NoSuchBucket') {
      message = `${base}: the bucket "${this.bucket}" does not exist`;
      hint = `create it (e.g. aws s3 mb s3://${this.bucket} --endpoint-url ${this.endpoint}), or check the bucket name, the endpoint and the region (${this.region})`;
    } else if (code === 'InvalidAccessKeyId') {
      message = `${base}: the access key ${key} is not known to the server`;
      hint = 'check AWS_ACCESS_KEY_ID (or the profile\'s aws_access_key_id) and the endpoint (AWS_ENDPOINT_URL_S3)';
    } else if (code === 'SignatureDoesNotMatch') {
      message = `${base}: the server refused the request signature: the secret key does not match the access key ${key}`;
      hint = 'check AWS_SECRET_ACCESS_KEY (or the profile\'s aws_secret_access_key); if it is right, try FLEECE_S3_PATH_STYLE=1';
    } else if (code === 'AccessDenied' || code === 'Forbidden' || (status === 403 && code !== 'RequestTimeTooSkewed')) {
      message = `${base}: access denied${code === 'Forbidden' ? ' (or wrong credentials)' : ''} for the access key ${key}`;
      hint = `grant it s3:ListBucket, s3:GetObject, s3:PutObject, s3:DeleteObject and s3:AbortMultipartUpload on bucket ${this.bucket}${this.prefix ? ` under ${this.prefix}/` : ''}`;
    } else if (code === 'RequestTimeTooSkewed') {
      message = `${base}: this host's clock differs too much from the server's`;
      hint = 'set the clock (NTP)';
    } else if (code === 'BadDigest' || code === 'InvalidDigest') {
      message = `${base}: the server found that the bytes it received do not match their Content-MD5 (${code})`;
      hint = 'the data changed on the way (a proxy, the network, memory): try again; if it keeps happening, check the path to the server';
    } else if (code === 'PermanentRedirect' || code === 'AuthorizationHeaderMalformed' || code === 'IllegalLocationConstraintException' || status === 301) {
      const region = e.$response?.headers?.['x-amz-bucket-region'];
      message = `${base}: the bucket is in another region than ${this.region}${region ? ` (${region})` : ''}`;
      hint = `set AWS_REGION${region ? `=${region}` : ''} (or the profile's region)`;
    } else if (code !== undefined && NETWORK_CODES.has(code) || e.name === 'TimeoutError' || /socket hang up|timed? ?out/i.test(e.message ?? '') && status === undefined) {
      const why = code ?? e.name ?? e.message;
      message = `${base}: cannot reach the S3 endpoint ${this.endpoint} (${why})`;
      hint = 'check that the server is running and reachable, and the endpoint (AWS_ENDPOINT_URL_S3)';
      transient = TRANSIENT_NETWORK.has(code ?? e.name ?? '') || /socket hang up|timed? ?out/i.test(e.message ?? '');
    } else if ((status !== undefined && status >= 500) || status === 429 || (code !== undefined && THROTTLING.has(code))) {
      message = `${base}: the server answered ${status ?? ''} ${code ?? ''}`.replace(/\s+$/, '').replace(/ {2,}/g, ' ');
      hint = status === 503 || status === 429 || (code !== undefined && THROTTLING.has(code)) ? 'the server is busy (throttling): try again later, or with fewer backups at once' : 'the server failed: try again later';
      transient = true;
    } else {
      message = `${base}: ${status !== undefined ? `HTTP ${status} ` : ''}${code ?? ''}${e.message && e.message !== code ? ` (${e.message})` : ''}`.trimEnd();
    }
    throw new S3StoreError(message, { cause: error, hint, status, s3Code: code, transient });
  }

  /** One request; `signal` aborts it (the SDK rejects with an AbortError). */
  private async send<T>(command: object, signal: AbortSignal | undefined): Promise<T> {
    const send = this.client.send.bind(this.client) as (c: object, o: object) => Promise<unknown>;
    return (await send(command, signal ? { abortSignal: signal } : {})) as T;
  }

  /**
   * Checks that the bucket answers to these credentials (one list request of one key): fails fast, with a clear
   * message, on no credentials, a wrong secret, a missing bucket, access denied, or a server that is not there.
   * Throws S3StoreError, AbortedError.
   */
  async probe(options: StoreCallOptions = {}): Promise<void> {
    try {
      const creds = await this.client.config.credentials();
      this.accessKey = creds.accessKeyId;
    } catch (error) {
      this.fail('open', undefined, undefined, error, options.signal);
    }
    try {
      await this.send(new ListObjectsV2Command({ Bucket: this.bucket, Prefix: this.root, MaxKeys: 1 }), options.signal);
    } catch (error) {
      this.fail('open', undefined, undefined, error, options.signal);
    }
  }

  async put(container: string, name: string, data: Uint8Array | AsyncIterable<Uint8Array>, options: PutOptions = {}): Promise<void> {
    checkObjectPath(this.location, container, name);
    throwIfAborted(options.signal, `writing ${container}/${name}`);
    const key = this.key(container, name);
    try {
      if (data instanceof Uint8Array) {
        if (data.byteLength <= this.multipartThreshold) await this.putOne(key, data, options.signal, options.md5);
        else await this.putMultipart(container, name, (async function* () { yield data; })(), options.signal);
      } else {
        await this.putMultipart(container, name, data, options.signal);
      }
      log.debug({ key }, 'put');
    } catch (error) {
      this.fail('write', container, name, error, options.signal);
    }
  }

  private async putOne(key: string, data: Uint8Array, signal: AbortSignal | undefined, md5Hex?: string): Promise<void> {
    await this.send(new PutObjectCommand({
      Bucket: this.bucket, Key: key, Body: data, ContentLength: data.byteLength,
      ContentMD5: md5Hex !== undefined ? Buffer.from(md5Hex, 'hex').toString('base64') : MD5(data),
    }), signal);
  }

  /**
   * Streams `data` as parts of partSize (one PUT when it ends before the first part is full): at most two parts in
   * memory, each retried on its own; aborts the upload on failure.
   */
  private async putMultipart(container: string, name: string, data: AsyncIterable<Uint8Array>, signal: AbortSignal | undefined): Promise<void> {
    const key = this.key(container, name);
    let uploadId: string | undefined;
    const parts: { ETag: string; PartNumber: number }[] = [];
    let inFlight: Promise<void> | undefined;
    let part = Buffer.allocUnsafe(this.partSize);
    let filled = 0;
    const ship = async (bytes: Buffer, partNumber: number) => {
      const md5 = MD5(bytes);
      const result = await withRetry(`writing part ${partNumber} of ${container}/${name}`, async () => {
        try {
          return await this.send<{ ETag?: string }>(new UploadPartCommand({
            Bucket: this.bucket, Key: key, UploadId: uploadId, PartNumber: partNumber, Body: bytes, ContentLength: bytes.length, ContentMD5: md5,
          }), signal);
        } catch (error) {
          this.fail(`write part ${partNumber} of`, container, name, error, signal);
        }
      }, this.partRetry, signal);
      parts.push({ ETag: result.ETag ?? '', PartNumber: partNumber });
    };
    const flush = async () => {
      uploadId ??= (await this.send<{ UploadId?: string }>(new CreateMultipartUploadCommand({ Bucket: this.bucket, Key: key }), signal)).UploadId;
      if (parts.length + (inFlight ? 1 : 0) >= 10_000) throw new StoreError(`${key} is larger than 10000 parts of ${this.partSize} bytes`);
      await inFlight; // at most one part uploading while the next one fills
      const bytes = part;
      const partNumber = parts.length + 1;
      inFlight = ship(bytes, partNumber);
      inFlight.catch(() => undefined);
      part = Buffer.allocUnsafe(this.partSize);
      filled = 0;
    };
    try {
      for await (const piece of data) {
        throwIfAborted(signal, `writing ${key}`);
        for (let at = 0; at < piece.byteLength;) {
          const n = Math.min(piece.byteLength - at, this.partSize - filled);
          part.set(piece.subarray(at, at + n), filled);
          filled += n;
          at += n;
          if (filled === this.partSize) await flush();
        }
      }
      if (uploadId === undefined) {
        await this.putOne(key, part.subarray(0, filled), signal);
        return;
      }
      await inFlight;
      if (filled > 0) {
        const last = part.subarray(0, filled);
        await ship(last, parts.length + 1);
      }
      await this.send(new CompleteMultipartUploadCommand({ Bucket: this.bucket, Key: key, UploadId: uploadId, MultipartUpload: { Parts: parts } }), signal);
    } catch (error) {
      await inFlight?.catch(() => undefined);
      if (uploadId !== undefined) {
        await this.send(new AbortMultipartUploadCommand({ Bucket: this.bucket, Key: key, UploadId: uploadId }), undefined).catch(() => undefined);
      }
      throw error;
    }
  }

  async get(container: string, name: string, options: StoreCallOptions = {}): Promise<Buffer> {
    checkObjectPath(this.location, container, name);
    throwIfAborted(options.signal, `reading ${container}/${name}`);
    try {
      const out = await this.send<{ Body?: { transformToByteArray(): Promise<Uint8Array> } }>(
        new GetObjectCommand({ Bucket: this.bucket, Key: this.key(container, name) }), options.signal);
      const bytes = await out.Body!.transformToByteArray();
      return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    } catch (error) {
      this.fail('read', container, name, error, options.signal);
    }
  }

  async *getStream(container: string, name: string, options: StoreCallOptions = {}): AsyncIterable<Buffer> {
    checkObjectPath(this.location, container, name);
    throwIfAborted(options.signal, `reading ${container}/${name}`);
    let body: Readable;
    try {
      body = (await this.send<{ Body?: Readable }>(new GetObjectCommand({ Bucket: this.bucket, Key: this.key(container, name) }), options.signal)).Body!;
    } catch (error) {
      this.fail('read', container, name, error, options.signal);
    }
    try {
      for await (const piece of body) {
        throwIfAborted(options.signal, `reading ${container}/${name}`);
        yield piece as Buffer;
      }
    } catch (error) {
      this.fail('read', container, name, error, options.signal);
    } finally {
      body.destroy();
    }
  }

  /** Every page of ListObjectsV2 under `prefix` (with `delimiter`: the objects of that level only). */
  private async *pages(prefix: string, delimiter: string | undefined, signal: AbortSignal | undefined): AsyncGenerator<{ Key?: string; Size?: number; LastModified?: Date }[]> {
    let token: string | undefined;
    do {
      throwIfAborted(signal, `listing ${this.location}`);
      const page = await this.send<{ Contents?: { Key?: string; Size?: number; LastModified?: Date }[]; IsTruncated?: boolean; NextContinuationToken?: string }>(
        new ListObjectsV2Command({ Bucket: this.bucket, Prefix: prefix, Delimiter: delimiter, MaxKeys: this.pageSize, ContinuationToken: token }), signal);
      yield page.Contents ?? [];
      token = page.IsTruncated ? page.NextContinuationToken : undefined;
    } while (token !== undefined);
  }

  async list(container: string, prefix = '', options: StoreCallOptions = {}): Promise<ObjectInfo[]> {
    checkObjectPath(this.location, container);
    const base = this.key(container, '');
    const out: ObjectInfo[] = [];
    try {
      for await (const page of this.pages(base + prefix, '/', options.signal)) {
        for (const o of page) {
          const name = o.Key!.slice(base.length);
          if (name !== '' && !name.includes('/')) out.push({ name, size: o.Size ?? 0, modified: o.LastModified ?? new Date(0) });
        }
      }
    } catch (error) {
      this.fail('list', container, undefined, error, options.signal);
    }
    return out.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  }

  /** Every object under the prefix, with its container (keys that are not `<container>/<name>` are skipped). */
  async *listAll(options: StoreCallOptions = {}): AsyncIterable<ListedObject> {
    try {
      for await (const page of this.pages(this.root, undefined, options.signal)) {
        for (const o of page) {
          const rel = o.Key!.slice(this.root.length);
          const slash = rel.lastIndexOf('/');
          if (slash <= 0 || slash === rel.length - 1) continue;
          yield { container: rel.slice(0, slash), name: rel.slice(slash + 1), size: o.Size ?? 0, modified: o.LastModified ?? new Date(0) };
        }
      }
    } catch (error) {
      this.fail('list', undefined, undefined, error, options.signal);
    }
  }

  /** Every multipart upload in progress under the prefix, as temporary objects of their containers. */
  async *listAllTemporary(options: StoreCallOptions = {}): AsyncIterable<ListedObject> {
    yield* this.uploads(this.root, options.signal);
  }

  private async *uploads(prefix: string, signal: AbortSignal | undefined): AsyncIterable<ListedObject> {
    let keyMarker: string | undefined;
    let uploadMarker: string | undefined;
    try {
      for (;;) {
        throwIfAborted(signal, `listing ${this.location}`);
        const page = await this.send<{ Uploads?: { Key?: string; UploadId?: string; Initiated?: Date }[]; IsTruncated?: boolean; NextKeyMarker?: string; NextUploadIdMarker?: string }>(
          new ListMultipartUploadsCommand({ Bucket: this.bucket, Prefix: prefix, MaxUploads: this.pageSize, KeyMarker: keyMarker, UploadIdMarker: uploadMarker }), signal);
        for (const u of page.Uploads ?? []) {
          const rel = u.Key!.slice(this.root.length);
          const slash = rel.lastIndexOf('/');
          if (slash <= 0 || slash === rel.length - 1) continue;
          yield { container: rel.slice(0, slash), name: temporaryName(rel.slice(slash + 1), u.UploadId!), size: 0, modified: u.Initiated ?? new Date(0) };
        }
        if (!page.IsTruncated || (page.NextKeyMarker === undefined && page.NextUploadIdMarker === undefined)) return;
        keyMarker = page.NextKeyMarker;
        uploadMarker = page.NextUploadIdMarker;
      }
    } catch (error) {
      this.fail('list the uploads in', undefined, undefined, error, signal);
    }
  }

  async delete(container: string, name: string, options: StoreCallOptions = {}): Promise<boolean> {
    checkObjectPath(this.location, container, name);
    // S3's DELETE answers the same whether the key was there or not: ask first.
    if (!(await this.exists(container, name, options))) return false;
    try {
      await this.send(new DeleteObjectCommand({ Bucket: this.bucket, Key: this.key(container, name) }), options.signal);
      return true;
    } catch (error) {
      this.fail('delete', container, name, error, options.signal);
    }
  }

  async exists(container: string, name: string, options: StoreCallOptions = {}): Promise<boolean> {
    checkObjectPath(this.location, container, name);
    try {
      await this.send(new HeadObjectCommand({ Bucket: this.bucket, Key: this.key(container, name) }), options.signal);
      return true;
    } catch (error) {
      const e = error as SdkError;
      if (e.name === 'NotFound' || e.name === 'NoSuchKey' || (e.$metadata?.httpStatusCode === 404 && e.name !== 'NoSuchBucket')) return false;
      this.fail('look up', container, name, error, options.signal);
    }
  }

  async *listContainers(options: StoreCallOptions = {}): AsyncIterable<string> {
    const seen = new Set<string>();
    for await (const o of this.listAll(options)) {
      if (!seen.has(o.container)) { seen.add(o.container); yield o.container; }
    }
    for await (const o of this.listAllTemporary(options)) {
      if (!seen.has(o.container)) { seen.add(o.container); yield o.container; }
    }
  }

  async listTemporary(container: string, options: StoreCallOptions = {}): Promise<ObjectInfo[]> {
    checkObjectPath(this.location, container);
    const out: ObjectInfo[] = [];
    for await (const { container: c, ...info } of this.uploads(this.key(container, ''), options.signal)) {
      if (c === container) out.push(info);
    }
    return out;
  }

  async deleteTemporary(container: string, name: string, options: StoreCallOptions = {}): Promise<void> {
    checkObjectPath(this.location, container);
    const parsed = parseTemporaryName(name);
    if (!parsed) throw new StoreError(`"${name}" in ${this.location}/${container} is not a temporary object`);
    checkObjectPath(this.location, container, parsed.name);
    try {
      await this.send(new AbortMultipartUploadCommand({ Bucket: this.bucket, Key: this.key(container, parsed.name), UploadId: parsed.uploadId }), options.signal);
    } catch (error) {
      if ((error as SdkError).name === 'NoSuchUpload') return;
      this.fail('delete', container, name, error, options.signal);
    }
  }

  /** A key at the prefix's root (`<prefix>/<name>`): no container, so listAll, the catalog and gc never see it. */
  async getRoot(name: string, options: StoreCallOptions = {}): Promise<Buffer | undefined> {
    checkObjectPath(this.location, '.root', name);
    try {
      const out = await this.send<{ Body?: { transformToByteArray(): Promise<Uint8Array> } }>(
        new GetObjectCommand({ Bucket: this.bucket, Key: `${this.root}${name}` }), options.signal);
      return Buffer.from(await out.Body!.transformToByteArray());
    } catch (error) {
      try {
        this.fail('read', '.', name, error, options.signal);
      } catch (failure) {
        if (failure instanceof ObjectNotFoundError) return undefined;
        throw failure;
      }
    }
  }

  /** `exclusive` asks first (S3 has no portable create-if-absent): two creators at one instant may both write. */
  async putRoot(name: string, data: Uint8Array, options: StoreCallOptions & { exclusive?: boolean } = {}): Promise<boolean> {
    checkObjectPath(this.location, '.root', name);
    if (options.exclusive && (await this.getRoot(name, options)) !== undefined) return false;
    try {
      await this.putOne(`${this.root}${name}`, data, options.signal);
      return true;
    } catch (error) {
      this.fail('write', '.', name, error, options.signal);
    }
  }

  async listEverything(limit: number, options: StoreCallOptions = {}): Promise<string[]> {
    const out: string[] = [];
    try {
      for await (const page of this.pages(this.root, undefined, options.signal)) {
        for (const o of page) {
          if (out.length >= limit) return out;
          out.push(o.Key!.slice(this.root.length));
        }
      }
    } catch (error) {
      this.fail('list', undefined, undefined, error, options.signal);
    }
    return out;
  }

  /** Closes the connections (the process can exit at once). */
  destroy(): void {
    this.client.destroy();
  }
}
