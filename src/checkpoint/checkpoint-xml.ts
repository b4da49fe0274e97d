// libvirt's checkpoint XML (<domaincheckpoint>) in and out, and the small libvirt-style XML reader/writer it is built on.
import { XMLParser, XMLValidator } from 'fast-xml-parser';
import { InvalidInputError } from '../util/errors.js';
import { validateCheckpointName, type Checkpoint, type CheckpointDefinition, type CheckpointDisk } from './model.js';

// ---------------------------------------------------------------------------------------------------------------
// Generic XML: a plain element tree with source line numbers, and a writer in libvirt's output style.
// (The backup definition reuses these; they live here because checkpoint is the lower layer.)
// ---------------------------------------------------------------------------------------------------------------

/** One XML element: attributes, child elements, and its text (trimmed, for elements without children). */
export interface XmlElement {
  name: string;
  attributes: Record<string, string>;
  children: XmlElement[];
  text: string;
  /** 1-based line of the start tag in the source, when parsed from text. */
  line?: number;
}

type OrderedNode = Record<string, unknown>;

/** The largest XML document fleece reads: 10 MiB, virsh's own limit for an XML file (VSH_MAX_XML_FILE). */
export const MAX_XML_BYTES = 10 * 1024 * 1024;

const parser = new XMLParser({
  htmlEntities: false, // and no DOCTYPE gets here (checkBounded): the five predefined entities only
  ignoreAttributes: false,
  attributeNamePrefix: '',
  parseTagValue: false,
  parseAttributeValue: false,
  preserveOrder: true,
  trimValues: true,
  commentPropName: false,
});

/**
 * Throws InvalidInputError when `xml` is larger than MAX_XML_BYTES, has a DOCTYPE (entity definitions: a billion
 * laughs, external files) or refers to any entity but the five XML predefines (character references too: the parser would keep them literally).
 */
export function checkBounded(xml: string, what: string): void {
  if (Buffer.byteLength(xml, 'utf8') > MAX_XML_BYTES) {
    throw new InvalidInputError(`${what} is larger than ${MAX_XML_BYTES / 1024 / 1024} MiB`, { hint: 'libvirt XML documents are a few KiB: pass the right file' });
  }
  const doctype = /<!DOCTYPE|<!ENTITY/i.exec(xml);
  if (doctype) {
    throw new InvalidInputError(`${what} has a ${doctype[0].slice(2).toUpperCase()} declaration (line ${lineOf(xml, doctype.index)}): fleece reads no DTD and no entity definitions`, { hint: 'remove the declaration and write the values out' });
  }
  const entity = /&(?!(?:amp|lt|gt|quot|apos);)[^;\s<&]*;?/.exec(xml);
  if (entity) {
    throw new InvalidInputError(`${what} refers to the entity '${entity[0]}' (line ${lineOf(xml, entity.index)}), which fleece does not expand`, { hint: 'write the value out; only &amp; &lt; &gt; &quot; and &apos; are allowed' });
  }
}

function lineOf(text: string, index: number): number {
  let line = 1;
  for (let i = text.indexOf('\n'); i !== -1 && i < index; i = text.indexOf('\n', i + 1)) line++;
  return line;
}

/**
 * Parses an XML document into an element tree and checks its root element's name.
 * @throws InvalidInputError naming the line and column when the text is not well formed, and naming the root
 * element when it is not `<rootName>`.
 */
