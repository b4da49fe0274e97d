// `fleece repo init | info | key-generate`: repository markers and keys (src/app/repo-init.ts).
import { resolve } from 'node:path';
import type { Command } from 'commander';
// The repository code loads in the action of the verb that runs, not at start-up.
const repoInit = () => import('../../app/repo-init.js');
import { repoLocation } from '../../app/repo-location.js';
import type { CliContext } from '../context.js';

export function registerRepoCommands(program: Command, context: () => CliContext): void {
  const repo = program.command('repo').description('create, adopt and inspect repositories; make encryption keys');

  repo
    .command('init')
    .description('make LOCATION (a directory, or s3://BUCKET[/PREFIX]) a fleece repository: empty, or holding only backups (adopted)')
    .argument('<location>', 'the repository directory, or s3://BUCKET[/PREFIX]')
    .option('--encrypt', 'encrypt the data of every backup (AES-256-GCM) with the key of --key-file or --passphrase-file (global options)')
    .action(async (location: string, flags: { encrypt?: boolean }) => {
      const ctx = context();
      const { initRepository } = await repoInit();
      const result = await initRepository({ location: repoLocation(location), ...(flags.encrypt ? { encrypt: true } : {}) });
      if (ctx.json) ctx.printJson(result);
      else {
        const what = result.adopted ? 'adopted the backups in' : 'created the repository';
        ctx.print(`${what} ${result.location} (id ${result.marker.id}${result.marker.encryption ? `, encrypted, key id ${result.marker.encryption.key_id}` : ''})`);
        if (result.marker.encryption) ctx.info('keep a copy of the key (or passphrase) and of the repository marker elsewhere: without both, no backup in it can be restored');
      }
    });

  repo
    .command('info')
    .description('show the repository marker of LOCATION (its id, layout and encryption; never a key)')
    .argument('<location>', 'the repository directory, or s3://BUCKET[/PREFIX]')
    .action(async (location: string) => {
      const ctx = context();
      const { readRepositoryMarker } = await import('../../app/repository-operations.js');
      const marker = await readRepositoryMarker(repoLocation(location));
      if (ctx.json) ctx.printJson(marker);
      else {
        ctx.print(`repository ${marker.id}: layout ${marker.layout}, created ${marker.created}${marker.adopted ? ' (adopted)' : ''}`);
        ctx.print(marker.encryption ? `encrypted: ${marker.encryption.scheme}, key id ${marker.encryption.key_id}, ${marker.encryption.kdf.name === 'scrypt' ? 'passphrase (scrypt)' : 'key file'}` : 'not encrypted');
      }
    });

  repo
    .command('key-generate')
    .description('write a new key file: 32 random bytes, mode 0600 (the same as `head -c 32 /dev/urandom > FILE`)')
    .argument('<file>', 'the key file to create (never overwritten)')
    .action(async (file: string) => {
      const ctx = context();
      const { generateKeyFile } = await repoInit();
      await generateKeyFile(resolve(file));
      ctx.print(`wrote a new key to ${resolve(file)}: keep a copy somewhere safe, apart from the repository`);
    });
}
