// The `file-handle` mechanism: a point-in-time NBD export shown as a virtual file (nbdfuse, FUSE), mounted in a
// private 0700 directory, journaled before it is mounted and always unmounted. When the provider may read only the
// dirty regions, the file is served through a small nbdkit filter (a Python plugin of nbdkit over libnbd, written
// next to the mount) that refuses, with EPERM, every read (and discard) not wholly inside a region — what QEMU's
// snapshot-access node does by itself (EACCES) and the classic scratch-overlay export does not.
import { spawn, type ChildProcess } from 'node:child_process';
import { watch } from 'node:fs';
import { access, chmod, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { AbortedError, FleeceError } from '../../util/errors.js';
import { lazyLogger } from './lazy-logger.js';
import { processStartTime } from '../journal.js';
import type { BackupJournal } from '../journal.js';
import { killIfSame, unmountFuse } from './host-cleanup.js';

const log = lazyLogger('backup.nbdfuse');

const START_TIMEOUT_MS = 15_000;
const EXIT_WAIT_MS = 5_000;

/** The nbdkit Python plugin that restricts an NBD export to the regions of a file (`offset length` lines). */
export const DIRTY_FILTER_PY = `# Written by fleece (src/backup/consume/nbdfuse-mount.ts): serves an NBD export (uri=) but refuses, with EPERM,
# every read or discard that is not wholly inside one of the regions listed in regions= (\`offset length\` lines).
import bisect
import builtins
import errno
import nbd
import nbdkit

API_VERSION = 2
uri = None
regions = None
starts = []
ends = []


def config(key, value):
    global uri, regions
    if key == 'uri':
        uri = value
    elif key == 'regions':
        regions = value
    else:
        raise RuntimeError('unknown parameter ' + key)


def config_complete():
    if uri is None or regions is None:
        raise RuntimeError('uri= and regions= are required')
    spans = []
    with builtins.open(regions) as f:
        for line in f:
            parts = line.split()
            if not parts:
                continue
            offset, length = int(parts[0]), int(parts[1])
            if length <= 0:
                continue
            if spans and spans[-1][1] >= offset:
                spans[-1][1] = max(spans[-1][1], offset + length)
            else:
                spans.append([offset, offset + length])
    starts.extend(s for s, _ in spans)
    ends.extend(e for _, e in spans)


def thread_model():
    return nbdkit.THREAD_MODEL_PARALLEL


def open(readonly):
    h = nbd.NBD()
    h.connect_uri(uri)
    return h


def close(h):
    try:
        h.shutdown()
    except Exception:
        pass


def get_size(h):
    return h.get_size()


def can_write(h):
    return not h.is_read_only()


def can_trim(h):
    return h.can_trim()


def inside(offset, count):
    i = bisect.bisect_right(starts, offset) - 1
    return i >= 0 and offset + count <= ends[i]


def refuse(what, offset, count):
    nbdkit.set_error(errno.EPERM)
    raise RuntimeError('%s of %d bytes at offset %d is outside the dirty regions' % (what, count, offset))


def pread(h, buf, offset, flags):
    if not inside(offset, len(buf)):
        refuse('read', offset, len(buf))
    buf[:] = h.pread(len(buf), offset)


def pwrite(h, buf, offset, flags):
    nbdkit.set_error(errno.EPERM)
    raise RuntimeError('the point-in-time view is read-only')


def zero(h, count, offset, flags):
    nbdkit.set_error(errno.EPERM)
    raise RuntimeError('the point-in-time view is read-only')


def trim(h, count, offset, flags):
    if not inside(offset, count):
        refuse('discard', offset, count)
    h.trim(count, offset)


def flush(h, flags):
    pass
`;

export interface MountOptions {
  /** A private 0700 directory: the virtual file is `<dir>/<name>`. */
  dir: string;
  name: string;
  /** The export (nbd+unix:///NAME?socket=…). */
  uri: string;
  /** Restrict reads and discards to the regions of this file (the nbdkit filter). */
  regions?: string;
  /** Let discards (fallocate punch-hole) reach the export; writes are refused either way. Default false (-r). */
  discard?: boolean;
  journal?: BackupJournal;
  signal?: AbortSignal;
}

/** A mounted virtual file. */
export interface VirtualFile {
  path: string;
  pid: number;
  /** Unmounts (always), waits for nbdfuse, removes the mount point, clears the journal entry. Never throws. */
  unmount(): Promise<void>;
}

/** Thrown when nbdfuse cannot mount (not installed, no /dev/fuse, the export is gone): with its stderr. */
export class NbdfuseError extends FleeceError {
  constructor(message: string, readonly stderr: string, options: { cause?: unknown } = {}) {
    super('NBD', stderr ? `${message}: ${stderr.trim().split('\n').slice(-4).join(' | ')}` : message, {
      ...options,
      hint: 'install libnbd-bin (nbdfuse) and, for a dirty-region view, nbdkit with nbdkit-plugin-python and python3-libnbd; /dev/fuse must be usable',
    });
  }
}

function waitExit(child: ChildProcess, ms: number): Promise<boolean> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve(true);
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve(false), ms);
    child.once('exit', () => {
      clearTimeout(timer);
      resolve(true);
    });
  });
}