export function parseXmlDocument(xml: string, rootName: string, what: string): XmlElement {
  if (typeof xml !== 'string' || xml.trim() === '') {
    throw new InvalidInputError(`${what} is empty`, { hint: `pass a <${rootName}> document` });
  }
  checkBounded(xml, what);
  const valid = XMLValidator.validate(xml);
  if (valid !== true) {
    const { line, col, msg } = valid.err;
    const at = col === undefined ? `line ${line}` : `line ${line}, column ${col}`;
    throw new InvalidInputError(`${what} is not well-formed XML (${at}): ${msg}`, { hint: 'fix the XML syntax' });
  }
  let nodes: OrderedNode[];
  try {
    nodes = parser.parse(xml) as OrderedNode[];
  } catch (error) {
    throw new InvalidInputError(`${what} cannot be parsed: ${String(error)}`, { cause: error, hint: 'fix the XML syntax' });
  }
  const lines = startTagLines(xml);
  let index = 0;
  const convert = (node: OrderedNode): XmlElement | undefined => {
    const name = Object.keys(node).find((key) => key !== ':@');
    if (name === undefined || name === '#text' || name.startsWith('?') || name.startsWith('!')) return undefined;
    const line = lines[index++];
    const attributes: Record<string, string> = {};
    for (const [key, value] of Object.entries((node[':@'] as Record<string, unknown> | undefined) ?? {})) {
      attributes[key] = String(value);
    }
    const children: XmlElement[] = [];
    let text = '';
    for (const child of node[name] as OrderedNode[]) {
      if ('#text' in child) text += String(child['#text']);
      else {
        const element = convert(child);
        if (element) children.push(element);
      }
    }
    return { name, attributes, children, text: text.trim(), ...(line === undefined ? {} : { line }) };
  };
  const roots = nodes.map(convert).filter((element): element is XmlElement => element !== undefined);
  if (roots.length !== 1) {
    throw new InvalidInputError(`${what} has ${roots.length} top-level elements`, { hint: `it must hold exactly one <${rootName}> element` });
  }
  const root = roots[0];
  if (root.name !== rootName) {
    throw new InvalidInputError(`${what}: the root element is <${root.name}>${lineSuffix(root)}`, {
      hint: `a ${what} starts with <${rootName}>`,
    });
  }
  return root;
}

/** The line of every start tag in document order (comments, CDATA, PIs and the doctype blanked out first). */
function startTagLines(xml: string): number[] {
  const blanked = xml.replace(/<!--[\s\S]*?-->|<!\[CDATA\[[\s\S]*?\]\]>|<\?[\s\S]*?\?>|<!DOCTYPE[^>]*>/g, (match) =>
    match.replace(/[^\n]/g, ' '),
  );
  const lines: number[] = [];
  let line = 1;
  let last = 0;
  for (const match of blanked.matchAll(/<[A-Za-z_]/g)) {
    for (let i = last; i < match.index; i++) if (blanked.charCodeAt(i) === 10) line++;
    last = match.index;
    lines.push(line);
  }
  return lines;
}

function lineSuffix(element: XmlElement): string {
  return element.line === undefined ? '' : ` (line ${element.line})`;
}

/** `<disk name='vda'>` (line 4): how error messages name an element. */
export function describeElement(element: XmlElement, keyAttributes: readonly string[] = ['name']): string {
  const attrs = keyAttributes
    .filter((key) => element.attributes[key] !== undefined)
    .map((key) => ` ${key}='${element.attributes[key]}'`)
    .join('');
  return `<${element.name}${attrs}>${lineSuffix(element)}`;
}

/**
 * Refuses attributes and child elements not in the allowed lists (a typo must not be silently ignored).
 * @throws InvalidInputError naming the element, the unknown name and what is allowed.
 */
export function checkAllowed(element: XmlElement, attributes: readonly string[], children: readonly string[], where = describeElement(element)): void {
  for (const key of Object.keys(element.attributes)) {
    if (!attributes.includes(key)) {
      throw new InvalidInputError(`${where}: unknown attribute '${key}'`, {
        hint: attributes.length ? `allowed attributes: ${attributes.join(', ')}` : 'this element takes no attributes',
      });
    }
  }
  for (const child of element.children) {
    if (!children.includes(child.name)) {
      throw new InvalidInputError(`${where}: unexpected element <${child.name}>${lineSuffix(child)}`, {
        hint: children.length ? `allowed here: ${children.map((name) => `<${name}>`).join(', ')}` : 'this element takes no child elements',
      });
    }
  }
  if (children.length > 0 && element.children.length > 0 && element.text !== '') {
    throw new InvalidInputError(`${where}: unexpected text '${element.text}'`, { hint: 'remove the text' });
  }
}

/**
 * The only child named `name`, or undefined.
 * @throws InvalidInputError when there are several.
 */
export function singleChild(element: XmlElement, name: string, where = describeElement(element)): XmlElement | undefined {
  const found = element.children.filter((child) => child.name === name);
  if (found.length > 1) {
    throw new InvalidInputError(`${where}: <${name}> appears ${found.length} times${lineSuffix(found[1])}`, { hint: `keep one <${name}>` });
  }
  return found[0];
}

/**
 * An attribute whose value must be one of `values`, or undefined when absent.
 * @throws InvalidInputError naming the attribute, the value and the allowed values.
 */
