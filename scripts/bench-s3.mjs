// The S3 rows of `npm run bench`: fleece's backup to and restore from a real S3 server (Debian's Swift with s3api on
// loopback, the test harness's), next to the limit of that server as the AWS SDK itself sees it: PUTs and GETs of
// objects of fleece's S3 object size (16 MiB) with a Content-MD5, as many in flight as fleece uses at most, best of
// 1, 4 and 8 in flight. Ratios compare the bytes each moved per second (fleece: what it stored / fetched).
import { createHash, randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';

const MiB = 1024 * 1024;
export const S3_OBJECT_SIZE = 16 * MiB;
const BUCKET = 'fleece-bench';

/** Starts (or joins) the harness's Swift; `{ ok: false, why }` where Swift is not installed. */
export async function startS3(dist) {
  const swift = await import(pathToFileURL(join(dist, 'test/harness/swift.js')).href);
  const availability = swift.swiftAvailability();
  if (!availability.ok) return { ok: false, why: availability.why };
  const h = await swift.sharedSwift();
  await swift.createBucket(h, BUCKET);
  return { ok: true, h, bucket: BUCKET, stop: () => swift.stopSharedSwift() };
}

/** The environment a fleece process needs to reach the server (credentials, region, path-style endpoint). */
export function s3Env(s3) {
  return {
    AWS_ACCESS_KEY_ID: s3.h.accessKeyId, AWS_SECRET_ACCESS_KEY: s3.h.secretAccessKey, AWS_REGION: s3.h.region,
    AWS_ENDPOINT_URL_S3: s3.h.endpoint, AWS_EC2_METADATA_DISABLED: 'true',
  };
}

/** SDK PUT and GET throughput (MiB/s) of `bytes` in 16 MiB objects, best over the in-flight counts. */
export async function sdkLimit(s3, bytes, log) {
  const { S3Client, PutObjectCommand, GetObjectCommand, DeleteObjectCommand } = await import('@aws-sdk/client-s3');
  const client = new S3Client({
    region: s3.h.region, endpoint: s3.h.endpoint, forcePathStyle: true,
    credentials: { accessKeyId: s3.h.accessKeyId, secretAccessKey: s3.h.secretAccessKey },
    requestChecksumCalculation: 'WHEN_REQUIRED', responseChecksumValidation: 'WHEN_REQUIRED',
  });
  const count = Math.max(4, Math.ceil(bytes / S3_OBJECT_SIZE));
  const body = randomBytes(S3_OBJECT_SIZE);
  const md5 = createHash('md5').update(body).digest('base64');
  const keys = Array.from({ length: count }, (_, i) => `sdk-limit/${String(i).padStart(5, '0')}`);
  const pool = async (inFlight, each) => {
    let next = 0;
    const started = performance.now();
    await Promise.all(Array.from({ length: inFlight }, async () => {
      while (next < keys.length) await each(keys[next++]);
    }));
    return (count * S3_OBJECT_SIZE) / MiB / ((performance.now() - started) / 1000);
  };
  const put = {};
  const get = {};
  try {
    for (const inFlight of [1, 4, 8]) {
      put[inFlight] = await pool(inFlight, (Key) => client.send(new PutObjectCommand({
        Bucket: s3.bucket, Key, Body: body, ContentLength: body.length, ContentMD5: md5,
      })));
      get[inFlight] = await pool(inFlight, async (Key) => {
        const r = await client.send(new GetObjectCommand({ Bucket: s3.bucket, Key }));
        for await (const _ of r.Body) { /* drain */ }
      });
      log(`  SDK, ${inFlight} in flight: PUT ${put[inFlight].toFixed(0)} MiB/s, GET ${get[inFlight].toFixed(0)} MiB/s`
        + ` (${count} objects of 16 MiB)`);
    }
  } finally {
    for (const Key of keys) await client.send(new DeleteObjectCommand({ Bucket: s3.bucket, Key })).catch(() => undefined);
    client.destroy();
  }
  const best = (rates) => Object.entries(rates).reduce((a, b) => (b[1] > a[1] ? b : a));
  const [putFlight, putRate] = best(put);
  const [getFlight, getRate] = best(get);
  return { put: putRate, get: getRate, putFlight: Number(putFlight), getFlight: Number(getFlight), objects: count };
}
