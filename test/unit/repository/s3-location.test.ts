// s3://BUCKET[/PREFIX] parsing, and the app's --repo handling of it.
import { formatS3Location, isS3Location, parseS3Location } from '../../../src/repository/store/s3-location.js';
import { InvalidInputError } from '../../../src/util/errors.js';
import { isAcceptedRepoLocation, repoLocation } from '../../../src/app/repo-location.js';
import { checkBackupRequest } from '../../../src/app/backup-request.js';

describe('s3 locations', () => {
  it.each([
    ['s3://volumebackups', { bucket: 'volumebackups', prefix: '' }],
    ['s3://volumebackups/', { bucket: 'volumebackups', prefix: '' }],
    ['s3://my.bucket-1/fleece', { bucket: 'my.bucket-1', prefix: 'fleece' }],
    ['s3://b12/a/b/c/', { bucket: 'b12', prefix: 'a/b/c' }],
    ['S3://Bucket_X/p', { bucket: 'Bucket_X', prefix: 'p' }],
  ])('%s', (text, expected) => {
    expect(isS3Location(text)).toBe(true);
    expect(parseS3Location(text)).toEqual(expected);
    expect(parseS3Location(formatS3Location(expected))).toEqual(expected);
  });

  it.each([
    ['s3://', /names no bucket/],
    ['s3:///prefix', /names no bucket/],
    ['s3://ab', /not a valid bucket name/],
    ['s3://-bucket', /not a valid bucket name/],
    ['s3://bu..cket', /not a valid bucket name/],
    ['s3://bucket/a//b', /empty, "\." or "\.\." segment/],
    ['s3://bucket/../x', /empty, "\." or "\.\." segment/],
    ['s3://bucket/a?region=x', /may not/],
    ['/srv/repo', /not an s3:\/\/ location/],
  ])('refuses %s', (text, message) => {
    expect(() => parseS3Location(text)).toThrow(InvalidInputError);
    expect(() => parseS3Location(text)).toThrow(message);
  });

  it('formats the canonical text', () => {
    expect(formatS3Location({ bucket: 'b12', prefix: '' })).toBe('s3://b12');
    expect(formatS3Location({ bucket: 'b12', prefix: 'x/y' })).toBe('s3://b12/x/y');
  });
});

describe('--repo as the app takes it', () => {
  it('keeps s3:// URLs as they are and makes directories absolute', () => {
    expect(repoLocation('s3://bucket/prefix')).toBe('s3://bucket/prefix');
    expect(repoLocation('repo')).toBe(`${process.cwd()}/repo`);
    expect(repoLocation('/srv/repo')).toBe('/srv/repo');
  });

  it('a backup request accepts an absolute directory or an s3:// URL, nothing relative', () => {
    expect(isAcceptedRepoLocation('s3://b12')).toBe(true);
    expect(checkBackupRequest({ vm: 'vm1', repo: 's3://bucket/fleece' }).repo).toBe('s3://bucket/fleece');
    expect(checkBackupRequest({ vm: 'vm1', repo: '/srv/repo' }).repo).toBe('/srv/repo');
    expect(() => checkBackupRequest({ vm: 'vm1', repo: 'repo' })).toThrow(/absolute path or an s3:\/\/ URL/);
    expect(() => checkBackupRequest({ vm: 'vm1', repo: '/r', scratchDir: 'tmp' })).toThrow(/absolute path/);
  });
});