export function enumAttribute<T extends string>(element: XmlElement, name: string, values: readonly T[], where = describeElement(element)): T | undefined {
  const value = element.attributes[name];
  if (value === undefined) return undefined;
  if (!(values as readonly string[]).includes(value)) {
    throw new InvalidInputError(`${where}: ${name}='${value}' is not valid`, { hint: `use ${values.map((v) => `${name}='${v}'`).join(' or ')}` });
  }
  return value as T;
}

/**
 * A non-empty attribute, or undefined when absent.
 * @throws InvalidInputError when present but empty.
 */
export function stringAttribute(element: XmlElement, name: string, where = describeElement(element)): string | undefined {
  const value = element.attributes[name];
  if (value === undefined) return undefined;
  if (value.trim() === '') throw new InvalidInputError(`${where}: ${name}='' is empty`, { hint: `give ${name} a value or remove it` });
  return value;
}

/** Builds an element for output; attributes whose value is undefined are left out, in the order given. */
export function xmlElement(name: string, attributes: Record<string, string | number | undefined> = {}, content: XmlElement[] | string = []): XmlElement {
  const attrs: Record<string, string> = {};
  for (const [key, value] of Object.entries(attributes)) if (value !== undefined) attrs[key] = String(value);
  return typeof content === 'string'
    ? { name, attributes: attrs, children: [], text: content }
    : { name, attributes: attrs, children: content, text: '' };
}

/** Escapes text and attribute values the way libvirt does (virBufferEscapeString). */
export function escapeXml(value: string): string {
  return value.replace(/[&<>'"]/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', "'": '&apos;', '"': '&quot;' })[c] ?? c);
}

/** Writes an element the way libvirt formats XML: two-space indent, single-quoted attributes, `<empty/>`, final newline. */
export function formatXmlElement(element: XmlElement, indent = ''): string {
  const attrs = Object.entries(element.attributes)
    .map(([key, value]) => ` ${key}='${escapeXml(value)}'`)
    .join('');
  if (element.children.length === 0) {
    return element.text === ''
      ? `${indent}<${element.name}${attrs}/>\n`
      : `${indent}<${element.name}${attrs}>${escapeXml(element.text)}</${element.name}>\n`;
  }
  const inner = element.children.map((child) => formatXmlElement(child, `${indent}  `)).join('');
  return `${indent}<${element.name}${attrs}>\n${inner}${indent}</${element.name}>\n`;
}

/** A copy of an element tree without source line numbers (for storing and comparing). */
export function stripLines(element: XmlElement): XmlElement {
  return { name: element.name, attributes: { ...element.attributes }, children: element.children.map(stripLines), text: element.text };
}

// ---------------------------------------------------------------------------------------------------------------
// <domaincheckpoint>
// ---------------------------------------------------------------------------------------------------------------

const CHECKPOINT_ROOT = 'domaincheckpoint';

/**
 * Parses libvirt checkpoint XML (`<domaincheckpoint>`: name, description, parent, creationTime, disks, domain).
 * The `size` attribute of a disk (output of `--size`) is checked and dropped; a disk's bitmap name defaults to the
 * checkpoint's name. Names are validated.
 * @throws InvalidInputError naming the element or attribute that is wrong, and the line when known.
 */
export function parseCheckpointXml(xml: string): CheckpointDefinition {
  const root = parseXmlDocument(xml, CHECKPOINT_ROOT, 'checkpoint XML');
  const where = describeElement(root);
  checkAllowed(root, [], ['name', 'description', 'parent', 'creationTime', 'disks', 'domain'], where);

  const nameElement = singleChild(root, 'name', where);
  if (nameElement === undefined) {
    throw new InvalidInputError(`${where}: <name> is missing`, { hint: 'add <name>cp1</name>' });
  }
  checkAllowed(nameElement, [], []);
  validateCheckpointName(nameElement.text, `${describeElement(nameElement)}: checkpoint name`);
  const name = nameElement.text;

  const cp: CheckpointDefinition = { name, disks: [] };
  const description = singleChild(root, 'description', where);
  if (description !== undefined) {
    checkAllowed(description, [], []);
    if (description.text !== '') cp.description = description.text;
  }

  const parent = singleChild(root, 'parent', where);
  if (parent !== undefined) {
    checkAllowed(parent, [], ['name']);
    const parentName = singleChild(parent, 'name');
    if (parentName === undefined) {
      throw new InvalidInputError(`${describeElement(parent)}: <name> is missing`, { hint: 'write <parent><name>cp0</name></parent>' });
    }
    checkAllowed(parentName, [], []);
    validateCheckpointName(parentName.text, `${describeElement(parentName)}: parent checkpoint name`);
    if (parentName.text === name) {
      throw new InvalidInputError(`${describeElement(parent)}: checkpoint '${name}' cannot be its own parent`, { hint: 'name another checkpoint or remove <parent>' });
    }
    cp.parent = parentName.text;
  }

  const creation = singleChild(root, 'creationTime', where);
  if (creation !== undefined) {
    checkAllowed(creation, [], []);
    if (!/^\d{1,15}$/.test(creation.text)) {
      throw new InvalidInputError(`${describeElement(creation)}: '${creation.text}' is not a time`, { hint: 'give Unix seconds, e.g. <creationTime>1700000000</creationTime>' });
    }
    cp.creationTime = Number(creation.text);
  }

  const disks = singleChild(root, 'disks', where);
  if (disks !== undefined) {
    checkAllowed(disks, [], ['disk']);
    const seen = new Set<string>();
    for (const disk of disks.children) cp.disks.push(parseCheckpointDisk(disk, name, seen));
  }

  const domain = singleChild(root, 'domain', where);
  if (domain !== undefined) cp.domain = stripLines(domain);
  return cp;
}

