// FileSource on a real sparse file: holes via SEEK_DATA/SEEK_HOLE, exact reads.
import { randomBytes } from 'node:crypto';
import { open } from 'node:fs/promises';
import { join } from 'node:path';
import { FileSource } from '../../../src/nbd/file-source.js';
import { readExtents } from '../../../src/nbd/read-extents.js';
import { dataExtents } from '../../../src/nbd/context-extents.js';
import { NotFoundError } from '../../../src/util/errors.js';
import { makeTempDir, removeTempDir } from '../../harness/temp-dir.js';

let dir: string;
beforeAll(async () => {
  dir = await makeTempDir('file-source');
});
afterAll(async () => {
  await removeTempDir(dir);
});

test('maps data and holes of a sparse file and reads its bytes', async () => {
  const path = join(dir, 'sparse.raw');
  const size = 16 << 20;
  const data = randomBytes(1 << 20);
  const file = await open(path, 'w');
  await file.truncate(size);
  await file.write(data, 0, data.length, 4 << 20);
  await file.close();
  const source = await FileSource.open(path);
  try {
    expect(source.size).toBe(size);
    const extents = [];
    for await (const e of source.extents('base:allocation')) extents.push(e);
    expect(extents.reduce((n, e) => n + e.length, 0)).toBe(size);
    const dataOnly = [];
    for await (const e of dataExtents(source)) dataOnly.push({ offset: e.offset, length: e.length });
    expect(dataOnly).toEqual([{ offset: 4 << 20, length: 1 << 20 }]);
    const pieces: Buffer[] = [];
    for await (const p of readExtents(source, dataOnly, { maxRequest: 256 * 1024 })) pieces.push(Buffer.from(p.data));
    expect(Buffer.concat(pieces).equals(data)).toBe(true);
  } finally {
    await source.close();
    await source.close();
  }
  await expect(FileSource.open(join(dir, 'missing.raw'))).rejects.toBeInstanceOf(NotFoundError);
});
