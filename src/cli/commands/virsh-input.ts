// The files the virsh verbs read (backup and checkpoint XML), checked before anything is started.
import { readFile } from 'node:fs/promises';
import { parseBackupXml } from '../../app/vocabulary.js';
import { parseCheckpointXml } from '../../app/vocabulary.js';
import { FleeceError, InvalidInputError, describeError } from '../../util/errors.js';

export type XmlFileKind = 'backup' | 'checkpoint';

const ROOT: Record<XmlFileKind, string> = { backup: '<domainbackup>', checkpoint: '<domaincheckpoint>' };

/**
 * Reads a backup or checkpoint XML file and checks that it parses, so that bad input fails before QEMU is touched.
 * @throws InvalidInputError naming the file: missing or unreadable, or not valid XML of that kind (with the parser's
 *   reason).
 */
export async function readXmlFile(path: string, kind: XmlFileKind): Promise<string> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    const reason = code === 'ENOENT' ? 'no such file' : code === 'EISDIR' ? 'it is a directory' : describeError(error);
    throw new InvalidInputError(`cannot read the ${kind} XML file '${path}': ${reason}`, {
      hint: `give the path of a ${ROOT[kind]} XML file`,
      cause: error,
    });
  }
  try {
    if (kind === 'backup') parseBackupXml(text);
    else parseCheckpointXml(text);
  } catch (error) {
    if (error instanceof FleeceError && error.code === 'INVALID_INPUT') {
      throw new InvalidInputError(`the ${kind} XML file '${path}' is not valid: ${error.message}`, { cause: error });
    }
    throw error;
  }
  return text;
}
