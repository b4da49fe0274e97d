// A real Linux guest for tests and the demo under TCG: Debian's cloud kernel and a busybox initramfs that loads the virtio
// modules, mounts ext4 from /dev/vda on /mnt and runs qemu-guest-agent. Built from Debian packages without installing them
// (apt-get download + dpkg -x), once, into a cache. See ../../../shared/reference/real-guest.md and README.md here.
import { execa } from 'execa';
import { createHash, randomBytes } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { access, copyFile, chmod, mkdir, mkdtemp, readdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { dirname, join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { createGzip } from 'node:zlib';

export { GuestAgentShell, type ExecResult } from './guest-agent-exec.js';

export interface RealGuestImage {
  /** The kernel (vmlinuz). */
  kernel: string;
  /** The gzip'ed newc initramfs. */
  initrd: string;
  /** `6.1.0-57-cloud-amd64`. */
  kernelVersion: string;
  /** The kernel command line to boot with (`-append`, libvirt's `<cmdline>`). */
  cmdline: string;
}

/** The name of the guest agent's virtio-serial port, in bare QEMU (realGuestQemuArgs) and in libvirt's `<channel>`. */
export const GUEST_AGENT_PORT_NAME = 'org.qemu.guest_agent.0';
/** Where the init mounts /dev/vda. */
export const GUEST_MOUNT_POINT = '/mnt';

const KERNEL_META_PACKAGE = 'linux-image-cloud-amd64';
const OTHER_PACKAGES = ['busybox-static', 'qemu-guest-agent'];
const CMDLINE = 'console=ttyS0 quiet panic=-1';
/** In this order: virtio needs virtio_ring's symbols, virtio_pci needs both pci_*_dev helpers. ext4 is built in. */
const MODULES = [
  'drivers/virtio/virtio_ring',
  'drivers/virtio/virtio',
  'drivers/virtio/virtio_pci_legacy_dev',
  'drivers/virtio/virtio_pci_modern_dev',
  'drivers/virtio/virtio_pci',
  'drivers/block/virtio_blk',
  'drivers/char/virtio_console',
];
const LOCK_STALE_MS = 10 * 60_000;

const INIT_SCRIPT = `#!/bin/busybox sh
# fleece real guest: PID 1. Messages go to the console (ttyS0), prefixed "fleece-guest:".
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/
mkdir -p /proc /sys /dev /mnt /run /tmp /var
ln -s /run /var/run
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in ${MODULES.map((m) => m.split('/').pop()).join(' ')}; do
  insmod /lib/modules/$m.ko || echo "fleece-guest: insmod $m failed"
done
i=0
while [ ! -b /dev/vda ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
if [ -b /dev/vda ]; then
  mount -t ext4 /dev/vda ${GUEST_MOUNT_POINT} && echo "fleece-guest: mounted /dev/vda on ${GUEST_MOUNT_POINT}" \\
    || echo "fleece-guest: cannot mount /dev/vda (ext4) on ${GUEST_MOUNT_POINT}"
else
  echo "fleece-guest: no /dev/vda"
fi
# The agent's port: the one named ${GUEST_AGENT_PORT_NAME} (bare QEMU gives /dev/vport1p1, libvirt's numbering may differ).
port=
i=0
while [ -z "$port" ] && [ $i -lt 100 ]; do
  for n in /sys/class/virtio-ports/*/name; do
    [ -r "$n" ] || continue
    if [ "$(cat "$n")" = "${GUEST_AGENT_PORT_NAME}" ]; then
      d=\${n%/name}
      [ -c "/dev/\${d##*/}" ] && port=/dev/\${d##*/}
    fi
  done
  [ -n "$port" ] || { sleep 0.1; i=$((i + 1)); }
done
if [ -z "$port" ]; then
  for p in /dev/vport*p*; do [ -c "$p" ] && { port=$p; break; }; done
  echo "fleece-guest: no virtio port named ${GUEST_AGENT_PORT_NAME}; trying $port"
fi
if [ -n "$port" ]; then
  qemu-ga -d -m virtio-serial -p "$port" -t /run -f /run/qemu-ga.pid -l /run/qemu-ga.log \\
    && echo "fleece-guest: qemu-ga on $port" || echo "fleece-guest: qemu-ga failed to start"
else
  echo "fleece-guest: no virtio-serial port: no guest agent"
fi
echo "fleece-guest: ready"
while true; do sleep 60; done
`;

/** Changes whenever what goes into the image changes, so that a cached image of an older recipe is rebuilt. */
const RECIPE = createHash('sha256')
  .update(JSON.stringify({ v: 1, INIT_SCRIPT, MODULES, OTHER_PACKAGES }))
  .digest('hex')
  .slice(0, 16);

interface Manifest {
  recipe: string;
  kernelVersion: string;
  packages: Record<string, string>;
  builtAt: string;
  buildSeconds: number;
}

const building = new Map<string, Promise<RealGuestImage>>();

/**
 * Builds (once, cached) the kernel + initramfs of the real guest and returns where they are. The cache is
 * `<root>/<kernelVersion>/` with root = `options.cacheDir` ?? `$FLEECE_GUEST_CACHE` ?? `~/.cache/fleece/guest`. An image
 * already there (of this recipe: the init script and module list) is used as it is, without asking apt (empty the
 * cache to pick up a newer kernel). Otherwise it is built in a temp dir next to it and renamed into place, under a
 * mkdir lock (concurrent callers, also in other processes, wait for one build). Runs `apt-get update` only when
 * apt-cache knows none of a package.
 * @throws Error naming what is missing and the fix (no apt/dpkg, package unknown, not root for apt-get update,
 *   a library of qemu-ga missing on the host, the download failing).
 */
export async function ensureRealGuest(options: { cacheDir?: string; log?: (line: string) => void } = {}): Promise<RealGuestImage> {
  const root = options.cacheDir ?? process.env.FLEECE_GUEST_CACHE ?? join(homedir(), '.cache', 'fleece', 'guest');
  let pending = building.get(root);
  if (!pending) {
    pending = ensure(root, options.log ?? (() => undefined));
    building.set(root, pending);
    pending.catch(() => building.delete(root));
  }
  return pending;
}

async function ensure(root: string, log: (line: string) => void): Promise<RealGuestImage> {
  // A built image of this recipe is used as it is (apt-cache alone takes about a second): a newer kernel is picked up
  // only once the cache is emptied.
  const newest = await newestCachedImage(root);
  if (newest) return newest;
  const kernelPackage = await resolveKernelPackage(root, log);
  const kernelVersion = kernelPackage.replace(/^linux-image-/, '');
  const finalDir = join(root, kernelVersion);
  const cached = await readImage(finalDir);
  if (cached) return cached;

  await mkdir(root, { recursive: true });
  const lock = join(root, `.${kernelVersion}.lock`);
  await acquireLock(lock, log);
  try {
    const again = await readImage(finalDir); // built by another process while we waited
    if (again) return again;
    const work = await mkdtemp(join(root, `.${kernelVersion}.build-`));
    try {
      await build(work, kernelPackage, kernelVersion, log);
      await chmod(work, 0o755); // mkdtemp's 0700 would keep out a QEMU that libvirt runs as another user
      if (await exists(finalDir)) {
        // an image of an older recipe: move it aside, then put ours in its place
        const old = join(root, `.${kernelVersion}.old-${randomBytes(4).toString('hex')}`);
        await rename(finalDir, old);
        await rm(old, { recursive: true, force: true });
      }
      try {
        await rename(work, finalDir);
      } catch (error) {
        // lost a race with a builder that ignored the lock (a stale-lock break): take its image
        const theirs = await readImage(finalDir);
        if (!theirs) throw error;
        return theirs;
      }
    } finally {
      await rm(work, { recursive: true, force: true });
    }
    const image = await readImage(finalDir);
    if (!image) throw new Error(`the real guest built into ${finalDir} is incomplete`);
    return image;
  } finally {
    await rm(lock, { recursive: true, force: true });
  }
}

async function readImage(dir: string): Promise<RealGuestImage | undefined> {
  try {
    const manifest = JSON.parse(await readFile(join(dir, 'manifest.json'), 'utf8')) as Manifest;
    if (manifest.recipe !== RECIPE) return undefined;
    const image = { kernel: join(dir, 'vmlinuz'), initrd: join(dir, 'initrd.gz'), kernelVersion: manifest.kernelVersion, cmdline: CMDLINE };
    await access(image.kernel);
    await access(image.initrd);
    return image;
  } catch {
    return undefined;
  }
}

/** The kernel package's name (`linux-image-6.1.0-57-cloud-amd64`). */
async function resolveKernelPackage(root: string, log: (line: string) => void): Promise<string> {
  if (!(await onPath('apt-cache')) || !(await onPath('apt-get')) || !(await onPath('dpkg'))) {
    throw new Error(
      `building the real guest needs apt-get, apt-cache and dpkg (it is made of Debian packages: ${KERNEL_META_PACKAGE}, ` +
        `${OTHER_PACKAGES.join(', ')}), and this host has no apt: run it on Debian (bookworm), or build the image ` +
        `there and point FLEECE_GUEST_CACHE at a copy of its cache directory (${root})`,
    );
  }
  const depends = async (): Promise<string | undefined> => {
    const result = await execa('apt-cache', ['depends', KERNEL_META_PACKAGE], { reject: false });
    return /Depends:\s*(linux-image-\S+)/.exec(result.stdout)?.[1];
  };
  let name = await depends();
  if (!name) {
    await aptUpdate(`apt-cache knows no ${KERNEL_META_PACKAGE}`, log);
    name = await depends();
  }
  if (!name) throw unknownPackage(KERNEL_META_PACKAGE);
  return name;
}

async function newestCachedImage(root: string): Promise<RealGuestImage | undefined> {
  let names: string[];
  try {
    names = (await readdir(root)).filter((n) => !n.startsWith('.'));
  } catch {
    return undefined;
  }
  const found: { image: RealGuestImage; mtime: number }[] = [];
  for (const name of names) {
    const image = await readImage(join(root, name));
    if (image) found.push({ image, mtime: (await stat(image.initrd)).mtimeMs });
  }
  return found.sort((a, b) => b.mtime - a.mtime)[0]?.image;
}

let updated = false;

async function aptUpdate(why: string, log: (line: string) => void): Promise<void> {
  if (updated) return;
  if (process.getuid?.() !== 0) {
    throw new Error(`${why}, and apt-get update needs root: run \`sudo apt-get update\` (Debian bookworm main and bookworm-security in the apt sources), then try again`);
  }
  log(`real guest: ${why}: apt-get update`);
  const result = await execa('apt-get', ['update', '-q'], { reject: false, all: true });
  if (result.exitCode !== 0) throw new Error(`${why}, and apt-get update failed:\n${(result.all ?? '').trim()}`);
  updated = true;
}

function unknownPackage(name: string): Error {
  return new Error(
    `apt knows no package ${name}, even after apt-get update: the real guest needs Debian's ${name} ` +
      `(add deb http://deb.debian.org/debian bookworm main and bookworm-security to the apt sources, then apt-get update)`,
  );
}

/** `Version:` of each package, apt-get update'ing once if one is unknown. */
async function packageVersions(names: string[], log: (line: string) => void): Promise<Record<string, string>> {
  const lookup = async (): Promise<Record<string, string | undefined>> => {
    const versions: Record<string, string | undefined> = {};
    for (const name of names) {
      const result = await execa('apt-cache', ['show', '--no-all-versions', name], { reject: false });
      versions[name] = result.exitCode === 0 ? /^Version:\s*(\S+)/m.exec(result.stdout)?.[1] : undefined;
    }
    return versions;
  };
  let versions = await lookup();
  const missing = names.filter((n) => !versions[n]);
  if (missing.length > 0) {
    await aptUpdate(`apt-cache knows no ${missing.join(', ')}`, log);
    versions = await lookup();
  }
  const stillMissing = names.find((n) => !versions[n]);
  if (stillMissing) throw unknownPackage(stillMissing);
  return versions as Record<string, string>;
}

async function build(work: string, kernelPackage: string, kernelVersion: string, log: (line: string) => void): Promise<void> {
  const started = Date.now();
  const packages = [kernelPackage, ...OTHER_PACKAGES];
  const versions = await packageVersions(packages, log);
  const debs = join(work, 'debs');
  const x = join(work, 'x');
  const initramfs = join(work, 'root');
  await mkdir(debs);
  await mkdir(x);
  log(`real guest: apt-get download ${packages.map((p) => `${p}=${versions[p]}`).join(' ')}`);
  const download = await execa('apt-get', ['download', '-q', ...packages.map((p) => `${p}=${versions[p]}`)], {
    cwd: debs,
    reject: false,
    all: true,
  });
  if (download.exitCode !== 0) {
    throw new Error(
      `apt-get download ${packages.join(' ')} failed (network or apt sources?): ${(download.all ?? '').trim()}`,
    );
  }
  for (const deb of await readdir(debs)) {
    if (deb.endsWith('.deb')) await execa('dpkg', ['-x', join(debs, deb), x]);
  }

  const modulesDir = join(x, 'lib', 'modules', kernelVersion, 'kernel');
  const vmlinuz = join(x, 'boot', `vmlinuz-${kernelVersion}`);
  const busybox = join(x, 'bin', 'busybox');
  const qemuGa = join(x, 'usr', 'sbin', 'qemu-ga');
  for (const path of [vmlinuz, busybox, qemuGa]) {
    if (!(await exists(path))) throw new Error(`${path} is missing after dpkg -x of ${packages.join(', ')}: has the packaging changed?`);
  }

  log('real guest: packing the initramfs');
  await mkdir(join(initramfs, 'bin'), { recursive: true });
  await mkdir(join(initramfs, 'lib', 'modules'), { recursive: true });
  await mkdir(join(initramfs, 'usr', 'sbin'), { recursive: true });
  await copyFile(busybox, join(initramfs, 'bin', 'busybox'));
  await copyFile(qemuGa, join(initramfs, 'usr', 'sbin', 'qemu-ga'));
  for (const module of MODULES) {
    const source = join(modulesDir, `${module}.ko`);
    if (!(await exists(source))) throw new Error(`the kernel package ${kernelPackage} has no ${module}.ko (is it compressed now, or built in?)`);
    await copyFile(source, join(initramfs, 'lib', 'modules', `${module.split('/').pop()}.ko`));
  }
  for (const library of await sharedLibraries(qemuGa)) {
    await mkdir(join(initramfs, dirname(library)), { recursive: true });
    await copyFile(library, join(initramfs, library)); // follows symlinks: the file itself at the name ldd gives
  }
  await writeFile(join(initramfs, 'init'), INIT_SCRIPT);
  await chmod(join(initramfs, 'init'), 0o755);
  await chmod(join(initramfs, 'bin', 'busybox'), 0o755);
  await chmod(join(initramfs, 'usr', 'sbin', 'qemu-ga'), 0o755);

  // busybox's cpio (Debian's cpio may not be installed), gzip -1 by zlib
  const names = ['.', ...(await walk(initramfs, '.'))];
  const cpio = execa(busybox, ['cpio', '-o', '-H', 'newc'], {
    cwd: initramfs,
    input: `${names.join('\n')}\n`,
    stdout: 'pipe',
    stderr: 'pipe',
    buffer: { stdout: false, stderr: true },
    reject: false,
  });
  await pipeline(cpio.stdout!, createGzip({ level: 1 }), createWriteStream(join(work, 'initrd.gz')));
  const packed = await cpio;
  if (packed.exitCode !== 0) throw new Error(`busybox cpio failed: ${String(packed.stderr).trim()}`);
  await copyFile(vmlinuz, join(work, 'vmlinuz'));
  await writeFile(join(work, 'init.sh'), INIT_SCRIPT); // for reading only

  await rm(debs, { recursive: true, force: true });
  await rm(x, { recursive: true, force: true });
  await rm(initramfs, { recursive: true, force: true });
  const manifest: Manifest = {
    recipe: RECIPE,
    kernelVersion,
    packages: versions,
    builtAt: new Date().toISOString(),
    buildSeconds: (Date.now() - started) / 1000,
  };
  await writeFile(join(work, 'manifest.json'), `${JSON.stringify(manifest, null, 2)}\n`);
  log(`real guest: built ${kernelVersion} in ${manifest.buildSeconds.toFixed(1)} s`);
}

/** The libraries `ldd` resolves for a binary, as absolute paths (the loader included). */
async function sharedLibraries(binary: string): Promise<string[]> {
  const result = await execa('ldd', [binary], { reject: false, all: true });
  if (result.exitCode !== 0) throw new Error(`ldd ${binary} failed: ${(result.all ?? '').trim()}`);
  const libraries: string[] = [];
  for (const line of result.stdout.split('\n')) {
    const notFound = /^\s*(\S+)\s+=>\s+not found/.exec(line);
    if (notFound) {
      throw new Error(
        `qemu-ga needs ${notFound[1]}, which this host does not have (the guest takes the host's copy): install the ` +
          `package that ships it (\`apt-get install qemu-guest-agent\` pulls all of them in), then try again`,
      );
    }
    const path = /=>\s+(\/\S+)/.exec(line)?.[1] ?? /^\s*(\/\S+)\s+\(/.exec(line)?.[1];
    if (path) libraries.push(path);
  }
  if (!libraries.some((l) => l.includes('ld-linux'))) throw new Error(`ldd ${binary} names no loader: is it dynamically linked?`);
  return libraries;
}

async function walk(dir: string, prefix: string): Promise<string[]> {
  const out: string[] = [];
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    const name = `${prefix}/${entry.name}`;
    out.push(name);
    if (entry.isDirectory()) out.push(...(await walk(join(dir, entry.name), name)));
  }
  return out;
}

async function acquireLock(lock: string, log: (line: string) => void): Promise<void> {
  let said = false;
  for (;;) {
    try {
      await mkdir(lock);
      await writeFile(join(lock, 'pid'), String(process.pid));
      return;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
    }
    if (await lockIsStale(lock)) {
      await rm(lock, { recursive: true, force: true });
      continue;
    }
    if (!said) log(`real guest: waiting for another build (${lock})`);
    said = true;
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
}

async function lockIsStale(lock: string): Promise<boolean> {
  try {
    const info = await stat(lock);
    if (Date.now() - info.mtimeMs > LOCK_STALE_MS) return true;
    const pid = Number(await readFile(join(lock, 'pid'), 'utf8').catch(() => ''));
    if (!pid) return Date.now() - info.mtimeMs > 5_000; // the owner is between mkdir and writing its pid
    try {
      process.kill(pid, 0);
      return false;
    } catch (error) {
      return (error as NodeJS.ErrnoException).code === 'ESRCH';
    }
  } catch {
    return false; // gone already: the next mkdir will tell
  }
}

async function exists(path: string): Promise<boolean> {
  return access(path).then(
    () => true,
    () => false,
  );
}

async function onPath(command: string): Promise<boolean> {
  const result = await execa('sh', ['-c', `command -v ${command}`], { reject: false });
  return result.exitCode === 0;
}

/**
 * Creates an ext4 file system image of `sizeBytes`: truncate + `mkfs.ext4 -q -F` (inode tables and journal zeroed now,
 * so the guest's kernel does no lazy init writes behind a test's back) on raw, then `qemu-img convert -O qcow2` when
 * the format is qcow2. Format defaults to qcow2 for a `.qcow2` path, else raw.
 * @throws Error with the tool's output when mkfs.ext4 or qemu-img fails.
 */
export async function makeExt4Disk(path: string, sizeBytes: number, format?: 'qcow2' | 'raw'): Promise<void> {
  const fmt = format ?? (path.endsWith('.qcow2') ? 'qcow2' : 'raw');
  const raw = fmt === 'raw' ? path : `${path}.raw-${randomBytes(4).toString('hex')}`;
  try {
    await rm(raw, { force: true });
    await writeFile(raw, '');
    await execa('truncate', ['-s', String(sizeBytes), raw]);
    await execa('mkfs.ext4', ['-q', '-F', '-E', 'lazy_itable_init=0,lazy_journal_init=0,nodiscard', raw]);
    if (fmt === 'qcow2') await execa('qemu-img', ['convert', '-q', '-f', 'raw', '-O', 'qcow2', raw, path]);
  } finally {
    if (raw !== path) await rm(raw, { force: true });
  }
}

/** QEMU's `,` in option values is written `,,`. */
function optionValue(value: string): string {
  return value.replaceAll(',', ',,');
}

/**
 * qemu-system-x86_64 arguments for the guest: pc machine on TCG, `-m 256` (memoryMiB), no default devices, no display,
 * `-no-reboot` (a panic ends QEMU), the kernel/initrd/cmdline, the serial console into `serialLog`, a virtio-serial
 * controller with the guest agent's port (`org.qemu.guest_agent.0`) on a server socket `agentSocket`. The caller adds
 * `-name`, `-qmp` and the disks (`-blockdev …` + `-device virtio-blk-pci,drive=…`; the first is /dev/vda, mounted on /mnt).
 */
export function realGuestQemuArgs(image: RealGuestImage, options: { agentSocket: string; serialLog: string; memoryMiB?: number }): string[] {
  return [
    '-machine', 'pc,accel=tcg',
    '-m', String(options.memoryMiB ?? 256),
    '-nodefaults',
    '-display', 'none',
    '-no-reboot',
    '-kernel', image.kernel,
    '-initrd', image.initrd,
    '-append', image.cmdline,
    '-serial', `file:${options.serialLog}`,
    '-device', 'virtio-serial-pci,id=fleece-serial0',
    '-chardev', `socket,id=qga0,path=${optionValue(options.agentSocket)},server=on,wait=off`,
    '-device', `virtserialport,bus=fleece-serial0.0,chardev=qga0,name=${GUEST_AGENT_PORT_NAME}`,
  ];
}
