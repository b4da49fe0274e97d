// The domain XML of a VM-level restore (pure): a backup's live `virsh dumpxml` rewritten into a new domain on the restored images.
//
// What changes (everything else is kept as it was, in its order; comments and CDATA too):
// - `<domain id=…>` removed; `<name>` set to the new name; `<uuid>` removed and the SMBIOS `<sysinfo>` system uuid
//   entry removed (libvirt would take the domain uuid from it), so libvirt makes a new uuid; a `<genid>` value is
//   emptied (libvirt makes a new one, which tells the guest it runs from a restored copy).
// - Live-only state of the old run removed: `<alias>` elements (not user aliases, `ua-…`); domain `<seclabel>`s'
//   `<imagelabel>`, and dynamic ones' `<label>` (a dynamic seclabel left with no `<baselabel>` is what libvirt makes at
//   start, and is removed whole); in every disk the `index` attributes, `<backingStore>` and `<mirror>`; pty paths
//   (`<source path='/dev/pts/N'>`, `tty=`); the guest agent's generated socket path (under `…/libvirt/qemu/channel/`)
//   and its `state=`; autoport graphics' `port`/`tlsPort`; a network listen's resolved `address`.
// - Interfaces: `<mac>` removed (libvirt makes a new one: no MAC clash with the original); generated tap names
//   (`<target dev='vnet3'>`, macvtap…, macvlan…, unless managed='no') removed; `<source>`'s `portid`, and for
//   type='network' the resolved `bridge`/`dev`/`mode`.
// - Each restored disk: type='file', `<source file=…>` the restored image (its `<seclabel>`s kept; the old storage's
//   attributes and children such as `<host>`, `<slices>`, `<encryption>`, `<reservations>` dropped, the restored image
//   being plain), `<driver type=…>` the restored format, disk-level `<auth>`/`<encryption>` dropped, device='lun' made
//   device='disk' (without sgio/rawio: a file is no SCSI device).
// - Disks that were not restored (cdrom, floppy, read-only, skipped) keep their source: a cdrom keeps its medium.
// - A UEFI `<nvram>` keeps its attributes but loses its path (the old VM's variable store), so libvirt makes a new one
//   from the template for the new name.
import { XMLParser, XMLValidator } from 'fast-xml-parser';
import { InvalidInputError } from '../util/errors.js';

/** One restored image of a disk. */
export interface RestoredDiskImage {
  path: string;
  format: 'raw' | 'qcow2';
}

export interface DomainRestoreOptions {
  /** The new domain's name. */
  name: string;
  /** The restored images by disk target (`vda`). */
  disks: Record<string, RestoredDiskImage>;
}

// ---------------------------------------------------------------------------------------------------------------
// A lossless element tree: elements (attributes in order), text (decoded, exactly as written), comments, CDATA, PIs.
// ---------------------------------------------------------------------------------------------------------------

interface XmlElementNode { kind: 'element'; name: string; attributes: Record<string, string>; children: XmlNode[] }
type XmlNode =
  | XmlElementNode
  | { kind: 'text'; text: string }
  | { kind: 'comment'; text: string }
  | { kind: 'cdata'; text: string }
  | { kind: 'pi'; name: string; attributes: Record<string, string> };

type OrderedNode = Record<string, unknown>;

const parser = new XMLParser({
  ignoreAttributes: false,
  attributeNamePrefix: '',
  parseTagValue: false,
  parseAttributeValue: false,
  preserveOrder: true,
  trimValues: false,
  processEntities: false, // decoded below: the five XML entities and character references, nothing else
  commentPropName: '#comment',
  cdataPropName: '#cdata',
});

const ENTITIES: Record<string, string> = { amp: '&', lt: '<', gt: '>', apos: "'", quot: '"' };

