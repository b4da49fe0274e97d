// Encryption at rest on a directory and on a real S3 (Swift): full + incremental round trips byte-identical, `list`
// without the key, and a wrong key, a flipped bit and two swapped objects each a clear error naming the object.
import { jest } from '@jest/globals';
import { createHash, randomUUID } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { makeTempDir, removeTempDir } from '../../harness/temp-dir.js';
import { createBucket, sharedSwift, swiftAvailability, type SwiftHarness } from '../../harness/swift.js';
import { openRepository, type Repository, type RepositoryOptions } from '../../../src/repository/repository.js';
import { S3ObjectStore } from '../../../src/repository/store/s3-store.js';
import { createSparseFileSink } from '../../../src/restore/file-sink.js';
import { restoreBackup } from '../../../src/restore/restore.js';
import { consolidateBackup } from '../../../src/repository/consolidate.js';
import { generateKeyFile, initRepository } from '../../../src/app/repo-init.js';
import { IntegrityError, InvalidInputError } from '../../../src/util/errors.js';
import type { KeySourceSpec } from '../../../src/repository/crypto/keys.js';

const MiB = 1024 * 1024;
const SIZE = 6 * MiB;
const BUCKET = 'fleece-enc';
const FAST_SCRYPT = { N: 2 ** 14, r: 8, p: 1 };
const availability = swiftAvailability();

/** Data, zeros and holes at known places, the same for a seed. */
function diskImage(seed: number): Buffer {
  const disk = Buffer.alloc(SIZE);
  for (let offset = 0; offset < SIZE; offset += MiB) {
    if ((offset / MiB + seed) % 3 === 2) continue;
    const piece = createHash('sha256').update(`${seed}:${offset}`).digest();
    for (let i = 0; i < MiB / 2; i += 32) piece.copy(disk, offset + i);
  }
  return disk;
}

async function backUp(repo: Repository, disk: Buffer, parent?: { id: string; previous: Buffer }): Promise<string> {
  const w = await repo.startBackup({
    // the incremental stored as read (codec none): the writer's md5 of the data must not reach S3 as the sealed object's
    volumeId: 'vol-enc', size: SIZE, compression: parent ? 'none' : 'zstd', workers: 1, chunkSize: MiB,
    ...(parent ? { parent: parent.id, mode: 'changed-extents' as const } : {}),
  });
  try {
    for (let offset = 0; offset < SIZE; offset += MiB) {
      const data = disk.subarray(offset, offset + MiB);
      if (parent && data.equals(parent.previous.subarray(offset, offset + MiB))) continue;
      if (data.every((b) => b === 0)) { if (parent) await w.write({ offset, length: MiB, zero: true }); continue; }
      await w.write({ offset, length: data.length, data });
    }
    return (await w.finish()).backupId;
  } catch (error) {
    await w.abort(error);
    throw error;
  }
}

async function restoreBytes(repo: Repository, backupId: string, dir: string): Promise<Buffer> {
  const out = join(dir, `${backupId}-${randomUUID()}.raw`);
  const sink = await createSparseFileSink(out, SIZE);
  try {
    await restoreBackup(repo, backupId, sink, { workers: 1 });
  } finally {
    await sink.close();
  }
  return readFile(out);
}

interface Place {
  name: string;
  location: (dir: string) => string;
  options: () => RepositoryOptions;
  /** Reads and replaces a stored object's bytes under the repository (what an attacker with the storage can do). */
  raw: (location: string) => { get(container: string, name: string): Promise<Buffer>; put(container: string, name: string, data: Buffer): Promise<void> };
}

