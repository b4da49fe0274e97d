// Shared checks for the backup integration tests: what QEMU still holds (nodes, jobs, bitmaps, exports), reference copies.
import { execa } from 'execa';
import { readFile } from 'node:fs/promises';
import { createHash } from 'node:crypto';
import type { QmpExecutor } from '../../../src/qmp/index.js';
import { queryDisks } from '../../../src/qemu/block-graph.js';

export interface QemuLeftovers {
  fleeceNodes: string[];
  jobs: string[];
  exports: string[];
  bitmaps: Record<string, string[]>;
}

/** Nodes fleece added, jobs, exports, and the named bitmaps of every disk. */
export async function leftovers(qmp: QmpExecutor): Promise<QemuLeftovers> {
  const nodes = await qmp.execute<{ 'node-name': string }[]>('query-named-block-nodes', { flat: true });
  const jobs = await qmp.execute<{ id: string }[]>('query-jobs');
  const exports = await qmp.execute<{ id: string }[]>('query-block-exports');
  const disks = await queryDisks(qmp);
  const bitmaps: Record<string, string[]> = {};
  for (const disk of disks) bitmaps[disk.target] = disk.bitmaps.map((b) => b.name).sort();
  return {
    fleeceNodes: nodes.map((n) => n['node-name']).filter((n) => n.startsWith('fl-')),
    jobs: jobs.map((j) => j.id),
    exports: exports.map((e) => e.id),
    bitmaps,
  };
}

/** A raw copy of an image as it is now (read with force-share while QEMU holds it; flush the guest first). */
export async function snapshotRaw(image: string, out: string): Promise<void> {
  await execa('qemu-img', ['convert', '-U', '-f', 'qcow2', '-O', 'raw', image, out]);
}

/** True when the chain of `image` reads exactly as the raw file `reference` (qemu-img compare, strict sizes). */
export async function sameContent(reference: string, image: string, format = 'qcow2'): Promise<{ same: boolean; output: string }> {
  const result = await execa('qemu-img', ['compare', '-U', '-f', 'raw', '-F', format, reference, image], { reject: false, all: true });
  return { same: result.exitCode === 0, output: result.all ?? '' };
}

/** The ranges whose data is allocated in `image` itself (depth 0), from qemu-img map. */
export async function ownDataRanges(image: string): Promise<{ start: number; length: number }[]> {
  const { stdout } = await execa('qemu-img', ['map', '-U', '--output=json', image]);
  const map = JSON.parse(stdout) as { start: number; length: number; depth: number; data: boolean }[];
  const ranges: { start: number; length: number }[] = [];
  for (const e of map) {
    if (e.depth !== 0 || !e.data) continue;
    const last = ranges[ranges.length - 1];
    if (last && last.start + last.length === e.start) last.length += e.length;
    else ranges.push({ start: e.start, length: e.length });
  }
  return ranges;
}

export async function sha256File(path: string): Promise<string> {
  return createHash('sha256').update(await readFile(path)).digest('hex');
}

/** Mounts a small tmpfs (read-only or tiny) for failure tests; undefined when this host does not allow mounts. */
export async function mountTmpfs(dir: string, options: string): Promise<boolean> {
  const result = await execa('mount', ['-t', 'tmpfs', '-o', options, 'tmpfs', dir], { reject: false });
  return result.exitCode === 0;
}

export async function unmount(dir: string): Promise<void> {
  await execa('umount', ['-l', dir], { reject: false });
}
