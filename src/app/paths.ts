// Where fleece keeps its state (checkpoint XML, job records) and its configuration (registered VMs).
import { join } from 'node:path';

export const DEFAULT_STATE_DIR = '/var/lib/fleece';
export const DEFAULT_CONFIG_DIR = '/etc/fleece';
export const DEFAULT_RUN_DIR = '/run/fleece';

/** The state directory: the flag, else FLEECE_STATE_DIR, else /var/lib/fleece. */
export function resolveStateDir(flag?: string, env: NodeJS.ProcessEnv = process.env): string {
  return flag ?? env.FLEECE_STATE_DIR ?? DEFAULT_STATE_DIR;
}

/** The configuration directory: the flag, else FLEECE_CONFIG_DIR, else /etc/fleece. */
export function resolveConfigDir(flag?: string, env: NodeJS.ProcessEnv = process.env): string {
  return flag ?? env.FLEECE_CONFIG_DIR ?? DEFAULT_CONFIG_DIR;
}

/** The runtime directory for NBD sockets: FLEECE_RUN_DIR, else /run/fleece. */
export function resolveRunDir(env: NodeJS.ProcessEnv = process.env): string {
  return env.FLEECE_RUN_DIR ?? DEFAULT_RUN_DIR;
}

export function vmStateDir(stateDir: string, vm: string): string {
  return join(stateDir, 'vms', vm);
}
