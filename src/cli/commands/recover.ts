// `fleece recover VM`: cleans up after an interrupted backup of the VM (what its journal lists), and says what it did.
import type { Command } from 'commander';
import type { CliContext } from '../context.js';

export function registerRecoverCommand(program: Command, context: () => CliContext): void {
  program
    .command('recover')
    .description('clean up after an interrupted backup of a VM: undo what its journal lists (fleece backup does this by itself)')
    .argument('<vm>', 'the VM (libvirt domain or registered name)')
    .action(async (vm: string) => {
      const ctx = context();
      const { describeReconcile, reconcileVm } = await import('../../app/reconcile.js');
      const report = await reconcileVm(vm, { stateDir: ctx.stateDir, configDir: ctx.configDir });
      if (ctx.json) {
        ctx.printJson(report ?? { vm, cleaned: [], failures: [] });
      } else {
        ctx.print(report ? describeReconcile(report) : `VM '${vm}': no interrupted backup to clean up`);
      }
      if (report && report.failures.length > 0) process.exitCode = 1;
    });
}