function decode(raw: string, where: string): string {
  return raw.replace(/&([^;&\s]*);?/g, (match, body: string) => {
    if (!match.endsWith(';')) throw new InvalidInputError(`domain XML: a bare '&' in ${where}`, { hint: 'write &amp;' });
    if (ENTITIES[body] !== undefined) return ENTITIES[body]!;
    const code = /^#x([0-9a-fA-F]+)$/.test(body) ? parseInt(body.slice(2), 16) : /^#([0-9]+)$/.test(body) ? parseInt(body.slice(1), 10) : NaN;
    if (Number.isNaN(code) || code > 0x10ffff) {
      throw new InvalidInputError(`domain XML: unknown entity '&${body};' in ${where}`, { hint: 'only &amp; &lt; &gt; &apos; &quot; and character references are allowed' });
    }
    return String.fromCodePoint(code);
  });
}

function textOf(node: OrderedNode, key: string): string {
  return ((node[key] as OrderedNode[] | undefined) ?? []).map((c) => String(c['#text'] ?? '')).join('');
}

function convert(node: OrderedNode): XmlNode {
  if ('#text' in node) return { kind: 'text', text: decode(String(node['#text']), 'text') };
  if ('#comment' in node) return { kind: 'comment', text: textOf(node, '#comment') };
  if ('#cdata' in node) return { kind: 'cdata', text: textOf(node, '#cdata') };
  const name = Object.keys(node).find((key) => key !== ':@')!;
  const attributes: Record<string, string> = {};
  for (const [key, value] of Object.entries((node[':@'] as Record<string, unknown> | undefined) ?? {})) {
    // attribute-value normalization (XML 1.0 §3.3.3): literal white space is a space, references are decoded after
    attributes[key] = decode(String(value).replace(/[\t\n\r]/g, ' '), `attribute ${key} of <${name}>`);
  }
  if (name.startsWith('?')) return { kind: 'pi', name: name.slice(1), attributes };
  return { kind: 'element', name, attributes, children: (node[name] as OrderedNode[]).map(convert) };
}

/** The document's top-level nodes and its root element. @throws InvalidInputError. */
function parseDocument(xml: string): { nodes: XmlNode[]; root: XmlElementNode } {
  if (typeof xml !== 'string' || xml.trim() === '') throw new InvalidInputError('the domain XML is empty', { hint: 'the backup carries no guest configuration' });
  if (/<!DOCTYPE/i.test(xml)) {
    throw new InvalidInputError('the domain XML has a <!DOCTYPE> declaration, which fleece refuses (entities could expand it)', { hint: 'remove the DOCTYPE' });
  }
  const text = xml.replace(/\r\n?/g, '\n'); // end-of-line handling (XML 1.0 §2.11)
  const valid = XMLValidator.validate(text);
  if (valid !== true) {
    throw new InvalidInputError(`the domain XML is not well-formed XML (line ${valid.err.line}, column ${valid.err.col}): ${valid.err.msg}`, { hint: 'the stored guest configuration is damaged' });
  }
  const nodes = (parser.parse(text) as OrderedNode[]).map(convert);
  const roots = nodes.filter((n): n is XmlElementNode => n.kind === 'element');
  if (roots.length !== 1 || roots[0]!.name !== 'domain') {
    throw new InvalidInputError(`the domain XML's root is ${roots.map((r) => `<${r.name}>`).join(', ') || 'missing'}, not one <domain>`, { hint: 'pass the output of virsh dumpxml' });
  }
  if (nodes.some((n) => n.kind === 'text' && n.text.trim() !== '')) throw new InvalidInputError('the domain XML has text outside <domain>', { hint: 'pass the output of virsh dumpxml' });
  return { nodes, root: roots[0]! };
}

