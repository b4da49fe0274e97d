// The pure backup plan: (VM disks, resolved request, new checkpoint actions, naming) → provisioning steps, the one
// transaction, and the exports, exactly as libvirt 9 builds them (qemu_backup.c). No I/O here; golden-tested.
import { bitmapAdd, bitmapMerge, blockdevBackup, type TransactionAction } from '../qemu/actions.js';
import { tlsCredsObjectArguments } from '../qemu/nbd-export.js';
import { InvalidInputError, NotFoundError } from '../util/errors.js';

/** One `transaction` action, as QMP takes it. */
export type PlanAction = TransactionAction;

/** One QMP command a step issues. */
export interface PlanCommand {
  execute: string;
  arguments?: Record<string, unknown>;
}

/** The facts about one VM disk that the plan needs (a subset of the block graph's VmDisk). */
export interface PlanSourceDisk {
  /** The guest-visible disk name (vda, sdb). */
  target: string;
  /** The disk's top format node: the bitmaps live here and the backup job reads it. */
  formatNode: string;
  /** The image file of the format node (the backing file of scratch overlays and of incremental targets). */
  filename: string;
  /** The format of that image (qcow2, raw). */
  format: string;
  virtualSize: number;
  bitmaps: readonly { name: string; granularity: number }[];
}

export type TargetFormat = 'qcow2' | 'raw';

/** What is asked for one included disk, after the definition was resolved and defaults filled. */
export interface PlanDiskRequest {
  disk: PlanSourceDisk;
  /** Incremental since this checkpoint (its bitmap on the disk's format node); absent: full. */
  incrementalFrom?: string;
  /** Push: where the backup goes. `create: false` reuses an existing image (libvirt's REUSE_EXTERNAL). */
  push?: { path: string; format: TargetFormat; create: boolean };
  /** Pull: the scratch overlay and the export. */
  pull?: { scratchPath: string; create: boolean; exportName: string; exportBitmap?: string };
}

/** Where a pull backup's NBD server listens. */
export type NbdServerAddress = { type: 'unix'; path: string } | { type: 'tcp'; host: string; port: number };

/**
 * The NBD server's TLS credentials (QEMU's side): x509 reads ca-cert.pem, server-cert.pem, server-key.pem from `dir`
 * (`verifyPeer`: clients need a certificate of that CA); psk reads `dir`/keys.psk.
 */
export type PlanNbdTls = { type: 'x509'; dir: string; verifyPeer: boolean } | { type: 'psk'; dir: string };

/** Names of the nodes and jobs fleece adds; injectable so golden tests can reproduce libvirt's names. */
export interface PlanNaming {
  targetFileNode(disk: PlanSourceDisk): string;
  targetFormatNode(disk: PlanSourceDisk): string;
  backupJobId(disk: PlanSourceDisk): string;
  createJobId(formatNode: string): string;
  exportId(disk: PlanSourceDisk, formatNode: string): string;
  /** Id of the NBD server's TLS credentials object (default `fleece-nbd-tls`). */
  tlsObjectId?(): string;
}

/** The id of a job's TLS credentials object in QEMU (fleeceNaming), for cleanup after a restart. */
export function tlsObjectIdOf(tag: string): string {
  return `fl-${tag}-tls`;
}

/** Longest node name QEMU accepts. */
export const MAX_NODE_NAME = 31;

/** fleece's names: short, unique per job (`tag`), recognisable in `query-named-block-nodes`. */
export function fleeceNaming(tag: string): PlanNaming {
  const base = (disk: PlanSourceDisk) => `fl-${tag}-${disk.target}`;
  return {
    targetFileNode: (disk) => `${base(disk)}-storage`,
    targetFormatNode: (disk) => `${base(disk)}-format`,
    backupJobId: (disk) => `fleece-backup-${disk.target}-${tag}`,
    createJobId: (formatNode) => `create-${formatNode}`,
    exportId: (disk) => `fleece-nbd-${disk.target}-${tag}`,
    tlsObjectId: () => tlsObjectIdOf(tag),
  };
}

