// Which NBD TLS credentials a VM's TCP exports use: its registry entry's (tlsDir / tlsPsk), else the daemon's.
import { nbdTlsFromSettings, type NbdTls } from '../nbd/nbd-tls.js';
import type { VmEntry } from './vm-registry.js';

export { nbdTlsFromSettings, type NbdTls };

/**
 * The VM's own TLS credentials when its entry names any, else `fallback` (the daemon's). verify-peer comes from the
 * fallback's setting. @throws InvalidInputError for an entry with both a directory and a PSK file, or relative paths.
 */
export function nbdTlsForVm(entry: Pick<VmEntry, 'name' | 'tlsDir' | 'tlsPsk'>, fallback?: NbdTls): NbdTls | undefined {
  const verifyPeer = fallback?.type === 'x509' ? fallback.verifyPeer : undefined;
  const own = nbdTlsFromSettings(
    {
      ...(entry.tlsDir !== undefined ? { dir: entry.tlsDir } : {}),
      ...(entry.tlsPsk !== undefined ? { psk: entry.tlsPsk } : {}),
      ...(verifyPeer !== undefined ? { verifyPeer } : {}),
    },
    `VM '${entry.name}'`,
  );
  return own ?? fallback;
}
