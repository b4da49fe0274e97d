// The S3 repository on a real Swift (s3api): clear errors, Content-MD5 checked by the server, a server that goes away
// mid-backup, gc against a live lease, and two processes writing into one bucket at once.
import { jest } from '@jest/globals';
import { spawn } from 'node:child_process';
import { createHash, randomUUID } from 'node:crypto';
import { once } from 'node:events';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { makeTempDir, removeTempDir } from '../../harness/temp-dir.js';
import { createBucket, privateProxy, sharedSwift, swiftAvailability, type SwiftHarness } from '../../harness/swift.js';
import { openRepository, type Repository, type RepositoryOptions } from '../../../src/repository/repository.js';
import { S3ObjectStore, S3StoreError } from '../../../src/repository/store/s3-store.js';
import { RetryStore } from '../../../src/repository/store/retry-store.js';
import { KeyNamedStore } from '../../../src/repository/store/key-named-store.js';
import { createSparseFileSink } from '../../../src/restore/file-sink.js';
import { restoreBackup } from '../../../src/restore/restore.js';
import { transpileSources } from './transpile.js';
import { injectFault } from '../../faults/fault-count.js';

const MiB = 1024 * 1024;
const BUCKET = 'fleece-it';
const FAST_RETRY = { attempts: 3, baseDelayMs: 20, maxDelayMs: 100 };
const availability = swiftAvailability();
const describeS3 = availability.ok ? describe : describe.skip;
const title = availability.ok ? 'S3 repository on Swift' : `S3 repository on Swift (skipped: ${availability.why})`;

/** A disk image with data, zeros and holes at known places, the same for a seed. */
function diskImage(size: number, seed: number): Buffer {
  const disk = Buffer.alloc(size);
  for (let offset = 0; offset < size; offset += 4 * MiB) {
    if ((offset / (4 * MiB) + seed) % 3 === 2) continue; // a hole every third 4 MiB
    const piece = createHash('sha256').update(`${seed}:${offset}`).digest();
    for (let i = 0; i < 3 * MiB; i += 32) piece.copy(disk, offset + i);
  }
  return disk;
}

/** Writes `disk` as a full backup in 1 MiB extents (all-zero extents skipped, as the NBD reader does). */
async function backUp(repo: Repository, volumeId: string, disk: Buffer, options: { signal?: AbortSignal; between?: (i: number) => Promise<void> } = {}): Promise<string> {
  const w = await repo.startBackup({ volumeId, size: disk.length, compression: 'zstd', workers: 1, ...(options.signal ? { signal: options.signal } : {}) });
  try {
    for (let offset = 0, i = 0; offset < disk.length; offset += MiB, i++) {
      await options.between?.(i);
      const data = disk.subarray(offset, offset + MiB);
      if (data.every((b) => b === 0)) continue;
      await w.write({ offset, length: data.length, data });
    }
    return (await w.finish()).backupId;
  } catch (error) {
    await w.abort(error);
    throw error;
  }
}

async function restoreBytes(repo: Repository, backupId: string, size: number, dir: string): Promise<Buffer> {
  const out = join(dir, `${backupId}.raw`);
  const sink = await createSparseFileSink(out, size);
  try {
    await restoreBackup(repo, backupId, sink, { workers: 1 });
  } finally {
    await sink.close();
  }
  return readFile(out);
}