export interface PlanInput {
  mode: 'push' | 'pull';
  /** The included disks, in the order of the definition. */
  disks: readonly PlanDiskRequest[];
  /** The new checkpoint's `block-dirty-bitmap-add` actions (CheckpointManager.checkpointActions); empty for none. */
  checkpointActions: readonly PlanAction[];
  naming: PlanNaming;
  /** Pull only. */
  nbdServer?: NbdServerAddress;
  /** Pull only: the NBD server speaks TLS only, with these credentials (object-add before nbd-server-start). */
  nbdTls?: PlanNbdTls;
  /** Bandwidth limit per disk job, bytes/s. */
  speed?: number;
  /** Pull: export writable so the reader can discard what it read (frees scratch space). Default false. */
  exportWritable?: boolean;
  /** Cluster size of images fleece creates; default 64 KiB, as libvirt. */
  clusterSize?: number;
}

/** A side effect before the commit point, with the QMP command it issues (none for host file creation). */
export type ProvisionStep =
  /** Create an empty file (`wx`: never overwrites); a raw target is then sized to `size`. */
  | { kind: 'create-file'; disk: string; path: string; size?: number; role: 'target' | 'scratch' }
  | { kind: 'add-file-node'; disk: string; nodeName: string; path: string; command: PlanCommand }
  /** blockdev-create: a job; wait until concluded and dismiss it. */
  | { kind: 'create-image'; disk: string; jobId: string; path: string; command: PlanCommand }
  | { kind: 'add-format-node'; disk: string; nodeName: string; command: PlanCommand }
  /** object-add of the NBD server's TLS credentials (QEMU reads the certificate files now). */
  | { kind: 'add-tls-object'; id: string; type: 'x509' | 'psk'; dir: string; command: PlanCommand }
  | { kind: 'start-nbd-server'; command: PlanCommand };

/** What the plan decided for one disk. */
export interface PlannedDisk {
  target: string;
  sourceNode: string;
  virtualSize: number;
  sync: 'full' | 'incremental' | 'none';
  incrementalFrom?: string;
  jobId: string;
  /** The node the job writes into (push target or pull scratch). */
  targetNode: string;
  targetFileNode: string;
  /** The file behind targetNode (push target or scratch image). */
  path: string;
  /** Whether fleece creates that file (and so deletes it on failure, or always for scratch). */
  created: boolean;
  format: TargetFormat;
  /** The temporary bitmap (`backup-<disk>`) and the node that holds it, when the backup is incremental. */
  tempBitmap?: { node: string; name: string };
  /** Pull only. */
  export?: { id: string; name: string; bitmap?: string; command: PlanCommand };
}

export interface BackupPlan {
  mode: 'push' | 'pull';
  disks: PlannedDisk[];
  provision: ProvisionStep[];
  /** The one commit point. */
  transaction: PlanAction[];
  /** The bitmaps the checkpoint actions add, to record in the undo log after the commit. */
  checkpointBitmaps: { node: string; name: string }[];
  /** Pull: block-export-add commands, run after the commit. */
  exports: PlanCommand[];
}

const DEFAULT_CLUSTER = 65536;

function nbdAddr(server: NbdServerAddress): Record<string, unknown> {
  if (server.type === 'unix') return { type: 'unix', data: { path: server.path } };
  return { type: 'inet', data: { host: server.host, port: String(server.port) } };
}

function checkName(kind: string, name: string): string {
  if (name.length > MAX_NODE_NAME) {
    throw new InvalidInputError(`${kind} name '${name}' is longer than QEMU's ${MAX_NODE_NAME} characters`, {
      hint: 'use a shorter disk name or job tag',
    });
  }
  return name;
}

/** The granularity of a checkpoint's bitmap on a disk. Throws NotFoundError when the disk has no such bitmap. */
export function checkpointGranularity(disk: PlanSourceDisk, checkpoint: string): number {
  const bitmap = disk.bitmaps.find((b) => b.name === checkpoint);
  if (!bitmap) {
    throw new NotFoundError(`disk '${disk.target}' has no bitmap for checkpoint '${checkpoint}'`, {
      hint: 'take a full backup, or start from a checkpoint that exists on this disk (fleece checkpoint-list)',
    });
  }
  return bitmap.granularity;
}

