// The peer of `npm run bench` (scripts/bench.mjs): virtnbdbackup and virtnbdrestore (Debian package virtnbdbackup) on a
// libvirt domain of the harness's private libvirtd, made durable the way a user would: virtnbdbackup never fsyncs, so
// each timing includes `sync` of the files it wrote; virtnbdrestore writes through a qemu-nbd it forks and does not
// wait for, so a restore's timing runs until that qemu-nbd has exited (flushed) and the image is synced.
import { existsSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { mustRun, pidsMentioning, run, sleep, syncPaths } from './bench-host.mjs';

export const PEER_INSTALL = 'apt-get install -y virtnbdbackup';

/** { ok: true, version } when virtnbdbackup and virtnbdrestore run here, else { ok: false, why } naming the apt-get line. */
export async function peerStatus() {
  const probe = async (tool) => run(tool, ['--version']).catch(() => undefined);
  const [backup, restore] = [await probe('virtnbdbackup'), await probe('virtnbdrestore')];
  if (backup?.code !== 0 || restore?.code !== 0) {
    return { ok: false, why: `virtnbdbackup is not installed: run \`${PEER_INSTALL}\` (or scripts/install-bench-deps.sh) as root` };
  }
  return { ok: true, version: `virtnbdbackup ${(backup.stdout || backup.stderr).trim()}` };
}

/**
 * virtnbdbackup insists on --user and --password for any qemu+… URI (it calls openAuth); the harness's libvirtd
 * allows root without authentication (auth_unix_rw = "none"), so these are never asked for.
 */
const connection = (uri) => ['-U', uri, '--user', 'root', '--password', 'unused-auth-none'];

/** Every file and directory under `dir` (and `dir`): what `sync` is given. */
function treeOf(dir) {
  const out = [dir];
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) out.push(...treeOf(path));
    else out.push(path);
  }
  return out;
}

/**
 * `virtnbdbackup -l <level> [-z]` of `domain` into `out`, then `sync` of what it wrote.
 * Resolves { seconds (backup + sync), backupSeconds, syncSeconds, peakRss, dataBytes }; throws with its log tail on failure.
 */
export async function peerBackup({ uri, domain, level, compress, out, scratchDir, socket }) {
  const args = [...connection(uri), '-d', domain, '-l', level, '-o', out, '-S', scratchDir, '-f', socket, '-n', ...(compress ? ['-z'] : [])];
  const r = await mustRun('virtnbdbackup', args, { timeV: true });
  const syncSeconds = await syncPaths(treeOf(out));
  const dataBytes = [...r.stderr.matchAll(/(\d+) bytes of data extents to backup/g)].reduce((s, m) => s + Number(m[1]), 0);
  return { seconds: r.seconds + syncSeconds, backupSeconds: r.seconds, syncSeconds, peakRss: r.peakRss, dataBytes, command: `virtnbdbackup ${args.join(' ')}` };
}

/**
 * `virtnbdrestore -i <backup dir> -o <outDir>` (the whole chain, into the disk's own format: qcow2 here), waits until
 * the qemu-nbd it forked on the image has exited, then `sync` of the image. Resolves { seconds (all of it),
 * restoreSeconds, waitSeconds, syncSeconds, peakRss, image }.
 */
export async function peerRestore({ uri, input, outDir, socket, logFile }) {
  const args = [...connection(uri), '-n', '-i', input, '-o', outDir, '-f', socket, '-L', logFile];
  const t0 = performance.now();
  const r = await mustRun('virtnbdrestore', args, { timeV: true });
  // Beside the image it writes the domain's XML (vmconfig.*.xml).
  const images = readdirSync(outDir).filter((n) => !/\.(xml|log)$/.test(n) && statSync(join(outDir, n)).isFile());
  if (images.length !== 1) throw new Error(`virtnbdrestore left ${images.length} images in ${outDir}: ${images.join(', ')}`);
  const image = join(outDir, images[0]);
  const deadline = Date.now() + 120_000;
  while (pidsMentioning('qemu-nbd', image).length > 0) {
    if (Date.now() > deadline) throw new Error(`the qemu-nbd virtnbdrestore started on ${image} did not exit within 120 s`);
    await sleep(10);
  }
  const waitSeconds = (performance.now() - t0) / 1000 - r.seconds;
  const syncSeconds = await syncPaths([image, outDir]);
  return {
    seconds: (performance.now() - t0) / 1000, restoreSeconds: r.seconds, waitSeconds, syncSeconds, peakRss: r.peakRss, image,
    command: `virtnbdrestore ${args.join(' ')}`,
  };
}

/** Ends (SIGTERM, then SIGKILL) any qemu-nbd whose command line names a file under `dir`: one virtnbdrestore forked. */
export async function endForkedQemuNbd(dir) {
  const pids = pidsMentioning('qemu-nbd', dir);
  for (const pid of pids) { try { process.kill(pid, 'SIGTERM'); } catch { /* gone */ } }
  const deadline = Date.now() + 5000;
  while (pids.some((pid) => existsSync(`/proc/${pid}`)) && Date.now() < deadline) await sleep(50);
  for (const pid of pids) { try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ } }
}
