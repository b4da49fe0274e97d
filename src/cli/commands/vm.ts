// `fleece vm add | list | remove`: the VM registry (a libvirt domain and its URI, or a bare QEMU's QMP socket).
import { resolve } from 'node:path';
import type { Command } from 'commander';
import { VmRegistry } from '../../app/vm-registry.js';
import { formatVmRetention, parseVmRetention } from '../../app/vm-retention.js';
import type { CliContext } from '../context.js';

export function registerVmCommands(program: Command, context: () => CliContext): void {
  const vm = program.command('vm').description('register VMs by name (a libvirt domain and its URI, or a QMP socket) so commands need no --connect/--qmp');
  vm.command('add')
    .description('register a VM: a libvirt domain (--connect) or a bare QEMU (--qmp)')
    .argument('<name>', 'the VM name (for libvirt: the domain name)')
    .option('-c, --connect <uri>', 'the libvirt URI the domain lives on (qemu:///system)')
    .option('--qmp <socket>', 'a bare QEMU: its QMP unix socket')
    .option('--guest-agent <socket>', 'a bare QEMU: its guest agent unix socket (for --quiesce)')
    .option('--tls-dir <dir>', "NBD over TLS for this VM's TCP exports: x509 directory (ca-cert.pem, server-*.pem, client-*.pem)")
    .option('--tls-psk <file>', "NBD over TLS for this VM's TCP exports: a keys.psk file")
    .option('--retention <rules>', 'after each successful backup prune this VM by these rules, e.g. last=3,daily=7,checkpoints=2 (keys: last, hourly, daily, weekly, monthly, yearly, checkpoints, timezone); off by default')
    .addHelpText('after', `
Examples:
  fleece vm add web1 --connect qemu:///system
  fleece vm add lab --qmp /run/lab/qmp.sock --guest-agent /run/lab/qga.sock --tls-dir /etc/fleece/tls`)
    .action(async (name: string, flags: { qmp?: string; connect?: string; guestAgent?: string; tlsDir?: string; tlsPsk?: string; retention?: string }) => {
      const ctx = context();
      const tlsDir = flags.tlsDir !== undefined ? resolve(flags.tlsDir) : undefined;
      const tlsPsk = flags.tlsPsk !== undefined ? resolve(flags.tlsPsk) : undefined;
      const { nbdTlsFromSettings } = await import('../../app/nbd-tls-settings.js');
      nbdTlsFromSettings({ ...(tlsDir ? { dir: tlsDir } : {}), ...(tlsPsk ? { psk: tlsPsk } : {}) }, '--tls-dir/--tls-psk');
      await new VmRegistry(ctx.configDir).add({
        name,
        ...(flags.qmp ? { qmp: resolve(flags.qmp) } : {}),
        ...(flags.connect ? { connect: flags.connect } : {}),
        ...(flags.guestAgent ? { guestAgent: resolve(flags.guestAgent) } : {}),
        ...(tlsDir ? { tlsDir } : {}),
        ...(tlsPsk ? { tlsPsk } : {}),
        ...(flags.retention !== undefined ? { retention: parseVmRetention(flags.retention) } : {}),
      });
      ctx.info(`VM '${name}' registered in ${ctx.configDir}`);
    });
  vm.command('list')
    .description('list the registered VMs')
    .action(async () => {
      const ctx = context();
      const vms = await new VmRegistry(ctx.configDir).list();
      if (ctx.json) ctx.printJson(vms);
      else for (const v of vms) ctx.print(`${v.name}\t${v.connect ? `libvirt ${v.connect}` : `qmp ${v.qmp}`}${v.guestAgent ? `\t${v.guestAgent}` : ''}${v.retention ? `\tretention ${formatVmRetention(v.retention)}` : ''}`);
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