/**
 * Builds the plan. Throws InvalidInputError when the request does not fit the mode (a push disk without target, a
 * pull disk without scratch, an incremental raw target, no NBD server for pull, no disk at all), and NotFoundError
 * when an incremental starts from a checkpoint whose bitmap is not on the disk.
 */
export function planBackup(input: PlanInput): BackupPlan {
  const { mode, naming } = input;
  if (input.disks.length === 0) {
    throw new InvalidInputError('the backup includes no disk', { hint: "mark at least one disk backup='yes'" });
  }
  if (mode === 'pull' && !input.nbdServer) {
    throw new InvalidInputError('a pull backup needs an NBD server address', { hint: 'give <server transport=…>' });
  }
  const clusterSize = input.clusterSize ?? DEFAULT_CLUSTER;
  const provision: ProvisionStep[] = [];
  const transaction: PlanAction[] = [...input.checkpointActions];
  const disks: PlannedDisk[] = [];
  const exports: PlanCommand[] = [];
  const seen = new Set<string>();

  for (const request of input.disks) {
    const disk = request.disk;
    if (seen.has(disk.target)) throw new InvalidInputError(`disk '${disk.target}' is listed twice in the backup`);
    seen.add(disk.target);
    const incremental = request.incrementalFrom;
    const granularity = incremental === undefined ? undefined : checkpointGranularity(disk, incremental);
    const fileNode = checkName('node', naming.targetFileNode(disk));
    const formatNode = checkName('node', naming.targetFormatNode(disk));
    const jobId = naming.backupJobId(disk);

    let path: string;
    let created: boolean;
    let format: TargetFormat;
    let backingFile: boolean; // whether the image gets the live image as backing file, opened over the disk node
    if (mode === 'push') {
      if (!request.push) {
        throw new InvalidInputError(`disk '${disk.target}' of a push backup has no target`, {
          hint: `give <target file=…> for disk '${disk.target}'`,
        });
      }
      ({ path, create: created, format } = request.push);
      if (format === 'raw' && incremental !== undefined) {
        throw new InvalidInputError(`disk '${disk.target}': an incremental backup cannot be written to a raw target`, {
          hint: "use <driver type='qcow2'/> for incremental targets",
        });
      }
      backingFile = incremental !== undefined;
    } else {
      if (!request.pull) {
        throw new InvalidInputError(`disk '${disk.target}' of a pull backup has no scratch image`, {
          hint: `give <scratch file=…> for disk '${disk.target}' or a scratch directory`,
        });
      }
      path = request.pull.scratchPath;
      created = request.pull.create;
      format = 'qcow2';
      backingFile = true;
    }

    // Provisioning, in libvirt's order: file, file node, blockdev-create, format node.
    if (created) {
      provision.push({
        kind: 'create-file',
        disk: disk.target,
        path,
        role: mode === 'push' ? 'target' : 'scratch',
        ...(format === 'raw' ? { size: disk.virtualSize } : {}),
      });
    }
    provision.push({
      kind: 'add-file-node',
      disk: disk.target,
      nodeName: fileNode,
      path,
      command: {
        execute: 'blockdev-add',
        arguments: { driver: 'file', filename: path, 'node-name': fileNode, 'auto-read-only': true, discard: 'unmap' },
      },
    });
    if (created && format === 'qcow2') {
      const createJob = naming.createJobId(formatNode);
      provision.push({
        kind: 'create-image',
        disk: disk.target,
        jobId: createJob,
        path,
        command: {
          execute: 'blockdev-create',
          arguments: {
            'job-id': createJob,
            options: {
              driver: 'qcow2',
              file: fileNode,
              size: disk.virtualSize,
              'cluster-size': clusterSize,
              ...(backingFile ? { 'backing-file': disk.filename, 'backing-fmt': disk.format } : {}),
            },
          },
        },
      });
    }
    provision.push({
      kind: 'add-format-node',
      disk: disk.target,
      nodeName: formatNode,
      command: {
        execute: 'blockdev-add',
        arguments:
          format === 'raw'
            ? { 'node-name': formatNode, 'read-only': false, driver: 'raw', file: fileNode }
            : {
                'node-name': formatNode,
                'read-only': false,
                driver: 'qcow2',
                file: fileNode,
                backing: backingFile ? disk.formatNode : null,
              },
      },
    });

    // The transaction: per disk the temporary bitmap, the merge, the job (qemuBackupDiskPrepareData order).
    let tempBitmap: PlannedDisk['tempBitmap'];
    if (incremental !== undefined) {
      const bitmapNode = mode === 'push' ? disk.formatNode : formatNode;
      const name = (mode === 'pull' ? request.pull?.exportBitmap : undefined) ?? `backup-${disk.target}`;
      tempBitmap = { node: bitmapNode, name };
      transaction.push(
        bitmapAdd({ node: bitmapNode, name, persistent: false, disabled: true, ...(granularity ? { granularity } : {}) }),
        bitmapMerge({ node: bitmapNode, target: name, sources: [{ node: disk.formatNode, name: incremental }] }),
      );
    }
    const sync: PlannedDisk['sync'] = mode === 'pull' ? 'none' : incremental !== undefined ? 'incremental' : 'full';
    transaction.push(
      blockdevBackup({
        device: disk.formatNode,
        jobId,
        target: formatNode,
        sync,
        ...(sync === 'incremental' && tempBitmap ? { bitmap: tempBitmap.name } : {}),
        ...(input.speed !== undefined && input.speed > 0 && mode === 'push' ? { speed: input.speed } : {}),
      }),
    );

    let planned: PlannedDisk['export'];
    if (mode === 'pull' && request.pull) {
      const id = naming.exportId(disk, formatNode);
      const bitmap = tempBitmap?.name;
      const command: PlanCommand = {
        execute: 'block-export-add',
        arguments: {
          type: 'nbd',
          id,
          'node-name': formatNode,
          writable: input.exportWritable ?? false,
          name: request.pull.exportName,
          ...(bitmap ? { bitmaps: [bitmap] } : {}),
        },
      };
      planned = { id, name: request.pull.exportName, ...(bitmap ? { bitmap } : {}), command };
      exports.push(command);
    }

    disks.push({
      target: disk.target,
      sourceNode: disk.formatNode,
      virtualSize: disk.virtualSize,
      sync,
      ...(incremental !== undefined ? { incrementalFrom: incremental } : {}),
      jobId,
      targetNode: formatNode,
      targetFileNode: fileNode,
      path,
      created,
      format,
      ...(tempBitmap ? { tempBitmap } : {}),
      ...(planned ? { export: planned } : {}),
    });
  }

  if (mode === 'pull' && input.nbdServer) {
    const args: Record<string, unknown> = { addr: nbdAddr(input.nbdServer) };
    if (input.nbdTls) {
      const id = naming.tlsObjectId?.() ?? 'fleece-nbd-tls';
      provision.push({ kind: 'add-tls-object', id, type: input.nbdTls.type, dir: input.nbdTls.dir, command: { execute: 'object-add', arguments: tlsCredsObjectArguments({ ...input.nbdTls, id }) } });
      args['tls-creds'] = id;
    }
    provision.push({ kind: 'start-nbd-server', command: { execute: 'nbd-server-start', arguments: args } });
  } else if (input.nbdTls) {
    throw new InvalidInputError('TLS credentials were given for a push backup, which exports nothing over NBD');
  }

  const checkpointBitmaps = input.checkpointActions
    .filter((a) => a.type === 'block-dirty-bitmap-add')
    .map((a) => ({ node: String(a.data.node), name: String(a.data.name) }));

  return { mode, disks, provision, transaction, checkpointBitmaps, exports };
}

/** The QMP commands the plan issues, in order (provisioning, the transaction, the exports): for golden tests and logs. */
export function planCommands(plan: BackupPlan): PlanCommand[] {
  const commands: PlanCommand[] = [];
  for (const step of plan.provision) if (step.kind !== 'create-file') commands.push(step.command);
  commands.push({ execute: 'transaction', arguments: { actions: plan.transaction } });
  commands.push(...plan.exports);
  return commands;
}
