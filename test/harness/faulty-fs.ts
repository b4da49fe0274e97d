// File systems that fail on purpose, for the fault suite: a small tmpfs (fills up: ENOSPC; remount to grow) and an
// ext4 whose every I/O can be made to fail with EIO (nbdkit's error filter → nbdfuse → a loop device → ext4). Each
// comes with a teardown that unmounts and stops everything it started, also after a failed test; a host that cannot
// mount (not root, no loop device, no FUSE, a tool missing) makes them throw saying what is missing, so that the
// fault cases fail loudly instead of skipping. (No device-mapper: this host has no dm kernel driver, so no dm-error.)
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, readFile, rm, statfs, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { execa } from 'execa';
import { makeTempDir, removeTempDir } from './temp-dir.js';

export interface MountedFileSystem {
  /** Where it is mounted. */
  readonly dir: string;
  /** Bytes in use (statfs: blocks minus free blocks). */
  usedBytes(): Promise<number>;
  /** Unmounts it and stops what it started; never throws for what is already gone (idempotent). */
  teardown(): Promise<void>;
}

export interface Tmpfs extends MountedFileSystem {
  /** Remounts with a new size (its files stay). */
  resize(size: number): Promise<void>;
}

export interface FaultyExt4 extends MountedFileSystem {
  /** true: every I/O request to the device fails with EIO from now on; false: it works again. */
  fail(on: boolean): Promise<void>;
  /**
   * What an operator does after the storage failed: unmount, `e2fsck -fy`, mount again. What is in memory only (the
   * page cache, metadata whose writes failed) is gone after it: the files are what reached the device.
   */
  repair(): Promise<void>;
}

/** This host cannot make the file system (a tool, a device or a privilege is missing). */
export class FaultyFsUnavailable extends Error {}

async function requireHost(what: string, tools: string[], devices: string[]): Promise<void> {
  const missing: string[] = [];
  if (process.getuid?.() !== 0) missing.push('root (mount needs it)');
  for (const tool of tools) {
    if ((await execa('which', [tool], { reject: false })).exitCode !== 0) missing.push(`the ${tool} command`);
  }
  for (const device of devices) if (!existsSync(device)) missing.push(device);
  if (missing.length > 0) {
    throw new FaultyFsUnavailable(`cannot make ${what} on this host: missing ${missing.join(', ')} (scripts/install-system-deps.sh installs the tools)`);
  }
}

