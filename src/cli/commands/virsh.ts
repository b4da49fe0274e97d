// virsh's backup and checkpoint verbs (libvirt 9.0 names, arguments and output), through fleeced or directly.
import { resolve } from 'node:path';
import type { Command } from 'commander';
import type { JobInfo } from '../../app/jobs/job-info.js';
import { FleeceError, InvalidInputError, NotFoundError } from '../../util/errors.js';
import type { CliContext } from '../context.js';
import type { DaemonClient } from '../daemon-client.js';
import type { CheckpointListOptions } from '../virsh-format.js';
import type { CheckpointOps, VirshTarget } from './virsh-backend.js';
import type { PrivateDaemon } from './virsh-private-daemon.js';

// What the verbs run on (QMP, checkpoints, XML parsing) loads in the action of the verb that runs, not at start-up.
const backend = () => import('./virsh-backend.js');
const virshFormat = () => import('../virsh-format.js');
const readXmlFile = async (file: string, kind: 'backup' | 'checkpoint') => (await import('./virsh-input.js')).readXmlFile(file, kind);

interface QmpOption {
  qmp?: string;
}

function target(vm: string, options: QmpOption): VirshTarget {
  return { vm, ...(options.qmp !== undefined ? { qmp: options.qmp } : {}) };
}

async function withCheckpoints<T>(ctx: CliContext, t: VirshTarget, work: (ops: CheckpointOps) => Promise<T>): Promise<T> {
  const ops = await (await backend()).checkpointOps(ctx, t);
  try {
    return await work(ops);
  } finally {
    await ops.close();
  }
}

/** The fleeced for a job verb; without one, the VM is still checked so that a typo is bad input (exit 2). */
async function jobDaemon(ctx: CliContext, t: VirshTarget): Promise<DaemonClient | undefined> {
  const client = await (await backend()).daemonForTarget(ctx, t);
  if (!client) await (await backend()).resolveTarget(ctx, t);
  return client;
}

/** Waits, over the job's event stream, until a queued job left `starting`. */
async function waitStarted(client: DaemonClient, job: JobInfo, signal: AbortSignal): Promise<JobInfo> {
  if (job.state !== 'starting') return job;
  let last = job;
  for await (const event of client.jobEvents(job.id, { signal })) {
    last = event.job;
    if (last.state !== 'starting') break;
  }
  return last;
}

function describeExports(job: JobInfo): string[] {
  return job.disks.filter((d) => d.export).map((d) => `disk ${d.disk}: ${d.export!.uri} (context ${d.export!.context})`);
}

/** `--tls-dir DIR` / `--tls-psk FILE` of backup-begin: the NBD TLS credentials of a tcp `<server>`. */
interface TlsFlags {
  tlsDir?: string;
  tlsPsk?: string;
}

async function backupBegin(
  ctx: CliContext,
  t: VirshTarget,
  files: { backup?: string; checkpoint?: string },
  reuseExternal: boolean,
  tlsFlags: TlsFlags = {},
): Promise<void> {
  // Bad input fails here, before any daemon is started or QEMU touched.
  const backupXml = files.backup !== undefined ? await readXmlFile(files.backup, 'backup') : undefined;
  const checkpointXml = files.checkpoint !== undefined ? await readXmlFile(files.checkpoint, 'checkpoint') : undefined;
  const { nbdTlsFromSettings } = await import('../../app/nbd-tls-settings.js');
  const tls = nbdTlsFromSettings(
    {
      ...(tlsFlags.tlsDir !== undefined ? { dir: resolve(tlsFlags.tlsDir) } : {}),
      ...(tlsFlags.tlsPsk !== undefined ? { psk: resolve(tlsFlags.tlsPsk) } : {}),
    },
    '--tls-dir/--tls-psk',
  );
  let client = await (await backend()).daemonForTarget(ctx, t);
  if (client && tls) {
    throw new InvalidInputError(`--tls-dir/--tls-psk: a fleeced already serves VM '${t.vm}' (${ctx.daemonSocket}) with its own TLS settings`, {
      hint: `register the VM with them (fleece vm add ${t.vm} … --tls-dir DIR), or set nbdTlsDir/nbdTlsPsk in that daemon's fleeced.conf`,
    });
  }
  let own: PrivateDaemon | undefined;
  if (!client) {
    const entry = await (await backend()).resolveTarget(ctx, t);
    // The private daemon's registry copy carries the flags as this VM's own TLS credentials.
    const withTls = tls
      ? { ...entry, ...(tls.type === 'x509' ? { tlsDir: tls.dir, tlsPsk: undefined } : { tlsPsk: tls.file, tlsDir: undefined }) }
      : entry;
    const { PRIVATE_DAEMON_IDLE_SECONDS, startPrivateDaemon } = await import('./virsh-private-daemon.js');
    own = await startPrivateDaemon(ctx, withTls);
    client = own.client;
    ctx.info(
      `fleece: started a private fleeced (pid ${own.pid}, socket ${ctx.daemonSocket}) for this job; ` +
        `it exits ${PRIVATE_DAEMON_IDLE_SECONDS} s after the job ended (log ${own.logFile})`,
    );
  }
  let job: JobInfo;
  try {
    job = await client.backupBegin(t.vm, {
      ...(backupXml !== undefined ? { backupXml } : {}),
      ...(checkpointXml !== undefined ? { checkpointXml } : {}),
      ...(reuseExternal ? { reuseExternal: true } : {}),
    });
    job = await waitStarted(client, job, ctx.signal);
  } catch (error) {
    own?.stop();
    throw error;
  }
  if (job.state === 'failed') {
    throw new FleeceError('QEMU_JOB', `backup job ${job.id} of VM ${t.vm} failed at start: ${job.error ?? 'unknown error'}`);
  }
  if (ctx.json) {
    ctx.printJson({ job });
    return;
  }
  printExtra(ctx, 'Backup started\n');
  ctx.info(`job ${job.id} (${job.kind})${job.checkpoint ? `, checkpoint ${job.checkpoint}` : ''}`);
  for (const line of describeExports(job)) ctx.info(line);
}

