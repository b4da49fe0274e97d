// Which paths a repository holds (what `repo init` adopts and gc may touch), and markers of other versions.
import { isRepositoryPath, parseMarker, newMarker, serializeMarker } from '../../../src/repository/marker.js';
import { ConflictError, IntegrityError } from '../../../src/util/errors.js';

const id = '0123abcd-1111-2222-3333-444455556666';

test('posix and s3 layouts: backup objects, leases, temporaries and the marker are the repository; nothing else', () => {
  const c = `01/23/${id}`;
  for (const name of [`volume_v1_20260101000000_backup_${id}-00001`, `volume_v1_20260101000000_backup_${id}_metadata`, `volume_v1_20260101000000_backup_${id}_sha256file`, `.volume_v1_20260101000000_backup_${id}-00002.0123456789ab.tmp`]) {
    expect(isRepositoryPath(`${c}/${name}`, 'posix')).toBe(true);
  }
  expect(isRepositoryPath('fleece-repository.json', 'posix')).toBe(true);
  expect(isRepositoryPath('photos/2023/beach.jpg', 'posix')).toBe(false);
  expect(isRepositoryPath('docs/readme.md', 'posix')).toBe(false);
  expect(isRepositoryPath(`${c}/readme.md`, 'posix')).toBe(false);
  expect(isRepositoryPath(`99/23/${id}/volume_v1_20260101000000_backup_${id}-00001`, 'posix')).toBe(false); // wrong container
  expect(isRepositoryPath(`${c}/volume_v1_20260101000000_backup_ffffffff-00001`, 'posix')).toBe(false); // another backup's name
  expect(isRepositoryPath(`volume_v1/20260101000000/az_nova_backup_${id}-00001`, 's3')).toBe(true);
  expect(isRepositoryPath(`volume_v1/20260101000000/fleece_lease_${id}`, 's3')).toBe(true);
  expect(isRepositoryPath('volume_v1/2026/az_nova_backup_x', 's3')).toBe(false);
  expect(isRepositoryPath('notes.txt', 's3')).toBe(false);
});

test('a marker round-trips; a newer version and a damaged one are refused clearly', () => {
  const m = newMarker('s3', null, true);
  expect(parseMarker(serializeMarker(m), 'x')).toEqual(m);
  expect(() => parseMarker(Buffer.from(JSON.stringify({ ...m, version: 2 })), '/r/fleece-repository.json')).toThrow(ConflictError);
  expect(() => parseMarker(Buffer.from('{'), '/r/fleece-repository.json')).toThrow(IntegrityError);
  expect(() => parseMarker(Buffer.from('{"format":"restic"}'), '/r/fleece-repository.json')).toThrow(/is not a fleece repository marker/);
});

test("what a fleece keeps beside a backup's objects (fleece_… named by its id) stays visible to gc", () => {
  expect(isRepositoryPath(`01/23/${id}/fleece_lease_${id}`, 'posix')).toBe(true);
  expect(isRepositoryPath(`01/23/${id}/fleece_lease_${id}.json`, 'posix')).toBe(true);
  expect(isRepositoryPath(`01/23/${id}/fleece_notes`, 'posix')).toBe(false);
  expect(isRepositoryPath('volume_v1/20260101000000/fleece_lease_x', 's3')).toBe(true);
});
