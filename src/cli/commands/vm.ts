// `fleece vm add | list | remove`: the VM registry (a name bound to its QMP socket and optional guest agent socket).
import { resolve } from 'node:path';
import type { Command } from 'commander';
import { VmRegistry } from '../../app/vm-registry.js';
import type { CliContext } from '../context.js';

export function registerVmCommands(program: Command, context: () => CliContext): void {
  const vm = program.command('vm').description('register VMs by name (their QMP socket) so commands can address them without --qmp');
  vm.command('add')
    .description('register a VM')
    .argument('<name>', 'the VM name')
    .requiredOption('--qmp <socket>', 'its QMP unix socket')
    .option('--guest-agent <socket>', 'its guest agent unix socket (for --quiesce)')
    .action(async (name: string, flags: { qmp: string; guestAgent?: string }) => {
      const ctx = context();
      await new VmRegistry(ctx.configDir).add({ name, qmp: resolve(flags.qmp), ...(flags.guestAgent ? { guestAgent: resolve(flags.guestAgent) } : {}) });
      ctx.info(`VM '${name}' registered in ${ctx.configDir}`);
    });
  vm.command('list')
    .description('list the registered VMs')
    .action(async () => {
      const ctx = context();
      const vms = await new VmRegistry(ctx.configDir).list();
      if (ctx.json) ctx.printJson(vms);
      else for (const v of vms) ctx.print(`${v.name}\t${v.qmp}${v.guestAgent ? `\t${v.guestAgent}` : ''}`);
    });
  vm.command('remove')
    .description('unregister a VM (its checkpoints and backups stay)')
    .argument('<name>', 'the VM name')
    .action(async (name: string) => {
      const ctx = context();
      await new VmRegistry(ctx.configDir).remove(name);
      ctx.info(`VM '${name}' removed from ${ctx.configDir}`);
    });
}
