// The daemon's `repositoryKeys`: one key per encrypted repository, checked when the configuration is read.
import { resolveDaemonConfig } from '../../../src/daemon/config.js';
import { keySourceFor } from '../../../src/repository/crypto/keys.js';
import { registerRepositoryKeys } from '../../../src/app/repo-init.js';

const env = { FLEECE_RUN_DIR: '/run/x' };

test('repositoryKeys: absolute locations with one absolute keyFile or passphraseFile; registered by location', () => {
  const keys = { '/backups/vm': { keyFile: '/etc/fleece/vm.key' }, 's3://bucket/p': { passphraseFile: '/etc/fleece/p' } };
  expect(resolveDaemonConfig({ repositoryKeys: keys }, {}, env).repositoryKeys).toEqual(keys);
  expect(() => resolveDaemonConfig({ repositoryKeys: { 'backups': { keyFile: '/k' } } }, {}, env)).toThrow(/'backups' is not an absolute directory/);
  expect(() => resolveDaemonConfig({ repositoryKeys: { '/b': { keyFile: 'k' } } }, {}, env)).toThrow(/must be \{"keyFile": "\/absolute\/path"\}/);
  expect(() => resolveDaemonConfig({ repositoryKeys: { '/b': { keyFile: '/k', passphraseFile: '/p' } } }, {}, env)).toThrow(/must be/);
  registerRepositoryKeys(keys);
  expect(keySourceFor('/backups/vm/', {})).toEqual({ kind: 'key-file', path: '/etc/fleece/vm.key' });
  expect(keySourceFor('s3://bucket/p', {})).toEqual({ kind: 'passphrase-file', path: '/etc/fleece/p' });
  expect(keySourceFor('/other', { FLEECE_KEY_FILE: '/e.key' })).toEqual({ kind: 'key-file', path: '/e.key' });
});