/**
 * Mounts the export as `<dir>/<name>` and resolves once nbdfuse serves it.
 * @throws NbdfuseError (with nbdfuse's stderr), AbortedError; nothing stays mounted on a throw.
 */
export async function mountVirtualFile(options: MountOptions): Promise<VirtualFile> {
  const path = join(options.dir, options.name);
  const pidFile = join(options.dir, `.${options.name}.nbdfuse.pid`);
  const filter = join(options.dir, `.${options.name}.dirty-filter.py`);
  await writeFile(path, '', { mode: 0o600, flag: 'wx' });
  const journalId = await options.journal?.record({ kind: 'mount', path });
  const args = ['-P', pidFile, ...(options.discard ? [] : ['-r']), path];
  if (options.regions !== undefined) {
    await writeFile(filter, DIRTY_FILTER_PY, { mode: 0o600 });
    await chmod(filter, 0o600);
    args.push('--command', 'nbdkit', '-s', '--exit-with-parent', 'python', filter, `uri=${options.uri}`, `regions=${options.regions}`);
  } else {
    args.push(options.uri);
  }
  const child = spawn('nbdfuse', args, { detached: true, stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr!.setEncoding('utf8');
  child.stderr!.on('data', (chunk: string) => {
    stderr = (stderr + chunk).slice(-8192);
    for (const line of chunk.split('\n').filter(Boolean)) log.debug({ path }, line);
  });
  const spawned = await new Promise<number | Error>((resolve) => {
    child.once('spawn', () => resolve(child.pid!));
    child.once('error', (error) => resolve(error));
  });
  const cleanup = async () => {
    await unmountFuse(path).catch(() => undefined);
    if (!(await waitExit(child, EXIT_WAIT_MS))) {
      try {
        process.kill(-child.pid!, 'SIGKILL');
      } catch {
        // gone
      }
      await waitExit(child, EXIT_WAIT_MS);
    }
    await rm(path, { force: true });
    await rm(pidFile, { force: true });
    await rm(filter, { force: true });
    if (journalId !== undefined) await options.journal?.clear(journalId).catch(() => undefined);
  };
  if (spawned instanceof Error) {
    await rm(path, { force: true });
    if (journalId !== undefined) await options.journal?.clear(journalId);
    throw new NbdfuseError('nbdfuse could not be run', '', { cause: spawned });
  }
  const pid = spawned;
  if (journalId !== undefined) {
    await options.journal?.update(journalId, { kind: 'mount', path, pid, startTime: processStartTime(pid) ?? '' });
  }
  // Ready when nbdfuse writes its pid file (it does once the mount serves); failed when it exits first.
  const ready = await new Promise<'ready' | 'exited' | 'timeout' | 'aborted'>((resolve) => {
    let done = false;
    const finish = (how: 'ready' | 'exited' | 'timeout' | 'aborted') => {
      if (done) return;
      done = true;
      watcher.close();
      clearTimeout(timer);
      options.signal?.removeEventListener('abort', onAbort);
      child.removeListener('exit', onExit);
      resolve(how);
    };
    const check = () => void access(pidFile).then(() => finish('ready'), () => undefined);
    const watcher = watch(options.dir, check);
    const timer = setTimeout(() => finish('timeout'), START_TIMEOUT_MS);
    const onExit = () => finish('exited');
    const onAbort = () => finish('aborted');
    child.once('exit', onExit);
    options.signal?.addEventListener('abort', onAbort, { once: true });
    check();
  });
  if (ready !== 'ready') {
    await cleanup();
    if (ready === 'aborted') throw new AbortedError(`mounting ${path} was aborted`);
    throw new NbdfuseError(ready === 'timeout' ? `nbdfuse did not mount ${path} within ${START_TIMEOUT_MS / 1000} s` : `nbdfuse could not mount ${options.uri} at ${path}`, stderr);
  }
  log.debug({ path, pid, restricted: options.regions !== undefined }, 'virtual file mounted');
  let unmounted: Promise<void> | undefined;
  return {
    path,
    pid,
    unmount: () => {
      unmounted ??= cleanup().catch(async (error: unknown) => {
        log.warn({ path, err: error }, 'unmounting the virtual file failed');
        await killIfSame(pid, processStartTime(pid));
      });
      return unmounted;
    },
  };
}