let h: SwiftHarness | undefined;
const s3Stores: S3ObjectStore[] = [];
const places: Place[] = [
  {
    name: 'a directory',
    location: (dir) => join(dir, 'repo'),
    options: () => ({}),
    raw: (location) => ({
      get: (c, n) => readFile(join(location, c, n)),
      put: (c, n, data) => writeFile(join(location, c, n), data),
    }),
  },
  ...(availability.ok ? [{
    name: 'S3 (Swift)',
    location: () => `s3://${BUCKET}/enc-${randomUUID()}`,
    options: (): RepositoryOptions => ({ s3: { endpoint: h!.endpoint, credentials: { accessKeyId: h!.accessKeyId, secretAccessKey: h!.secretAccessKey } }, retry: { attempts: 3, baseDelayMs: 20, maxDelayMs: 100 } }),
    raw: (location: string) => {
      const store = new S3ObjectStore({ bucket: BUCKET, prefix: location.slice(`s3://${BUCKET}/`.length), endpoint: h!.endpoint, credentials: { accessKeyId: h!.accessKeyId, secretAccessKey: h!.secretAccessKey } });
      s3Stores.push(store);
      // the repository's s3-layout names are keys `<container>/<name>`: the store wants the base name
      const base = (n: string) => n.slice(n.lastIndexOf('/') + 1);
      return { get: (c: string, n: string) => store.get(c, base(n)), put: (c: string, n: string, data: Buffer) => store.put(c, base(n), data) };
    },
  }] : []),
];

jest.setTimeout(180_000);
let dir: string;
beforeAll(async () => {
  if (availability.ok) {
    h = await sharedSwift();
    await createBucket(h, BUCKET);
  }
});
beforeEach(async () => { dir = await makeTempDir('enc'); });
afterEach(async () => { await removeTempDir(dir); });
afterAll(() => { for (const s of s3Stores) s.destroy(); });

describe.each(places)('an encrypted repository on $name', (place) => {
  it('round trip full + incremental, list without the key, wrong key, a flipped bit, two swapped objects', async () => {
    const location = place.location(dir);
    const keyFile = join(dir, 'repo.key');
    await generateKeyFile(keyFile);
    const key: KeySourceSpec = { kind: 'key-file', path: keyFile };
    const init = await initRepository({ location, encrypt: true, key, repository: place.options() });
    expect(init.marker.encryption?.scheme).toBe('aes-256-gcm');

    const repo = await openRepository(location, { ...place.options(), key });
    const d0 = diskImage(1);
    const full = await backUp(repo, d0);
    const d1 = Buffer.from(d0);
    d1.fill(0x5a, 2 * MiB, 2 * MiB + 4096);
    d1.fill(0, 4 * MiB, 5 * MiB);
    const inc = await backUp(repo, d1, { id: full, previous: d0 });
    expect((await restoreBytes(repo, full, dir)).equals(d0)).toBe(true);
    expect((await restoreBytes(repo, inc, dir)).equals(d1)).toBe(true);
    // consolidate reads the chain and writes a synthetic full, both through the key
    const synthetic = await consolidateBackup(repo, inc, { workers: 1 });
    expect((await restoreBytes(repo, synthetic.backupId, dir)).equals(d1)).toBe(true);
    expect((await repo.load(synthetic.backupId)).metadata.extra_metadata?.encryption).toBeDefined();

    // _metadata is plaintext JSON with the scheme and key id; every data object is sealed (no plaintext stored)
    const { metadata, record } = await repo.load(full);
    expect(metadata.extra_metadata?.encryption).toEqual({ scheme: 'aes-256-gcm', key_id: init.marker.encryption!.key_id });
    const raw = place.raw(location);
    const first = metadata.objects[0]!;
    const stored = await raw.get(record.container, first.name);
    expect(stored.subarray(0, 4).toString()).toBe('FLE1');
    expect(stored.includes(d0.subarray(0, 32))).toBe(false);

    // list and load without any key
    const locked = await openRepository(location, place.options());
    expect((await locked.list()).map((r) => r.backupId).sort()).toEqual([full, inc, synthetic.backupId].sort());
    const noKey = await restoreBytes(locked, full, dir).catch((e: unknown) => e);
    expect(noKey).toBeInstanceOf(InvalidInputError);
    expect((noKey as Error).message).toMatch(/is encrypted \(key id [0-9a-f]{16}\)/);
    expect(await locked.verify(full).catch((e: unknown) => e)).toBeInstanceOf(InvalidInputError); // not "damaged"

    // another key file: refused at unlock, naming the key file
    const otherKey = join(dir, 'other.key');
    await generateKeyFile(otherKey);
    const wrong = await openRepository(location, { ...place.options(), key: { kind: 'key-file', path: otherKey } });
    const wrongError = await restoreBytes(wrong, full, dir).catch((e: unknown) => e);
    expect(wrongError).toBeInstanceOf(IntegrityError);
    expect((wrongError as Error).message).toContain(`the key file ${otherKey} does not open the repository`);

    // one flipped bit in one object: that object is named, nothing is written as data
    const flipped = Buffer.from(stored);
    flipped[40]! ^= 0x01;
    await raw.put(record.container, first.name, flipped);
    const flip = await restoreBytes(repo, full, dir).catch((e: unknown) => e);
    expect(flip).toBeInstanceOf(IntegrityError);
    expect((flip as Error).message).toContain(`object ${record.container}/${first.name} failed authentication`);
    const verified = await repo.verify(full);
    expect(verified.ok).toBe(false);
    await raw.put(record.container, first.name, stored);
    expect((await restoreBytes(repo, full, dir)).equals(d0)).toBe(true);

    // two objects swapped (each a valid sealed object, of the same backup): neither opens in the other's place
    const second = metadata.objects[1]!;
    const storedSecond = await raw.get(record.container, second.name);
    await raw.put(record.container, first.name, storedSecond);
    await raw.put(record.container, second.name, stored);
    const swapped = await restoreBytes(repo, full, dir).catch((e: unknown) => e);
    expect(swapped).toBeInstanceOf(IntegrityError);
    expect((swapped as Error).message).toMatch(new RegExp(`object ${record.container}/(${first.name}|${second.name}) failed authentication`));
    await raw.put(record.container, first.name, stored);
    await raw.put(record.container, second.name, storedSecond);
    expect((await repo.verify(inc, { deep: true })).ok).toBe(true);
  });
});

