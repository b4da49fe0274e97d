// Persists each VM's checkpoint metadata as libvirt-redefinable XML files plus a current pointer, written atomically.
import { mkdir, readFile, readdir, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { writeFileAtomic, fsyncDirectory } from '../util/atomic-file.js';
import { FleeceError, InvalidInputError, IntegrityError, NotFoundError } from '../util/errors.js';
import { getLogger } from '../util/logger.js';
import { CheckpointChain, type CheckpointRemoval } from './chain.js';
import { formatCheckpointXml, parseCheckpointXml } from './checkpoint-xml.js';
import { validateCheckpointName, type Checkpoint } from './model.js';

const log = getLogger('checkpoint-store');

const VM_NAME_PATTERN = /^[A-Za-z0-9_][A-Za-z0-9_.+:@-]{0,199}$/;
const CURRENT_FILE = 'current-checkpoint';

/**
 * Checkpoint metadata on disk:
 *
 *     <stateDir>/vms/<vm>/checkpoints/<name>.xml   one per checkpoint, libvirt's checkpoint XML (redefinable)
 *     <stateDir>/vms/<vm>/current-checkpoint       the current checkpoint's name and a newline; absent = none
 *
 * Every write goes through a temporary file, fsync and rename, so a crash leaves the old or the new file.
 * The store holds no state of its own: a new store on the same directory sees the same checkpoints.
 */
export class CheckpointStore {
  constructor(readonly stateDir: string) {}

  /** `<stateDir>/vms/<vm>`. @throws InvalidInputError for a VM name that is not safe as a directory name. */
  vmDir(vm: string): string {
    if (!VM_NAME_PATTERN.test(vm)) {
      throw new InvalidInputError(`VM name '${vm}' cannot be used as a state directory name`, {
        hint: 'use 1-200 characters from A-Z a-z 0-9 _ . + : @ -, starting with a letter, digit or _',
      });
    }
    return join(this.stateDir, 'vms', vm);
  }

  /** The directory holding a VM's checkpoint XML files. */
  checkpointDir(vm: string): string {
    return join(this.vmDir(vm), 'checkpoints');
  }

  /** The file of one checkpoint. @throws InvalidInputError for an invalid name. */
  checkpointFile(vm: string, name: string): string {
    validateCheckpointName(name);
    return join(this.checkpointDir(vm), `${name}.xml`);
  }

  /**
   * Every checkpoint of a VM, oldest first; none when the VM has no state yet.
   * @throws IntegrityError naming the file when one is unreadable, corrupt, or named unlike its checkpoint.
   */
  async list(vm: string): Promise<Checkpoint[]> {
    const dir = this.checkpointDir(vm);
    let names: string[];
    try {
      names = await readdir(dir);
    } catch (error) {
      if (isErrno(error, 'ENOENT')) return [];
      throw new IntegrityError(`cannot read the checkpoint directory ${dir}: ${String(error)}`, { cause: error });
    }
    const files = names.filter((name) => name.endsWith('.xml') && !name.startsWith('.')).sort();
    const checkpoints = await Promise.all(files.map((file) => this.readCheckpointFile(join(dir, file), file.slice(0, -'.xml'.length))));
    return checkpoints.sort((a, b) => a.creationTime - b.creationTime || (a.name < b.name ? -1 : 1));
  }

  /**
   * Loads a VM's checkpoints and current pointer into a chain.
   * @throws IntegrityError naming the file for a corrupt checkpoint file, a dangling parent, or a current pointer
   * naming a checkpoint that does not exist.
   */
  async load(vm: string): Promise<CheckpointChain> {
    const checkpoints = await this.list(vm);
    const current = await this.readCurrent(vm);
    try {
      return CheckpointChain.from(checkpoints, current);
    } catch (error) {
      if (!(error instanceof FleeceError)) throw error;
      throw new IntegrityError(`the checkpoint metadata in ${this.vmDir(vm)} is inconsistent: ${error.message}`, {
        cause: error,
        hint: `fix or remove the files named above under ${this.vmDir(vm)}`,
      });
    }
  }

  /**
   * Writes (or rewrites) one checkpoint's XML file atomically.
   * @throws InvalidInputError for an invalid VM or checkpoint name.
   */
  async save(vm: string, cp: Checkpoint): Promise<void> {
    const file = this.checkpointFile(vm, cp.name);
    await mkdir(this.checkpointDir(vm), { recursive: true });
    await writeFileAtomic(file, formatCheckpointXml(cp));
    log.debug({ vm, checkpoint: cp.name, file }, 'checkpoint saved');
  }

  /**
   * Removes one checkpoint's file.
   * @throws NotFoundError when it does not exist.
   */
  async delete(vm: string, name: string): Promise<void> {
    const file = this.checkpointFile(vm, name);
    try {
      await unlink(file);
    } catch (error) {
      if (isErrno(error, 'ENOENT')) throw new NotFoundError(`checkpoint '${name}' of VM '${vm}' has no metadata file (${file})`, { cause: error });
      throw error;
    }
    await fsyncDirectory(this.checkpointDir(vm));
    log.debug({ vm, checkpoint: name, file }, 'checkpoint deleted');
  }

  /** Records the current checkpoint (undefined: none). @throws InvalidInputError for an invalid name. */
  async setCurrent(vm: string, name: string | undefined): Promise<void> {
    const file = join(this.vmDir(vm), CURRENT_FILE);
    if (name === undefined) {
      await unlink(file).catch((error: unknown) => {
        if (!isErrno(error, 'ENOENT')) throw error;
      });
      return;
    }
    validateCheckpointName(name);
    await mkdir(this.vmDir(vm), { recursive: true });
    await writeFileAtomic(file, `${name}\n`);
  }

  /**
   * The recorded current checkpoint, or undefined.
   * @throws IntegrityError naming the pointer file when its content is not a checkpoint name.
   */
  async readCurrent(vm: string): Promise<string | undefined> {
    const file = join(this.vmDir(vm), CURRENT_FILE);
    let text: string;
    try {
      text = await readFile(file, 'utf8');
    } catch (error) {
      if (isErrno(error, 'ENOENT')) return undefined;
      throw new IntegrityError(`cannot read the current-checkpoint file ${file}: ${String(error)}`, { cause: error });
    }
    const name = text.trim();
    try {
      validateCheckpointName(name);
    } catch (error) {
      throw new IntegrityError(`the current-checkpoint file ${file} is corrupt: ${(error as Error).message}`, {
        cause: error,
        hint: `write the current checkpoint's name into it or remove it`,
      });
    }
    return name;
  }

  /**
   * Persists a new checkpoint made current (its file first, then the pointer).
   * @throws InvalidInputError for invalid names.
   */
  async saveNew(vm: string, cp: Checkpoint, chain: CheckpointChain): Promise<void> {
    await this.save(vm, cp);
    await this.setCurrent(vm, chain.current);
  }

  /**
   * Persists what CheckpointChain.remove() did: re-parented children first, then the current pointer, then the
   * removed file, so that a crash in between leaves a loadable chain.
   * @throws NotFoundError when the removed checkpoint's file is already gone.
   */
  async saveRemoval(vm: string, removal: CheckpointRemoval): Promise<void> {
    for (const child of removal.reparented) await this.save(vm, child);
    if (removal.currentChanged) await this.setCurrent(vm, removal.current);
    await this.delete(vm, removal.removed.name);
  }

  private async readCheckpointFile(file: string, expectedName: string): Promise<Checkpoint> {
    let text: string;
    try {
      text = await readFile(file, 'utf8');
    } catch (error) {
      throw new IntegrityError(`cannot read checkpoint file ${file}: ${String(error)}`, { cause: error });
    }
    const corrupt = (reason: string, cause?: unknown): IntegrityError =>
      new IntegrityError(`checkpoint file ${file} is corrupt: ${reason}`, { cause, hint: 'restore the file from a backup, or remove it and the bitmaps it names' });
    let cp;
    try {
      cp = parseCheckpointXml(text);
    } catch (error) {
      throw corrupt((error as Error).message, error);
    }
    if (cp.name !== expectedName) throw corrupt(`it defines checkpoint '${cp.name}' but is named ${expectedName}.xml`);
    if (cp.creationTime === undefined) throw corrupt('<creationTime> is missing');
    return { ...cp, creationTime: cp.creationTime };
  }
}

function isErrno(error: unknown, code: string): boolean {
  return typeof error === 'object' && error !== null && (error as { code?: unknown }).code === code;
}