describeS3(title, () => {
  jest.setTimeout(120_000); // Swift shares 2 cores with the rest of the suite
  let h: SwiftHarness;
  let dir: string;
  const opened: Repository[] = [];
  const raws: S3ObjectStore[] = [];
  const s3Options = (extra: Partial<NonNullable<RepositoryOptions['s3']>> = {}): RepositoryOptions => ({
    s3: { endpoint: h.endpoint, credentials: { accessKeyId: h.accessKeyId, secretAccessKey: h.secretAccessKey }, ...extra },
    retry: FAST_RETRY,
  });
  const open = async (location: string, options: RepositoryOptions = s3Options()) => {
    const repo = await openRepository(location, options);
    opened.push(repo);
    return repo;
  };
  const raw = (prefix: string, extra: Partial<ConstructorParameters<typeof S3ObjectStore>[0]> = {}) => {
    const store = new S3ObjectStore({ bucket: BUCKET, prefix, endpoint: h.endpoint, credentials: { accessKeyId: h.accessKeyId, secretAccessKey: h.secretAccessKey }, ...extra });
    raws.push(store);
    return store;
  };

  beforeAll(async () => {
    h = await sharedSwift();
    await createBucket(h, BUCKET);
  });
  beforeEach(async () => { dir = await makeTempDir('s3'); });
  afterEach(async () => { await removeTempDir(dir); });
  afterAll(() => { for (const s of raws) s.destroy(); });

  it('names the bucket, the endpoint and the fix: wrong secret, unknown key, no bucket, no credentials, no server', async () => {
    const secret = await openRepository(`s3://${BUCKET}`, { ...s3Options(), s3: { endpoint: h.endpoint, credentials: { accessKeyId: h.accessKeyId, secretAccessKey: 'wrong' } } }).catch((e: unknown) => e);
    expect(secret).toBeInstanceOf(S3StoreError);
    expect((secret as Error).message).toMatch(new RegExp(`s3://${BUCKET} at ${h.endpoint}.*secret key does not match the access key "test:tester".*AWS_SECRET_ACCESS_KEY`));
    expect((secret as S3StoreError).transient).toBe(false);

    const key = await openRepository(`s3://${BUCKET}`, { ...s3Options(), s3: { endpoint: h.endpoint, credentials: { accessKeyId: 'nobody:none', secretAccessKey: 'x' } } }).catch((e: unknown) => e);
    expect((key as Error).message).toMatch(/access key "nobody:none"|access denied/);

    const bucket = await open('s3://fleece-no-such-bucket/x').catch((e: unknown) => e);
    expect(bucket).toBeInstanceOf(S3StoreError);
    expect((bucket as Error).message).toMatch(new RegExp(`the bucket "fleece-no-such-bucket" does not exist.*aws s3 mb s3://fleece-no-such-bucket --endpoint-url ${h.endpoint}`));

    const saved = { ...process.env };
    try {
      for (const k of ['AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY', 'AWS_SESSION_TOKEN', 'AWS_PROFILE', 'AWS_WEB_IDENTITY_TOKEN_FILE', 'AWS_CONTAINER_CREDENTIALS_FULL_URI', 'AWS_CONTAINER_CREDENTIALS_RELATIVE_URI']) delete process.env[k];
      process.env.AWS_EC2_METADATA_DISABLED = 'true';
      process.env.AWS_SHARED_CREDENTIALS_FILE = join(dir, 'none');
      process.env.AWS_CONFIG_FILE = join(dir, 'none');
      const none = await openRepository(`s3://${BUCKET}`, { s3: { endpoint: h.endpoint }, retry: FAST_RETRY }).catch((e: unknown) => e);
      expect((none as Error).message).toMatch(/no S3 credentials were found.*AWS_ACCESS_KEY_ID/);
    } finally {
      process.env = saved;
    }

    const started = Date.now();
    const down = await open(`s3://${BUCKET}`, { ...s3Options(), s3: { ...s3Options().s3, endpoint: 'http://127.0.0.1:1' } }).catch((e: unknown) => e);
    expect((down as Error).message).toMatch(/cannot reach the S3 endpoint http:\/\/127\.0\.0\.1:1 \(ECONNREFUSED\).*server is running/);
    expect((down as S3StoreError).transient).toBe(true); // retried (FAST_RETRY) before giving up
    expect(Date.now() - started).toBeLessThan(5000);
  });

  it('sends a Content-MD5 the server checks: a wrong one is refused (BadDigest), not retried, and stores nothing', async () => {
    const store = raw(`md5-${randomUUID()}`);
    let attempts = 0;
    store.client.middlewareStack.add((next) => async (args) => {
      attempts += 1;
      const request = args.request as { headers: Record<string, string> };
      if (request.headers['content-md5']) request.headers['content-md5'] = createHash('md5').update('other bytes').digest('base64');
      return next(args);
    }, { step: 'build', name: 'corruptMd5' });
    const error = await new RetryStore(store, FAST_RETRY).put('c', 'o-00001', Buffer.alloc(1000, 1)).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(S3StoreError);
    expect(error).toMatchObject({ s3Code: 'BadDigest', transient: false });
    expect((error as Error).message).toMatch(/c\/o-00001.*do not match their Content-MD5/);
    expect(attempts).toBe(1);
    expect(await store.exists('c', 'o-00001')).toBe(false);
  });

  it('a server that goes away mid-backup: a clear error, no visible backup, and the next backup works once it is back', async () => {
    const proxy = await privateProxy(h);
    try {
      const prefix = `outage-${randomUUID()}`;
      const repo = await open(`s3://${BUCKET}/${prefix}`, s3Options({ endpoint: proxy.endpoint }));
      const disk = diskImage(48 * MiB, 1);
      let t0 = Date.now();
      const fault = injectFault('S3 server stopped mid-backup (repository API)');
      const error = await backUp(repo, 'vol-outage', disk, { between: async (i) => { if (i === 24) { await proxy.stop(); t0 = Date.now(); } } }).catch((e: unknown) => e);
      expect(Date.now() - t0).toBeLessThan(5000); // a few quick retries, then the error
      expect(error).toBeInstanceOf(S3StoreError);
      expect((error as Error).message).toMatch(new RegExp(`s3://${BUCKET}/${prefix} at ${proxy.endpoint}: cannot reach the S3 endpoint`));
      const viaMain = await open(`s3://${BUCKET}/${prefix}`);
      expect(await viaMain.list()).toEqual([]);
      await proxy.start();
      const id = await backUp(repo, 'vol-outage', disk);
      expect((await viaMain.list()).map((r) => r.backupId)).toEqual([id]);
      expect((await restoreBytes(viaMain, id, disk.length, dir)).equals(disk)).toBe(true);
      // the interrupted backup's objects are garbage (no manifest lists them) once its lease, left behind, is stale
      expect((await viaMain.gc({ gracePeriodMs: 0, now: new Date(Date.now() + 1000) })).removed).toEqual([]);
      const gc = await viaMain.gc({ gracePeriodMs: 0, now: new Date(Date.now() + 16 * 60_000) });
      expect(gc.removed.length).toBeGreaterThan(0);
      expect(gc.removed.every((o) => !o.name.includes(id))).toBe(true);
      expect((await viaMain.verify(id)).problems).toEqual([]);
      fault.held();
    } finally {
      await proxy.stop();
    }
  });

  it('an aborted backup stops at once, leaves no backup and no lease', async () => {
    const prefix = `abort-${randomUUID()}`;
    const repo = await open(`s3://${BUCKET}/${prefix}`);
    const ac = new AbortController();
    const error = await backUp(repo, 'vol-abort', diskImage(32 * MiB, 2), { signal: ac.signal, between: async (i) => { if (i === 8) ac.abort(); } }).catch((e: unknown) => e);
    expect((error as Error).name).toBe('AbortedError');
    expect(await repo.list()).toEqual([]);
    const left: string[] = [];
    for await (const o of raw(prefix).listAll()) left.push(o.name);
    expect(left.filter((n) => n.includes('fleece_lease_') || n.endsWith('_metadata'))).toEqual([]);
  });

  it('gc leaves a backup being written alone (its lease), removes a stale one, and never touches what is not its own', async () => {
    const prefix = `gc-${randomUUID()}`;
    const location = `s3://${BUCKET}/${prefix}`;
    const writerRepo = await open(location, { ...s3Options(), lease: { refreshMs: 100, ttlMs: 60_000 } });
    const otherHost = await open(location);
    const disk = diskImage(32 * MiB, 3);
    const w = await writerRepo.startBackup({ volumeId: 'vol-gc', size: disk.length, compression: 'none', workers: 1 });
    for (let offset = 0; offset < 20 * MiB; offset += MiB) await w.write({ offset, length: MiB, data: disk.subarray(offset, offset + MiB) });
    const store = new KeyNamedStore(raw(prefix));
    const listed = async () => { const names: string[] = []; for await (const o of store.listAll!()) names.push(o.name); return names.sort(); };
    for (let i = 0; i < 100 && !(await listed()).some((n) => /-\d{5}$/.test(n)); i++) await new Promise((r) => setTimeout(r, 50));
    const fault = injectFault('gc racing a backup being written to S3 (lease)');
    const during = await otherHost.gc({ gracePeriodMs: 0, now: new Date(Date.now() + 1000) });
    expect(during.removed).toEqual([]);
    expect(during.leased).toEqual([{ container: w.container, backupId: w.backupId }]);
    for (let offset = 20 * MiB; offset < disk.length; offset += MiB) await w.write({ offset, length: MiB, data: disk.subarray(offset, offset + MiB) });
    const { backupId } = await w.finish();
    expect((await listed()).filter((n) => n.includes('fleece_lease_'))).toEqual([]);
    expect((await otherHost.gc({ gracePeriodMs: 0, now: new Date(Date.now() + 1000) })).removed).toEqual([]);

    // a writer that died: its objects and its lease, as it left them; and things that are not backups
    const dead = randomUUID();
    const c = 'volume_vol-dead/20260101000000';
    await store.put(c, `${c}/az_nova_backup_${dead}-00001`, Buffer.from('orphan'));
    await store.put(c, `${c}/fleece_lease_${dead}`, Buffer.from('{}'));
    await store.put(c, `${c}/notes.txt`, Buffer.from('not a backup object'));
    await store.put('misc', 'misc/readme-00001', Buffer.from('not a backup container'));
    const outside = raw(`${prefix}-other`);
    await outside.put(c, `az_nova_backup_${dead}-00001`, Buffer.from('another repository'));
    const soon = await otherHost.gc({ gracePeriodMs: 0, now: new Date(Date.now() + 1000) });
    expect(soon.removed).toEqual([]);
    expect(soon.leased).toEqual([{ container: c, backupId: dead }]);
    const later = await otherHost.gc({ gracePeriodMs: 0, now: new Date(Date.now() + 16 * 60_000) });
    expect(later.removed.map((o) => o.name).sort()).toEqual([`${c}/az_nova_backup_${dead}-00001`, `${c}/fleece_lease_${dead}`]);
    expect(await store.exists(c, `${c}/notes.txt`)).toBe(true);
    expect(await store.exists('misc', 'misc/readme-00001')).toBe(true);
    expect(await outside.exists(c, `az_nova_backup_${dead}-00001`)).toBe(true);
    expect((await otherHost.list()).map((r) => r.backupId)).toEqual([backupId]);
    expect((await restoreBytes(otherHost, backupId, disk.length, dir)).equals(disk)).toBe(true);
    fault.held();
  });

  it('two processes back up different VMs into one bucket at once; both list (across list pages) and restore', async () => {
    const src = await transpileSources(join(dir, 'js'));
    const prefix = `multi-${randomUUID()}`;
    const location = `s3://${BUCKET}/${prefix}`;
    const child = `
      import { createHash } from 'node:crypto';
      import { openRepository } from '${src}/repository/repository.js';
      const [location, endpoint, volumeId, seed] = process.argv.slice(2);
      const MiB = 1024 * 1024;
      ${diskImage.toString()}
      const repo = await openRepository(location, { s3: { endpoint } });
      const disk = diskImage(24 * MiB, Number(seed));
      const w = await repo.startBackup({ volumeId, size: disk.length, vm: volumeId, workers: 1 });
      for (let offset = 0; offset < disk.length; offset += MiB) {
        const data = disk.subarray(offset, offset + MiB);
        if (!data.every((b) => b === 0)) await w.write({ offset, length: MiB, data });
      }
      console.log(JSON.stringify(await w.finish()));
    `;
    await writeFile(join(dir, 'js', 'child.mjs'), child);
    const env = { ...process.env, AWS_ACCESS_KEY_ID: h.accessKeyId, AWS_SECRET_ACCESS_KEY: h.secretAccessKey, AWS_REGION: h.region };
    const run = (volumeId: string, seed: number) => {
      const p = spawn(process.execPath, [join(dir, 'js', 'child.mjs'), location, h.endpoint, volumeId, String(seed)], { env, stdio: ['ignore', 'pipe', 'pipe'] });
      let out = '';
      let err = '';
      p.stdout.on('data', (d: Buffer) => (out += d.toString()));
      p.stderr.on('data', (d: Buffer) => (err += d.toString()));
      return once(p, 'exit').then(([code]) => ({ code: code as number, out, err }));
    };
    const [a, b] = await Promise.all([run('vm-a-vda', 4), run('vm-b-vda', 5)]);
    expect([a.code, a.err, b.code, b.err]).toEqual([0, '', 0, '']);
    const ids = [a, b].map((r) => (JSON.parse(r.out) as { backupId: string }).backupId);
    const repo = await open(location, s3Options({ pageSize: 2 }));
    const records = await repo.list();
    expect(records.map((r) => r.backupId).sort()).toEqual([...ids].sort());
    expect(records.map((r) => r.container).every((c) => /^volume_vm-[ab]-vda\/\d{14}$/.test(c))).toBe(true);
    expect((await restoreBytes(repo, ids[0]!, 24 * MiB, dir)).equals(diskImage(24 * MiB, 4))).toBe(true);
    expect((await restoreBytes(repo, ids[1]!, 24 * MiB, dir)).equals(diskImage(24 * MiB, 5))).toBe(true);
  });
});