it('a passphrase through scrypt: its parameters recorded, the wrong passphrase refused', async () => {
  const location = join(dir, 'repo');
  const init = await initRepository({ location, encrypt: true, key: { kind: 'passphrase', passphrase: 'correct horse', from: 'test' }, scrypt: FAST_SCRYPT });
  expect(init.marker.encryption?.kdf).toMatchObject({ name: 'scrypt', N: FAST_SCRYPT.N, r: 8, p: 1 });
  const marker = JSON.parse(await readFile(join(location, 'fleece-repository.json'), 'utf8')) as { encryption: { wrapped_key: string } };
  expect(JSON.stringify(marker)).not.toContain('correct horse');
  const passFile = join(dir, 'pass');
  await writeFile(passFile, 'correct horse\n');
  const repo = await openRepository(location, { key: { kind: 'passphrase-file', path: passFile } });
  const d0 = diskImage(2);
  const id = await backUp(repo, d0);
  expect((await restoreBytes(repo, id, dir)).equals(d0)).toBe(true);
  const wrong = await openRepository(location, { key: { kind: 'passphrase', passphrase: 'wrong horse', from: 'FLEECE_PASSPHRASE' } });
  const error = await restoreBytes(wrong, id, dir).catch((e: unknown) => e);
  expect(error).toBeInstanceOf(IntegrityError);
  expect((error as Error).message).toContain('FLEECE_PASSPHRASE does not open the repository');
  const keyFileInstead = await openRepository(location, { key: { kind: 'key-file', path: passFile } });
  expect(String(await restoreBytes(keyFileInstead, id, dir).catch((e: unknown) => e))).toMatch(/encrypted with a passphrase, not a key file/);
});
