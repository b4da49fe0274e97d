// libvirt pieces of `npm run bench` (scripts/bench.mjs): the floor (nbdcopy + sync of libvirt's own pull export of the
// disk), removing one tool's checkpoints before the other runs (virtnbdbackup refuses to run beside a checkpoint it did
// not make), and the guest's writes before the incrementals (1 % of the disk, played through qemu-io).
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { mustRun, syncPaths } from './bench-host.mjs';

const KiB = 1024;
const MiB = 1024 * KiB;

const xmlEscape = (text) => text.replace(/[&<>'"]/g, (c) => `&${{ '&': 'amp', '<': 'lt', '>': 'gt', "'": 'apos', '"': 'quot' }[c]};`);

/**
 * The floor: `virsh backup-begin` of a pull backup (no checkpoint, a qcow2 scratch file, NBD on a unix socket),
 * `nbdcopy` of the export into a new file, `sync` of it, `virsh domjobabort`. Default nbdcopy settings (it reads
 * allocated extents only, 4 connections). Resolves { seconds (copy + sync), copySeconds, syncSeconds, file }.
 */
export async function floorCopy(h, domain, target, dir) {
  const socket = join(dir, 'floor.sock');
  const file = join(dir, 'floor.raw');
  const xml = join(dir, 'floor-backup.xml');
  writeFileSync(xml, [
    "<domainbackup mode='pull'>",
    `  <server transport='unix' socket='${xmlEscape(socket)}'/>`,
    '  <disks>',
    `    <disk name='${xmlEscape(target)}' backup='yes' type='file'><scratch file='${xmlEscape(join(dir, 'floor-scratch.qcow2'))}'/></disk>`,
    '  </disks>',
    '</domainbackup>',
    '',
  ].join('\n'));
  await h.virsh(['backup-begin', domain, xml]);
  try {
    const copy = await mustRun('nbdcopy', [`nbd+unix:///${target}?socket=${socket}`, file]);
    const syncSeconds = await syncPaths([file, dir]);
    return { seconds: copy.seconds + syncSeconds, copySeconds: copy.seconds, syncSeconds, file };
  } finally {
    await h.virsh(['domjobabort', domain]);
  }
}

/** Deletes (bitmaps and metadata) every checkpoint of `domain` whose name starts with `prefix`, newest first. */
export async function deleteCheckpoints(h, domain, prefix) {
  const names = (await h.virsh(['checkpoint-list', domain, '--name', '--topological'])).split('\n').map((n) => n.trim()).filter((n) => n.startsWith(prefix));
  for (const name of names.reverse()) await h.virsh(['checkpoint-delete', domain, name]);
  return names;
}

/**
 * qemu-io commands that write `percent` % of a disk of `size` bytes with random data (`write -s randomFile`, a 4 MiB
 * file): four fifths in 4 MiB runs, the rest in 1 MiB pieces, at distinct random 1 MiB-aligned places (over data and
 * holes alike, no overlaps), so the incremental reads exactly what was written. Pure; deterministic for a seed.
 */
export function planWrites(size, randomFile, seededRandom, { percent = 1, seed = 11 } = {}) {
  const random = seededRandom(seed);
  const slots = Math.floor(size / MiB);
  const wanted = Math.max(1, Math.round((size * percent) / 100 / MiB));
  const runs = Math.floor((wanted * 0.8) / 4);
  const singles = wanted - runs * 4;
  const used = new Set();
  const writes = [];
  const place = (units) => {
    for (let attempt = 0; attempt < 10_000; attempt++) {
      const first = Math.floor(random() * Math.floor(slots / units)) * units;
      const range = Array.from({ length: units }, (_, i) => first + i);
      if (range.some((s) => used.has(s))) continue;
      for (const s of range) used.add(s);
      writes.push({ command: `write -s ${randomFile} ${first * MiB} ${units * MiB}`, offset: first * MiB, length: units * MiB });
      return;
    }
    throw new Error(`no free place for ${units} MiB on a disk of ${size} bytes`);
  };
  for (let i = 0; i < runs; i++) place(4);
  for (let i = 0; i < singles; i++) place(1);
  return writes.sort((a, b) => a.offset - b.offset);
}
