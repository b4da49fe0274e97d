// A VM's retention policy as `fleece vm add --retention` and the daemon's scrub schedule as fleeced.conf give them.
import { parseVmRetention, formatVmRetention } from '../../../src/app/vm-retention.js';
import { resolveDaemonConfig } from '../../../src/daemon/config.js';
import { InvalidInputError } from '../../../src/util/errors.js';

describe('parseVmRetention', () => {
  it('reads keep rules, checkpoints and the time zone, and writes them back the same', () => {
    const r = parseVmRetention('last=3, keep-daily=7,checkpoints=2,timezone=Europe/Berlin');
    expect(r).toEqual({ keep: { last: 3, daily: 7 }, keepCheckpoints: 2, timeZone: 'Europe/Berlin' });
    expect(formatVmRetention(r)).toBe('last=3,daily=7,checkpoints=2,timezone=Europe/Berlin');
  });

  it.each(['checkpoints=2', 'last=0', 'last=x', 'often=3', 'last', 'checkpoints=0,last=1'])('refuses %s', (text) => {
    expect(() => parseVmRetention(text)).toThrow(InvalidInputError);
  });
});

describe('the daemon scrub schedule', () => {
  const env = { FLEECE_STATE_DIR: '/s', FLEECE_CONFIG_DIR: '/c', FLEECE_RUN_DIR: '/r' };
  it('is off by default and on with a repository and an interval', () => {
    expect(resolveDaemonConfig({}, {}, env).scrub).toBeUndefined();
    expect(resolveDaemonConfig({ scrubRepo: '/backups/repo', scrubIntervalHours: 24 }, {}, env).scrub).toEqual({ repo: '/backups/repo', percent: 5, intervalMs: 86_400_000 });
    expect(resolveDaemonConfig({ scrubRepo: '/b', scrubIntervalHours: 1, scrubSample: 20 }, {}, env).scrub?.percent).toBe(20);
  });
  it('refuses half a schedule and a bad percentage', () => {
    expect(() => resolveDaemonConfig({ scrubRepo: '/b' }, {}, env)).toThrow(/go together/);
    expect(() => resolveDaemonConfig({ scrubRepo: '/b', scrubIntervalHours: 1, scrubSample: 0 }, {}, env)).toThrow(/percentage/);
    expect(() => resolveDaemonConfig({ scrubRepo: 'rel', scrubIntervalHours: 1 }, {}, env)).toThrow(/absolute/);
  });
});