async function run(cmd: string, args: string[]): Promise<void> {
  const result = await execa(cmd, args, { reject: false });
  if (result.exitCode !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${result.exitCode}): ${result.stderr || result.stdout}`);
}

async function usedBytes(dir: string): Promise<number> {
  const st = await statfs(dir);
  return (st.blocks - st.bfree) * st.bsize;
}

async function isMountPoint(dir: string): Promise<boolean> {
  return (await execa('mountpoint', ['-q', dir], { reject: false })).exitCode === 0;
}

/** Unmounts `dir` when it is mounted: lazily when busy (a process still in it), so that the teardown always ends. */
async function unmount(dir: string): Promise<void> {
  if (!(await isMountPoint(dir))) return;
  if ((await execa('umount', [dir], { reject: false })).exitCode === 0) return;
  await run('umount', ['-l', dir]);
}

/** Runs every step even when one fails; throws the first failure at the end. */
async function allSteps(steps: (() => Promise<unknown>)[]): Promise<void> {
  const errors: unknown[] = [];
  for (const step of steps) await step().catch((error: unknown) => errors.push(error));
  if (errors.length > 0) throw errors[0];
}

/** Mounts a tmpfs of `size` bytes on `dir` (created when missing). */
export async function mountTmpfs(dir: string, size: number): Promise<Tmpfs> {
  await requireHost('a tmpfs', ['mount', 'umount', 'mountpoint'], []);
  await mkdir(dir, { recursive: true });
  await run('mount', ['-t', 'tmpfs', '-o', `size=${size},mode=0755`, 'fleece-test-tmpfs', dir]);
  return {
    dir,
    usedBytes: () => usedBytes(dir),
    resize: (bytes) => run('mount', ['-o', `remount,size=${bytes}`, dir]),
    teardown: () => unmount(dir),
  };
}

/** Ends `child` (SIGTERM, then SIGKILL when it does not), awaiting its exit. */
async function stop(child: ChildProcess | undefined): Promise<void> {
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  child.kill('SIGTERM');
  const ended = await Promise.race([exited.then(() => true), delay(10_000, undefined, { ref: false }).then(() => false)]);
  if (!ended) {
    child.kill('SIGKILL');
    await exited;
  }
}

/** Starts `cmd` (its output to `log`); resolves once `pidFile` exists (the tool's "ready"), rejects when it exits first. */
async function startUntilReady(cmd: string, args: string[], pidFile: string, log: string): Promise<ChildProcess> {
  const { openSync, closeSync } = await import('node:fs');
  const fd = openSync(log, 'a');
  const child = spawn(cmd, args, { stdio: ['ignore', fd, fd] });
  closeSync(fd);
  let exited: string | undefined;
  child.once('exit', (code, signal) => { exited = `exited (${code ?? signal})`; });
  child.once('error', (error) => { exited = `could not start: ${error.message}`; });
  // Polled, bounded: the tools write the pid file once they serve, and say nothing else.
  for (let i = 0; i < 600; i++) {
    if (exited) break;
    if (existsSync(pidFile) && (await readFile(pidFile, 'utf8')).trim() !== '') return child;
    await delay(50);
  }
  await stop(child);
  throw new Error(`${cmd} ${exited ?? 'did not get ready in 30 s'}: ${await readFile(log, 'utf8').catch(() => '')}`);
}

/**
 * Mounts on `dir` (created when missing) an ext4 of `size` bytes whose device can be made to fail every request
 * with EIO (`fail(true)`) and to work again (`fail(false)`). The device is nbdkit's memory plugin behind its error
 * filter (the trigger file), served as a file by nbdfuse, attached to a loop device (O_DIRECT, no page cache of
 * its own) that holds the ext4. The ext4 has no journal and continues on errors: a journaled ext4 aborts its journal
 * at the first failed write and stays read-only until an fsck, so a transient EIO would end the file system rather
 * than reach the program as a failed call (what the fault cases are about).
 */
export async function mountFaultyExt4(dir: string, size: number): Promise<FaultyExt4> {
  await requireHost('an ext4 that fails on demand', ['nbdkit', 'nbdfuse', 'losetup', 'mkfs.ext4', 'e2fsck', 'mount', 'umount', 'mountpoint'], ['/dev/fuse', '/dev/loop-control']);
  await mkdir(dir, { recursive: true });
  // nbdkit's and nbdfuse's command lines name this fleece-test- directory: `npm test` finds them should one stay.
  const work = await makeTempDir('faulty-ext4');
  const trigger = join(work, 'trigger');
  const fuseDir = join(work, 'fuse');
  const disk = join(fuseDir, 'disk');
  let nbdkit: ChildProcess | undefined;
  let nbdfuse: ChildProcess | undefined;
  let loop: string | undefined;
  const teardown = () => allSteps([
    () => rm(trigger, { force: true }), // the unmount's writes must reach the device
    () => unmount(dir),
    async () => { if (loop) await run('losetup', ['-d', loop]); loop = undefined; },
    () => unmount(fuseDir), // nbdfuse exits once unmounted
    async () => {
      if (nbdfuse && nbdfuse.exitCode === null && nbdfuse.signalCode === null) {
        await Promise.race([new Promise((resolve) => nbdfuse!.once('exit', resolve)), delay(10_000, undefined, { ref: false })]);
      }
      await stop(nbdfuse);
    },
    () => stop(nbdkit),
    () => removeTempDir(work),
  ]);
  try {
    await mkdir(fuseDir);
    nbdkit = await startUntilReady('nbdkit', [
      '--exit-with-parent', '-f', '--filter=error', '-U', join(work, 'nbd.sock'), '-P', join(work, 'nbdkit.pid'),
      'memory', String(size), 'error=EIO', 'error-rate=100%', `error-file=${trigger}`,
    ], join(work, 'nbdkit.pid'), join(work, 'nbdkit.log'));
    nbdfuse = await startUntilReady('nbdfuse', ['-P', join(work, 'nbdfuse.pid'), disk, '--unix', join(work, 'nbd.sock')],
      join(work, 'nbdfuse.pid'), join(work, 'nbdfuse.log'));
    const attached = await execa('losetup', ['-f', '--show', '--direct-io=on', disk], { reject: false });
    if (attached.exitCode !== 0) throw new Error(`losetup could not attach ${disk}: ${attached.stderr}`);
    loop = attached.stdout.trim();
    await run('mkfs.ext4', ['-q', '-O', '^has_journal', '-E', 'lazy_itable_init=0', loop]);
    await run('mount', ['-o', 'errors=continue', loop, dir]);
  } catch (error) {
    await teardown().catch(() => undefined);
    throw error;
  }
  return {
    dir,
    usedBytes: () => usedBytes(dir),
    fail: async (on) => {
      if (on) await writeFile(trigger, '');
      else await rm(trigger, { force: true });
    },
    repair: async () => {
      await rm(trigger, { force: true });
      await run('umount', [dir]);
      const fsck = await execa('e2fsck', ['-fy', loop!], { reject: false });
      if (fsck.exitCode === undefined || fsck.exitCode >= 4) throw new Error(`e2fsck -fy ${loop} could not repair the file system (${fsck.exitCode}): ${fsck.stdout}`);
      await run('mount', ['-o', 'errors=continue', loop!, dir]);
    },
    teardown,
  };
}