function parseCheckpointDisk(disk: XmlElement, checkpointName: string, seen: Set<string>): CheckpointDisk {
  checkAllowed(disk, ['name', 'checkpoint', 'bitmap', 'size'], []);
  const where = describeElement(disk);
  const diskName = stringAttribute(disk, 'name', where);
  if (diskName === undefined) throw new InvalidInputError(`${where}: the name attribute is missing`, { hint: "write <disk name='vda'/>" });
  if (seen.has(diskName)) throw new InvalidInputError(`${where}: disk '${diskName}' is listed twice`, { hint: 'keep one <disk> per disk' });
  seen.add(diskName);
  const kind = enumAttribute(disk, 'checkpoint', ['bitmap', 'no'] as const, where) ?? 'bitmap';
  const bitmap = stringAttribute(disk, 'bitmap', where);
  const size = disk.attributes.size;
  if (size !== undefined && !/^\d+$/.test(size)) {
    throw new InvalidInputError(`${where}: size='${size}' is not a byte count`, { hint: 'remove size (it is output only)' });
  }
  if (kind === 'no') {
    if (bitmap !== undefined) {
      throw new InvalidInputError(`${where}: bitmap='${bitmap}' is set but checkpoint='no'`, { hint: "remove bitmap or use checkpoint='bitmap'" });
    }
    return { name: diskName, checkpoint: 'no' };
  }
  if (bitmap !== undefined) validateCheckpointName(bitmap, `${where}: bitmap name`);
  // libvirt names the bitmap after the checkpoint unless told otherwise.
  return { name: diskName, checkpoint: 'bitmap', bitmap: bitmap ?? checkpointName };
}

/** Options of formatCheckpointXml. */
export interface FormatCheckpointOptions {
  /** Bytes of dirty data per disk (`--size`): written as `size=` on the disk's element. */
  sizes?: Record<string, number>;
  /** Leave out the `<domain>` element (`--no-domain`). */
  noDomain?: boolean;
}

/**
 * Writes checkpoint XML in libvirt's output shape (name, description, parent, creationTime, disks, domain),
 * which libvirt and fleece can redefine from.
 */
export function formatCheckpointXml(cp: Checkpoint | CheckpointDefinition, options: FormatCheckpointOptions = {}): string {
  const children: XmlElement[] = [xmlElement('name', {}, cp.name)];
  if (cp.description !== undefined) children.push(xmlElement('description', {}, cp.description));
  if (cp.parent !== undefined) children.push(xmlElement('parent', {}, [xmlElement('name', {}, cp.parent)]));
  if (cp.creationTime !== undefined) children.push(xmlElement('creationTime', {}, String(cp.creationTime)));
  if (cp.disks.length > 0) {
    children.push(
      xmlElement(
        'disks',
        {},
        cp.disks.map((disk) =>
          disk.checkpoint === 'no'
            ? xmlElement('disk', { name: disk.name, checkpoint: 'no' })
            : xmlElement('disk', { name: disk.name, checkpoint: 'bitmap', bitmap: disk.bitmap ?? cp.name, size: options.sizes?.[disk.name] }),
        ),
      ),
    );
  }
  if (cp.domain !== undefined && !options.noDomain) children.push(cp.domain);
  return formatXmlElement(xmlElement(CHECKPOINT_ROOT, {}, children));
}
