// fleeced's configuration: file + flags merged, defaults, and refusals that name the option.
import { describe, expect, test } from '@jest/globals';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { readConfigFile, resolveDaemonConfig } from '../../../src/daemon/config.js';
import { errorReply } from '../../../src/daemon/errors.js';
import { ConflictError, InvalidInputError, NotFoundError, FleeceError } from '../../../src/util/errors.js';
import { makeTempDir, removeTempDir } from '../../harness/temp-dir.js';

describe('resolveDaemonConfig', () => {
  test('defaults come from the environment; the socket lives in the run dir', () => {
    const config = resolveDaemonConfig({}, {}, { FLEECE_RUN_DIR: '/r', FLEECE_STATE_DIR: '/s', FLEECE_CONFIG_DIR: '/c' });
    expect(config).toEqual({ socket: '/r/fleeced.sock', stateDir: '/s', configDir: '/c', runDir: '/r', maxParallelJobs: 4, logLevel: 'info' });
    expect(resolveDaemonConfig({}, {}, {}).socket).toBe('/run/fleece/fleeced.sock');
  });

  test('flags win over the file; undefined flags do not erase file values', () => {
    const config = resolveDaemonConfig({ maxParallelJobs: 2, logLevel: 'debug', socket: '/f.sock' }, { maxParallelJobs: 3, socket: undefined }, {});
    expect(config).toMatchObject({ maxParallelJobs: 3, logLevel: 'debug', socket: '/f.sock' });
  });

  test('TCP needs a token file; bad values name the option', () => {
    expect(() => resolveDaemonConfig({}, { tcp: '127.0.0.1:7777' }, {})).toThrow(/token file/);
    expect(resolveDaemonConfig({}, { tcp: '[::1]:7777', tokenFile: '/t', allowPlainLoopback: true }, {}).tcp).toEqual({ host: '::1', port: 7777 });
    expect(() => resolveDaemonConfig({}, { tcp: 'localhost', tokenFile: '/t' }, {})).toThrow(/tcp 'localhost' is not host:port/);
    expect(() => resolveDaemonConfig({}, { maxParallelJobs: 0 }, {})).toThrow(/maxParallelJobs/);
    expect(() => resolveDaemonConfig({}, { logLevel: 'loud' }, {})).toThrow(/logLevel 'loud'/);
  });

  test('TCP is HTTPS (certificate and key together); plain HTTP only when allowed, and only on loopback', () => {
    const https = resolveDaemonConfig({}, { tcp: '0.0.0.0:7777', tokenFile: '/t', tlsCert: '/c.pem', tlsKey: '/k.pem' }, {});
    expect(https).toMatchObject({ tcp: { host: '0.0.0.0', port: 7777 }, https: { certFile: '/c.pem', keyFile: '/k.pem' } });
    expect(https.allowPlainLoopback).toBeUndefined();
    expect(() => resolveDaemonConfig({}, { tcp: '127.0.0.1:7777', tokenFile: '/t' }, {})).toThrow(/needs HTTPS.*--tls-cert/);
    expect(() => resolveDaemonConfig({}, { tcp: '127.0.0.1:7777', tokenFile: '/t', tlsCert: '/c.pem' }, {})).toThrow(/tlsCert and tlsKey go together/);
    expect(() => resolveDaemonConfig({}, { tcp: '192.168.1.5:7777', tokenFile: '/t', allowPlainLoopback: true }, {})).toThrow(/not a loopback address/);
    for (const host of ['127.0.0.1', '127.1.2.3', '[::1]', 'localhost']) {
      expect(resolveDaemonConfig({}, { tcp: `${host}:7777`, tokenFile: '/t', allowPlainLoopback: true }, {}).allowPlainLoopback).toBe(true);
    }
  });

  test('NBD TLS credentials: a directory or a PSK file, absolute, not both', () => {
    expect(resolveDaemonConfig({ nbdTlsDir: '/etc/fleece/tls', nbdTlsVerifyPeer: false }, {}, {}).nbdTls).toEqual({ type: 'x509', dir: '/etc/fleece/tls', verifyPeer: false });
    expect(resolveDaemonConfig({}, { nbdTlsPsk: '/etc/fleece/psk/keys.psk' }, {}).nbdTls).toEqual({ type: 'psk', file: '/etc/fleece/psk/keys.psk' });
    expect(() => resolveDaemonConfig({ nbdTlsDir: '/a' }, { nbdTlsPsk: '/b/keys.psk' }, {})).toThrow(/not both/);
    expect(() => resolveDaemonConfig({ nbdTlsDir: 'tls' }, {}, {})).toThrow(/not an absolute path/);
    expect(resolveDaemonConfig({}, {}, {}).nbdTls).toBeUndefined();
  });

  test('the file is JSON with known keys of the right type; an absent default file is empty', async () => {
    const dir = await makeTempDir('config');
    try {
      expect(await readConfigFile(join(dir, 'none.conf'), false)).toEqual({});
      await expect(readConfigFile(join(dir, 'none.conf'), true)).rejects.toThrow(/cannot read the configuration file/);
      await writeFile(join(dir, 'a.conf'), JSON.stringify({ '//': 'comment', socket: '/x.sock', maxParallelJobs: 2, tcp: null }));
      expect(await readConfigFile(join(dir, 'a.conf'), true)).toEqual({ socket: '/x.sock', maxParallelJobs: 2 });
      await writeFile(join(dir, 'b.conf'), JSON.stringify({ sockett: '/x' }));
      await expect(readConfigFile(join(dir, 'b.conf'), true)).rejects.toThrow(/unknown option 'sockett'/);
      await writeFile(join(dir, 'c.conf'), JSON.stringify({ maxParallelJobs: '2' }));
      await expect(readConfigFile(join(dir, 'c.conf'), true)).rejects.toThrow(/'maxParallelJobs' must be a number/);
    } finally {
      await removeTempDir(dir);
    }
  });

  test('the example configuration in deploy/ is valid', async () => {
    const example = await readConfigFile(join(process.cwd(), 'deploy/fleeced.conf.example'), true);
    expect(() => resolveDaemonConfig(example, {}, {})).not.toThrow();
  });
});

describe('errorReply', () => {
  test('maps the error tree to HTTP statuses and one body shape', () => {
    expect(errorReply(new InvalidInputError('body: bad'))).toEqual({ status: 400, body: { error: { code: 'INVALID_INPUT', message: 'body: bad' } } });
    expect(errorReply(new NotFoundError('x')).status).toBe(404);
    expect(errorReply(new ConflictError('x')).status).toBe(409);
    expect(errorReply(new FleeceError('QMP_CLOSED', 'gone')).status).toBe(500);
    expect(errorReply(Object.assign(new Error('body/x must be string'), { validation: [] }))).toEqual({
      status: 400,
      body: { error: { code: 'INVALID_INPUT', message: 'body/x must be string' } },
    });
    expect(errorReply(new TypeError('boom'))).toEqual({ status: 500, body: { error: { code: 'INTERNAL', message: 'boom' } } });
  });
});
