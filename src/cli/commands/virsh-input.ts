// The files the virsh verbs read (backup and checkpoint XML), checked before anything is started.
import { open } from 'node:fs/promises';
import { parseBackupXml } from '../../app/vocabulary.js';
import { parseCheckpointXml, MAX_XML_BYTES } from '../../app/vocabulary.js';
import { FleeceError, InvalidInputError, describeError } from '../../util/errors.js';

export type XmlFileKind = 'backup' | 'checkpoint';

const ROOT: Record<XmlFileKind, string> = { backup: '<domainbackup>', checkpoint: '<domaincheckpoint>' };

/** The file's text; refused by its size before it is read, and read no further than the limit (a pipe, a growing file). */
async function readBounded(path: string, kind: XmlFileKind): Promise<string> {
  const tooLarge = () => new InvalidInputError(`the ${kind} XML file '${path}' is larger than ${MAX_XML_BYTES / 1024 / 1024} MiB`, {
    hint: `give the path of a ${ROOT[kind]} XML file (they are a few KiB)`,
  });
  const handle = await open(path, 'r');
  try {
    if ((await handle.stat()).size > MAX_XML_BYTES) throw tooLarge();
    const chunks: Buffer[] = [];
    let length = 0;
    for (;;) {
      const chunk = Buffer.alloc(64 * 1024);
      const { bytesRead } = await handle.read(chunk, 0, chunk.length);
      if (bytesRead === 0) break;
      length += bytesRead;
      if (length > MAX_XML_BYTES) throw tooLarge();
      chunks.push(chunk.subarray(0, bytesRead));
    }
    return Buffer.concat(chunks).toString('utf8');
  } finally {
    await handle.close();
  }
}

/**
 * Reads a backup or checkpoint XML file and checks that it parses, so that bad input fails before QEMU is touched.
 * @throws InvalidInputError naming the file: missing or unreadable, or not valid XML of that kind (with the parser's
 *   reason).
 */
export async function readXmlFile(path: string, kind: XmlFileKind): Promise<string> {
  let text: string;
  try {
    text = await readBounded(path, kind);
  } catch (error) {
    if (error instanceof FleeceError) throw error;
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