function escape(value: string, attribute: boolean): string {
  const escaped = value.replace(/[&<>]/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;' })[c]!).replace(/\r/g, '&#13;');
  return attribute ? escaped.replace(/'/g, '&apos;').replace(/"/g, '&quot;').replace(/\n/g, '&#10;').replace(/\t/g, '&#9;') : escaped;
}

function formatAttributes(attributes: Record<string, string>): string {
  return Object.entries(attributes).map(([key, value]) => ` ${key}='${escape(value, true)}'`).join('');
}

/** Writes a node inline, every character of its content as it is (mixed content, text-only elements). */
function formatInline(node: XmlNode): string {
  switch (node.kind) {
    case 'text': return escape(node.text, false);
    case 'comment': return `<!--${node.text}-->`;
    case 'cdata': return `<![CDATA[${node.text}]]>`;
    case 'pi': return `<?${node.name}${Object.entries(node.attributes).map(([k, v]) => ` ${k}="${escape(v, true)}"`).join('')}?>`;
    case 'element':
      return node.children.length === 0
        ? `<${node.name}${formatAttributes(node.attributes)}/>`
        : `<${node.name}${formatAttributes(node.attributes)}>${node.children.map(formatInline).join('')}</${node.name}>`;
  }
}

/**
 * Writes a node in libvirt's style (two-space indent, single quotes, `<empty/>`): an element whose children are
 * elements and comments with white space between them is indented; one with text or CDATA is written as it is.
 */
function formatNode(node: XmlNode, indent: string): string {
  if (node.kind !== 'element') return node.kind === 'text' ? '' : `${indent}${formatInline(node)}\n`;
  const structural = node.children.some((c) => c.kind === 'element' || c.kind === 'comment')
    && node.children.every((c) => c.kind !== 'cdata' && (c.kind !== 'text' || c.text.trim() === ''));
  if (!structural) return `${indent}${formatInline(node)}\n`;
  const inner = node.children.map((c) => formatNode(c, `${indent}  `)).join('');
  return `${indent}<${node.name}${formatAttributes(node.attributes)}>\n${inner}${indent}</${node.name}>\n`;
}

// ---------------------------------------------------------------------------------------------------------------
// Tree helpers
// ---------------------------------------------------------------------------------------------------------------

const elements = (e: XmlElementNode, name?: string): XmlElementNode[] =>
  e.children.filter((c): c is XmlElementNode => c.kind === 'element' && (name === undefined || c.name === name));
const first = (e: XmlElementNode, name: string): XmlElementNode | undefined => elements(e, name)[0];
const element = (name: string, attributes: Record<string, string> = {}, children: XmlNode[] = []): XmlElementNode => ({ kind: 'element', name, attributes, children });

/** Removes the child elements `drop` picks; an element left with nothing but white space becomes empty (`<x/>`). */
function removeChildren(e: XmlElementNode, drop: (child: XmlElementNode) => boolean): void {
  const kept = e.children.filter((c) => c.kind !== 'element' || !drop(c));
  if (kept.length === e.children.length) return;
  e.children = kept.every((c) => c.kind === 'text' && c.text.trim() === '') ? [] : kept;
}

function setText(e: XmlElementNode, text: string): void {
  e.children = [{ kind: 'text', text }];
}

/** Every element below `e` (depth first), with its parent. */
function* descendants(e: XmlElementNode): Generator<{ node: XmlElementNode; parent: XmlElementNode }> {
  for (const child of elements(e)) {
    yield { node: child, parent: e };
    yield* descendants(child);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// The rewrite
// ---------------------------------------------------------------------------------------------------------------

/** Host interface names libvirt generates (VIR_NET_GENERATED_*_PREFIX); a name the user chose is configuration. */
const GENERATED_TAP = /^(vnet|macvtap|macvlan)\d+$/;
/** Where libvirt puts the guest agent's socket when the XML names none (qemu.conf channel_target_dir). */
const GENERATED_CHANNEL_DIR = '/libvirt/qemu/channel/';
const CHARDEVS = ['serial', 'console', 'parallel', 'channel'];

function checkName(name: string): void {
  if (typeof name !== 'string' || name.trim() === '' || name !== name.trim() || /[/\p{Cc}]/u.test(name)) {
    throw new InvalidInputError(`'${name}' is not a usable domain name`, { hint: 'give a non-empty name without "/", control characters or surrounding spaces' });
  }
}

function rewriteSeclabels(domain: XmlElementNode): void {
  removeChildren(domain, (s) => {
    if (s.name !== 'seclabel') return false;
    removeChildren(s, (c) => c.name === 'imagelabel' || (s.attributes.type === 'dynamic' && c.name === 'label'));
    return s.attributes.type === 'dynamic' && first(s, 'baselabel') === undefined;
  });
}

function rewriteInterface(iface: XmlElementNode): void {
  removeChildren(iface, (c) => c.name === 'mac'
    || (c.name === 'target' && iface.attributes.managed !== 'no' && GENERATED_TAP.test(c.attributes.dev ?? '')));
  const source = first(iface, 'source');
  if (!source) return;
  delete source.attributes.portid;
  if (iface.attributes.type === 'network') for (const key of ['bridge', 'dev', 'mode']) delete source.attributes[key];
}

function rewriteChardev(dev: XmlElementNode): void {
  const target = first(dev, 'target');
  if (dev.attributes.type === 'pty') {
    delete dev.attributes.tty;
    for (const source of elements(dev, 'source')) delete source.attributes.path;
    removeChildren(dev, (c) => c.name === 'source' && Object.keys(c.attributes).length === 0 && c.children.every((n) => n.kind === 'text'));
  }
  if (dev.name === 'channel' && target?.attributes.type === 'virtio') {
    delete target.attributes.state;
    const source = first(dev, 'source');
    if (dev.attributes.type === 'unix' && source?.attributes.path?.includes(GENERATED_CHANNEL_DIR)) delete source.attributes.path;
  }
}

function rewriteGraphics(graphics: XmlElementNode): void {
  if (graphics.attributes.autoport === 'yes') {
    delete graphics.attributes.port;
    delete graphics.attributes.tlsPort;
  }
  for (const listen of elements(graphics, 'listen')) if (listen.attributes.type === 'network') delete listen.attributes.address;
}

/** Removes what a running disk shows of the old run: index attributes, the probed backing chain, a block job's mirror. */
function stripDiskRuntime(disk: XmlElementNode): void {
  removeChildren(disk, (c) => c.name === 'backingStore' || c.name === 'mirror');
  for (const source of elements(disk, 'source')) delete source.attributes.index;
}

function pointDiskAt(disk: XmlElementNode, image: RestoredDiskImage): void {
  disk.attributes.type = 'file';
  if (disk.attributes.device === 'lun') {
    disk.attributes.device = 'disk';
    delete disk.attributes.sgio;
    delete disk.attributes.rawio;
  }
  const old = first(disk, 'source');
  // the restored image is a plain local file: of the old source only its startup policy and seclabels still apply
  const source = element('source', {
    file: image.path,
    ...(old?.attributes.startupPolicy !== undefined ? { startupPolicy: old.attributes.startupPolicy } : {}),
  }, old ? elements(old, 'seclabel') : []);
  removeChildren(disk, (c) => c.name === 'auth' || c.name === 'encryption');
  let driver = first(disk, 'driver');
  if (!driver) {
    driver = element('driver', { name: 'qemu' });
    disk.children.unshift(driver);
  }
  driver.attributes.type = image.format;
  if (old) disk.children[disk.children.indexOf(old)] = source;
  else disk.children.splice(disk.children.indexOf(driver) + 1, 0, source);
}

/**
 * The domain XML of a restored VM: `xml` (a domain's XML as `virsh dumpxml` gave it at backup time, live or not)
 * with the new name, no uuid and no MACs (libvirt makes new ones), without the old run's live-only state, and each
 * disk in `disks` pointing at its restored image. See the module header for every rule.
 * @throws InvalidInputError when the XML is not one well-formed `<domain>`, has a DOCTYPE or unknown entities, when
 *   the name is unusable, or when `disks` names a target that is not a disk of the domain (or is a cdrom/floppy).
 */
export function rewriteDomainForRestore(xml: string, options: DomainRestoreOptions): string {
  checkName(options.name);
  const { nodes, root: domain } = parseDocument(xml);

  delete domain.attributes.id;
  const name = first(domain, 'name');
  if (name) setText(name, options.name);
  else domain.children.unshift(element('name', {}, [{ kind: 'text', text: options.name }]));
  removeChildren(domain, (c) => c.name === 'uuid');
  for (const genid of elements(domain, 'genid')) genid.children = [];
  for (const system of elements(domain, 'sysinfo').filter((s) => s.attributes.type === 'smbios').flatMap((s) => elements(s, 'system'))) {
    removeChildren(system, (entry) => entry.name === 'entry' && entry.attributes.name === 'uuid');
  }
  for (const nvram of elements(domain, 'os').flatMap((os) => elements(os, 'nvram'))) nvram.children = [];
  rewriteSeclabels(domain);

  const devices = first(domain, 'devices');
  if (devices) {
    for (const { node, parent } of [...descendants(devices)]) {
      if (node.name === 'alias' && !(node.attributes.name ?? '').startsWith('ua-')) removeChildren(parent, (c) => c === node);
    }
  }
  const disks = devices ? elements(devices, 'disk') : [];
  const targets = new Map(disks.map((d) => [first(d, 'target')?.attributes.dev, d] as const));
  for (const [target, image] of Object.entries(options.disks)) {
    const disk = targets.get(target);
    const known = [...targets.keys()].filter((t) => t !== undefined).join(', ') || 'none';
    if (!disk) throw new InvalidInputError(`disk ${target} is not a disk of the domain in the backup (its disks: ${known})`, { hint: 'restore only the disks the domain XML lists' });
    const device = disk.attributes.device ?? 'disk';
    if (device !== 'disk' && device !== 'lun') throw new InvalidInputError(`disk ${target} of the domain is a ${device}, not a disk image fleece restores`, { hint: `leave ${target} out` });
    if (typeof image.path !== 'string' || !image.path.startsWith('/')) throw new InvalidInputError(`the restored image of disk ${target} is not an absolute path: '${image.path}'`, { hint: 'give absolute paths' });
    if (image.format !== 'raw' && image.format !== 'qcow2') throw new InvalidInputError(`the restored image of disk ${target} has format '${String(image.format)}'`, { hint: 'use raw or qcow2' });
  }
  for (const disk of disks) {
    stripDiskRuntime(disk);
    const target = first(disk, 'target')?.attributes.dev;
    if (target !== undefined && Object.hasOwn(options.disks, target)) pointDiskAt(disk, options.disks[target]!);
  }
  for (const dev of devices ? elements(devices) : []) {
    if (dev.name === 'interface') rewriteInterface(dev);
    else if (CHARDEVS.includes(dev.name)) rewriteChardev(dev);
    else if (dev.name === 'graphics') rewriteGraphics(dev);
  }
  return nodes.map((n) => formatNode(n, '')).join('');
}

/**
 * The writable disks of the domain that `restored` leaves out and that keep their source: a new domain defined with
 * them would share those images with the original VM. Pure.
 * @throws InvalidInputError when the XML is not one well-formed `<domain>`.
 */
export function sharedWritableDisks(xml: string, restored: readonly string[]): { target: string; source: string }[] {
  const { root } = parseDocument(xml);
  const devices = first(root, 'devices');
  const shared: { target: string; source: string }[] = [];
  for (const disk of devices ? elements(devices, 'disk') : []) {
    const target = first(disk, 'target')?.attributes.dev;
    const device = disk.attributes.device ?? 'disk';
    if (target === undefined || restored.includes(target) || (device !== 'disk' && device !== 'lun')) continue;
    if (first(disk, 'readonly') || first(disk, 'shareable') || first(disk, 'transient')) continue;
    const source = first(disk, 'source');
    const where = source?.attributes.file ?? source?.attributes.dev ?? source?.attributes.volume ?? source?.attributes.name;
    if (where !== undefined) shared.push({ target, source: where });
  }
  return shared;
}