async function domJobInfo(ctx: CliContext, t: VirshTarget, completed: boolean): Promise<void> {
  const client = await jobDaemon(ctx, t);
  let job: JobInfo | null;
  if (client) job = await client.vmJob(t.vm, { completed });
  else job = completed ? await (await backend()).lastCompletedJob(ctx.stateDir, t.vm) : null;
  if (ctx.json) ctx.printJson({ job });
  else process.stdout.write((await virshFormat()).formatDomJobInfo(job));
}

async function domJobAbort(ctx: CliContext, t: VirshTarget): Promise<void> {
  const client = await jobDaemon(ctx, t);
  if (!client) {
    throw new NotFoundError(`VM '${t.vm}' has no active backup job (no fleeced answers on ${ctx.daemonSocket})`, {
      hint: 'nothing to abort',
    });
  }
  const job = await client.abortVmJob(t.vm);
  if (ctx.json) ctx.printJson({ job });
  else ctx.info(`job ${job.id}: ${job.state}`);
}

async function backupDumpXml(ctx: CliContext, t: VirshTarget): Promise<void> {
  const client = await jobDaemon(ctx, t);
  if (!client) throw new NotFoundError(`VM '${t.vm}' has no active backup job`, { hint: 'start one with backup-begin' });
  const xml = await client.backupXml(t.vm);
  if (ctx.json) ctx.printJson({ xml });
  else process.stdout.write(xml.endsWith('\n') ? `${xml}\n` : `${xml}\n\n`);
}

async function checkpointCreate(ctx: CliContext, t: VirshTarget, file: string, redefine: boolean): Promise<void> {
  const xml = await readXmlFile(file, 'checkpoint');
  const result = await withCheckpoints(ctx, t, async (ops) => (redefine ? ops.redefine(xml) : ops.create({ xml })));
  if (ctx.json) ctx.printJson(result);
  else printExtra(ctx, `Domain checkpoint ${result.name} created from '${file}'\n`);
}

/** virsh's vshPrintExtra: a confirmation on stdout that --quiet suppresses. */
function printExtra(ctx: CliContext, text: string): void {
  if (!ctx.quiet) process.stdout.write(text);
}

/** Writes XML as virsh does: the document, then a blank line. */
function printXml(xml: string): void {
  process.stdout.write(xml.endsWith('\n') ? `${xml}\n` : `${xml}\n\n`);
}

/**
 * Registers backup-begin, backup-dumpxml, domjobinfo, domjobabort, checkpoint-create, checkpoint-create-as,
 * checkpoint-redefine, checkpoint-list, checkpoint-delete and checkpoint-dumpxml on `program`. Each takes `--qmp
 * PATH` for a VM that is not registered; `--json` (global) prints the result as JSON. The actions throw
 * InvalidInputError for bad input (unknown VM, missing or malformed file, options virsh refuses together).
 */
