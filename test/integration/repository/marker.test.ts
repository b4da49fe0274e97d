// The repository marker on a directory and on a real S3 (Swift): a first backup writes it, a location holding other
// things is refused by backup, gc, delete and verify (and nothing of it is touched), an older fleece's repository is
// adopted by `repo init`, and gc never removes a file that is not named as the repository names its objects.
import { jest } from '@jest/globals';
import { randomUUID } from 'node:crypto';
import { mkdir, readFile, readdir, rm, stat, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { makeTempDir, removeTempDir } from '../../harness/temp-dir.js';
import { createBucket, sharedSwift, swiftAvailability, type SwiftHarness } from '../../harness/swift.js';
import { openRepository, type Repository, type RepositoryOptions } from '../../../src/repository/repository.js';
import { S3ObjectStore } from '../../../src/repository/store/s3-store.js';
import { initRepository } from '../../../src/app/repo-init.js';
import { ConflictError, InvalidInputError } from '../../../src/util/errors.js';

const MiB = 1024 * 1024;
const BUCKET = 'fleece-marker';
const availability = swiftAvailability();
const describeS3 = availability.ok ? describe : describe.skip;

async function backUp(repo: Repository): Promise<string> {
  const w = await repo.startBackup({ volumeId: 'vol-m', size: 2 * MiB, compression: 'zstd', workers: 1 });
  try {
    await w.write({ offset: 0, length: MiB, data: Buffer.alloc(MiB, 0x61) });
    return (await w.finish()).backupId;
  } catch (error) {
    await w.abort(error);
    throw error;
  }
}

async function oldFiles(root: string, paths: string[]): Promise<void> {
  const past = new Date(Date.now() - 7 * 24 * 3600 * 1000);
  for (const p of paths) {
    await mkdir(join(root, p, '..'), { recursive: true });
    await writeFile(join(root, p), `${p}\n`);
    await utimes(join(root, p), past, past);
  }
}

jest.setTimeout(120_000);
let dir: string;
beforeEach(async () => { dir = await makeTempDir('marker'); });
afterEach(async () => { await removeTempDir(dir); });

describe('the repository marker on a directory', () => {
  it('a directory of photos: gc, delete, verify and a backup refuse, naming it; nothing in it is touched', async () => {
    const photos = join(dir, 'photos-dir');
    await oldFiles(photos, ['photos/2023/beach.jpg', 'docs/readme.md']);
    const repo = await openRepository(photos);
    const gc = await repo.gc({ gracePeriodMs: 0 }).catch((e: unknown) => e);
    expect(gc).toBeInstanceOf(InvalidInputError);
    expect((gc as Error).message).toContain(`${photos} is not a fleece repository`);
    expect((gc as Error).message).toContain('docs/readme.md');
    expect(String(await repo.delete('0123abcd-0000-0000-0000-000000000000').catch((e: unknown) => e))).toContain('refusing to delete');
    expect(String(await repo.verify('0123abcd-0000-0000-0000-000000000000').catch((e: unknown) => e))).toContain('refusing to verify');
    const backup = await backUp(repo).catch((e: unknown) => e);
    expect(backup).toBeInstanceOf(ConflictError);
    expect((backup as Error).message).toContain('refusing to write a backup into it');
    expect(await initRepository({ location: photos }).catch((e: unknown) => e)).toBeInstanceOf(ConflictError);
    expect((await readdir(photos)).sort()).toEqual(['docs', 'photos']);
    expect(await readFile(join(photos, 'photos/2023/beach.jpg'), 'utf8')).toBe('photos/2023/beach.jpg\n');
  });

  it('a first backup writes the marker; an older repository is refused until `repo init` adopts it; gc spares stray files', async () => {
    const location = join(dir, 'repo');
    const repo = await openRepository(location);
    const id = await backUp(repo);
    const marker = JSON.parse(await readFile(join(location, 'fleece-repository.json'), 'utf8')) as Record<string, unknown>;
    expect(marker).toMatchObject({ format: 'fleece-repository', version: 1, layout: 'posix', encryption: null });
    expect((await repo.gc({ gracePeriodMs: 0 })).removed).toEqual([]);

    // as an older fleece left it: no marker
    await rm(join(location, 'fleece-repository.json'));
    const older = await openRepository(location);
    expect((await older.list()).map((r) => r.backupId)).toEqual([id]); // reading needs no marker (Cinder's directories)
    const refused = await older.gc({ gracePeriodMs: 0 }).catch((e: unknown) => e);
    expect((refused as Error).message).toContain('holds backups but no repository marker');
    expect((refused as { hint?: string }).hint).toBe(`run \`fleece repo init ${location}\` once to adopt it as a fleece repository`);
    const adopted = await initRepository({ location });
    expect(adopted.adopted).toBe(true);
    expect(await initRepository({ location }).catch((e: unknown) => e)).toBeInstanceOf(ConflictError);

    // stray files in the repository, old: gc removes only what the layout names (an unreferenced old data object)
    const { container, prefix } = (await older.list())[0]!;
    await oldFiles(location, ['notes.txt', `${container}/readme.md`, 'ab/cd/other.bin']);
    await oldFiles(location, [`${container}/${prefix}-00099`]);
    const repo2 = await openRepository(location);
    const report = await repo2.gc({ gracePeriodMs: 0 });
    expect(report.removed.map((r) => r.name)).toEqual([`${prefix}-00099`]);
    for (const p of ['notes.txt', `${container}/readme.md`, 'ab/cd/other.bin']) expect((await stat(join(location, p))).isFile()).toBe(true);
    expect((await repo2.verify(id)).ok).toBe(true);
  });
});

describeS3('the repository marker on S3 (Swift)', () => {
  let h: SwiftHarness;
  const raws: S3ObjectStore[] = [];
  const options = (): RepositoryOptions => ({
    s3: { endpoint: h.endpoint, credentials: { accessKeyId: h.accessKeyId, secretAccessKey: h.secretAccessKey } },
    retry: { attempts: 3, baseDelayMs: 20, maxDelayMs: 100 },
  });
  beforeAll(async () => {
    h = await sharedSwift();
    await createBucket(h, BUCKET);
  });
  afterAll(() => { for (const s of raws) s.destroy(); });

  it('a prefix holding other objects is refused; a first backup writes <prefix>/fleece-repository.json; adoption', async () => {
    const prefix = `m-${randomUUID()}`;
    const raw = new S3ObjectStore({ bucket: BUCKET, prefix, endpoint: h.endpoint, credentials: { accessKeyId: h.accessKeyId, secretAccessKey: h.secretAccessKey } });
    raws.push(raw);
    await raw.put('photos/2023', 'beach.jpg', Buffer.from('jpeg'));
    const foreign = await openRepository(`s3://${BUCKET}/${prefix}`, options());
    const gc = await foreign.gc({ gracePeriodMs: 0 }).catch((e: unknown) => e);
    expect((gc as Error).message).toContain(`s3://${BUCKET}/${prefix} is not a fleece repository`);
    expect((gc as Error).message).toContain('photos/2023/beach.jpg');
    expect(await backUp(foreign).catch((e: unknown) => e)).toBeInstanceOf(ConflictError);
    expect(await raw.exists('photos/2023', 'beach.jpg')).toBe(true);

    const location = `s3://${BUCKET}/${prefix}-repo`;
    const repo = await openRepository(location, options());
    const id = await backUp(repo);
    const rawRepo = new S3ObjectStore({ bucket: BUCKET, prefix: `${prefix}-repo`, endpoint: h.endpoint, credentials: { accessKeyId: h.accessKeyId, secretAccessKey: h.secretAccessKey } });
    raws.push(rawRepo);
    const marker = JSON.parse((await rawRepo.getRoot('fleece-repository.json'))!.toString()) as Record<string, unknown>;
    expect(marker).toMatchObject({ format: 'fleece-repository', layout: 's3', encryption: null });
    expect((await repo.gc({ gracePeriodMs: 0 })).removed).toEqual([]);
    expect((await repo.list()).map((r) => r.backupId)).toEqual([id]);

    // an older fleece's bucket prefix: no marker → refused with the hint, then adopted
    const { S3Client, DeleteObjectCommand } = await import('@aws-sdk/client-s3');
    const client = new S3Client({ endpoint: h.endpoint, region: h.region, forcePathStyle: true, credentials: { accessKeyId: h.accessKeyId, secretAccessKey: h.secretAccessKey } });
    await client.send(new DeleteObjectCommand({ Bucket: BUCKET, Key: `${prefix}-repo/fleece-repository.json` }));
    client.destroy();
    const older = await openRepository(location, options());
    expect(String(await older.delete(id).catch((e: unknown) => e))).toContain('holds backups but no repository marker');
    expect((await initRepository({ location, repository: options() })).adopted).toBe(true);
    expect((await (await openRepository(location, options())).delete(id)).deleted).toEqual([id]);
  });
});
