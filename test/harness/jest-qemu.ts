// Jest conveniences over qemu.ts: start real QEMU before each test (or once per file) and always stop it and remove its files.
import { afterAll, afterEach, beforeAll, beforeEach } from '@jest/globals';
import {
  startQemuSystem,
  startStorageDaemon,
  type QemuInstance,
  type StorageDaemonOptions,
  type SystemOptions,
} from './qemu.js';
import { makeTempDir, removeTempDir } from './temp-dir.js';

/** The running instance and its directory, valid inside tests (between the hooks). */
export interface QemuFixture {
  readonly qemu: QemuInstance;
  /** A fresh fleece-test- directory holding the sockets and whatever the options factory put there (disks). */
  readonly dir: string;
}

export type Scope = 'each' | 'all';

type Factory<T> = (dir: string) => T | Promise<T>;

function useQemu<T extends { dir?: string }>(
  start: (opts: T) => Promise<QemuInstance>,
  factory: Factory<T>,
  scope: Scope,
  label: string,
): QemuFixture {
  let qemu: QemuInstance | undefined;
  let dir: string | undefined;
  const setUp = async (): Promise<void> => {
    dir = await makeTempDir(label);
    const opts = await factory(dir);
    qemu = await start({ ...opts, dir: opts.dir ?? dir });
  };
  const tearDown = async (): Promise<void> => {
    try {
      await qemu?.stop();
    } finally {
      qemu = undefined;
      if (dir) await removeTempDir(dir);
      dir = undefined;
    }
  };
  if (scope === 'each') {
    beforeEach(setUp);
    afterEach(tearDown);
  } else {
    beforeAll(setUp);
    afterAll(tearDown);
  }
  return {
    get qemu(): QemuInstance {
      if (!qemu) throw new Error(`no ${label} is running here: use the fixture inside a test`);
      return qemu;
    },
    get dir(): string {
      if (!dir) throw new Error(`no ${label} directory here: use the fixture inside a test`);
      return dir;
    },
  };
}

/**
 * Starts qemu-system-x86_64 with the options `factory(dir)` returns (create disks in `dir`) before each test
 * (`scope` 'all': once for the file), and stops it and removes `dir` after, even when the test failed.
 */
export function useQemuSystem(factory: Factory<SystemOptions>, scope: Scope = 'each'): QemuFixture {
  return useQemu(startQemuSystem, factory, scope, 'qemu');
}

/** As useQemuSystem, for qemu-storage-daemon. */
export function useStorageDaemon(factory: Factory<StorageDaemonOptions>, scope: Scope = 'each'): QemuFixture {
  return useQemu(startStorageDaemon, factory, scope, 'qsd');
}