export function registerVirshCommands(program: Command, context: () => CliContext): void {
  const qmpHelp = 'QMP socket of a VM that is not registered';

  program
    .command('backup-begin')
    .description('start a backup job (push, or pull with NBD exports left up until domjobabort)')
    .argument('<vm>', 'VM name')
    .argument('[backupxml]', '<domainbackup> XML file (default: full pull backup of every disk)')
    .argument('[checkpointxml]', '<domaincheckpoint> XML file: create this checkpoint with the backup')
    .option('--reuse-external', 'use the existing target and scratch files the XML names')
    .option('--tls-dir <dir>', 'NBD over TLS for a tcp <server>: x509 directory (ca-cert.pem, server-cert.pem, server-key.pem, client-cert.pem, client-key.pem)')
    .option('--tls-psk <file>', 'NBD over TLS for a tcp <server>: a keys.psk file (psktool)')
    .option('--qmp <path>', qmpHelp)
    .action(async (vm: string, backupFile: string | undefined, checkpointFile: string | undefined, options: QmpOption & TlsFlags & { reuseExternal?: boolean }) => {
      await backupBegin(
        context(),
        target(vm, options),
        { ...(backupFile !== undefined ? { backup: backupFile } : {}), ...(checkpointFile !== undefined ? { checkpoint: checkpointFile } : {}) },
        options.reuseExternal ?? false,
        { ...(options.tlsDir !== undefined ? { tlsDir: options.tlsDir } : {}), ...(options.tlsPsk !== undefined ? { tlsPsk: options.tlsPsk } : {}) },
      );
    });

  program
    .command('backup-dumpxml')
    .description('the XML of the running backup job')
    .argument('<vm>', 'VM name')
    .option('--qmp <path>', qmpHelp)
    .action(async (vm: string, options: QmpOption) => backupDumpXml(context(), target(vm, options)));

  program
    .command('domjobinfo')
    .description("the VM's backup job (virsh's format)")
    .argument('<vm>', 'VM name')
    .option('--completed', 'the last finished job instead of the active one')
    .option('--qmp <path>', qmpHelp)
    .action(async (vm: string, options: QmpOption & { completed?: boolean }) => domJobInfo(context(), target(vm, options), options.completed ?? false));

  program
    .command('domjobabort')
    .description("abort the VM's backup job (a pull job: the exports go away)")
    .argument('<vm>', 'VM name')
    .option('--qmp <path>', qmpHelp)
    .action(async (vm: string, options: QmpOption) => domJobAbort(context(), target(vm, options)));

  program
    .command('checkpoint-create')
    .description('create a checkpoint from XML, or with --redefine restore its metadata')
    .argument('<vm>', 'VM name')
    .argument('<xmlfile>', '<domaincheckpoint> XML file')
    .option('--redefine', 'restore the metadata of an existing checkpoint (its bitmaps must exist)')
    .option('--qmp <path>', qmpHelp)
    .action(async (vm: string, file: string, options: QmpOption & { redefine?: boolean }) =>
      checkpointCreate(context(), target(vm, options), file, options.redefine ?? false),
    );

  program
    .command('checkpoint-redefine')
    .description('restore the metadata of an existing checkpoint (virsh: checkpoint-create --redefine)')
    .argument('<vm>', 'VM name')
    .argument('<xmlfile>', '<domaincheckpoint> XML file, as checkpoint-dumpxml printed it')
    .option('--qmp <path>', qmpHelp)
    .action(async (vm: string, file: string, options: QmpOption) => checkpointCreate(context(), target(vm, options), file, true));

  program
    .command('checkpoint-create-as')
    .description('create a checkpoint by name')
    .argument('<vm>', 'VM name')
    .argument('<name>', 'checkpoint name')
    .argument('[description]', 'description')
    .option('--print-xml', 'print the XML instead of creating the checkpoint')
    .option('--qmp <path>', qmpHelp)
    .action(async (vm: string, name: string, description: string | undefined, options: QmpOption & { printXml?: boolean }) => {
      const ctx = context();
      if (options.printXml) {
        const xml = `<domaincheckpoint>\n  <name>${escape(name)}</name>\n${description !== undefined ? `  <description>${escape(description)}</description>\n` : ''}</domaincheckpoint>\n`;
        (await import('../../app/vocabulary.js')).parseCheckpointXml(xml);
        printXml(xml);
        return;
      }
      const result = await withCheckpoints(ctx, target(vm, options), (ops) =>
        ops.create({ name, ...(description !== undefined ? { description } : {}) }),
      );
      if (ctx.json) ctx.printJson(result);
      else printExtra(ctx, `Domain checkpoint ${result.name} created\n`);
    });

  program
    .command('checkpoint-list')
    .description("the VM's checkpoints (virsh's table, --name or --tree)")
    .argument('<vm>', 'VM name')
    .option('--parent', 'add a Parent column')
    .option('--roots', 'only checkpoints without a parent')
    .option('--leaves', 'only checkpoints without children')
    .option('--no-leaves', 'only checkpoints with children')
    .option('--tree', 'the checkpoints as a tree')
    .option('--name', 'names only')
    .option('--repo <dir>', 'add a column: the backups in this repository that ended at each checkpoint (fleece prunes the others)')
    .option('--qmp <path>', qmpHelp)
    .action(async (vm: string, options: QmpOption & Omit<CheckpointListOptions, 'noLeaves' | 'leaves'> & { leaves?: boolean; repo?: string }) => {
      const ctx = context();
      // commander turns --leaves/--no-leaves into one option: true, false, or absent.
      const listOptions: CheckpointListOptions = {
        ...(options.tree ? { tree: true } : {}),
        ...(options.parent ? { parent: true } : {}),
        ...(options.name ? { name: true } : {}),
        ...(options.roots ? { roots: true } : {}),
        ...(options.leaves === true ? { leaves: true } : {}),
        ...(options.leaves === false ? { noLeaves: true } : {}),
      };
      const { checkCheckpointListOptions, formatCheckpointList, formatVirshTime, formatVshTable, selectCheckpoints } = await virshFormat();
      checkCheckpointListOptions(listOptions);
      const list = await withCheckpoints(ctx, target(vm, options), (ops) => ops.list());
      if (options.repo !== undefined) {
        if (options.tree || options.name) throw new FleeceError('USAGE', '--repo adds a column to the table: not with --tree or --name');
        const [{ backupsByCheckpoint }, { repoLocation }] = await Promise.all([import('../../app/checkpoint-retention.js'), import('../../app/repo-location.js')]);
        const served = await backupsByCheckpoint(repoLocation(options.repo), vm, ctx.signal);
        const serves = (name: string) => served.get(name) ?? [];
        if (ctx.json) ctx.printJson({ ...list, checkpoints: list.checkpoints.map((c) => ({ ...c, serves: serves(c.name) })) });
        else {
          const rows = selectCheckpoints(list.checkpoints, listOptions).map((c) => [
            c.name, formatVirshTime(c.creationTime), ...(listOptions.parent ? [c.parent ?? ''] : []),
            serves(c.name).map((s) => `${s.disk}:${s.backupId}`).join(',') || '- (no backup here ended at it)',
          ]);
          process.stdout.write(formatVshTable(['Name', 'Creation Time', ...(listOptions.parent ? ['Parent'] : []), 'Serves backup'], rows));
        }
        return;
      }
      if (ctx.json) ctx.printJson(list);
      else process.stdout.write(formatCheckpointList(list.checkpoints, listOptions));
    });

  program
    .command('checkpoint-delete')
    .description('delete a checkpoint (its bitmaps; children are re-parented)')
    .argument('<vm>', 'VM name')
    .argument('<name>', 'checkpoint name')
    .option('--metadata', "delete only fleece's metadata, leave the bitmaps in QEMU")
    .option('--qmp <path>', qmpHelp)
    .action(async (vm: string, name: string, options: QmpOption & { metadata?: boolean }) => {
      const ctx = context();
      await withCheckpoints(ctx, target(vm, options), (ops) => ops.delete(name, { metadataOnly: options.metadata ?? false }));
      if (ctx.json) ctx.printJson({ name, deleted: true });
      else printExtra(ctx, `Domain checkpoint ${name} deleted\n\n`);
    });

  program
    .command('checkpoint-dumpxml')
    .description("a checkpoint's XML")
    .argument('<vm>', 'VM name')
    .argument('<name>', 'checkpoint name')
    .option('--size', 'add each disk\'s size= (bytes written since the checkpoint)')
    .option('--no-domain', 'leave out the <domain> element')
    .option('--qmp <path>', qmpHelp)
    .action(async (vm: string, name: string, options: QmpOption & { size?: boolean; domain?: boolean }) => {
      const ctx = context();
      const xml = await withCheckpoints(ctx, target(vm, options), (ops) =>
        ops.dumpXml(name, { size: options.size ?? false, noDomain: options.domain === false }),
      );
      if (ctx.json) ctx.printJson({ name, xml });
      else printXml(xml);
    });
}

function escape(text: string): string {
  return text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}
