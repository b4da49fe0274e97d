// Small commands start without the heavy code (issue 11, item 5): each command loads what it needs in its action, so
// `fleece --version`, `--help` and `list` never load the AWS SDK, fastify, typebox, libvirt/libnbd (koffi), execa, pino,
// the codecs or the backup machinery. Checked on the list of modules the process loaded, not on a time.
import { mkdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { CLI, ROOT, cliEnv } from './helpers.js';

const HEAVY_PACKAGES = ['@aws-sdk', 'fastify', '@fastify', 'typebox', 'koffi', 'execa', 'pino', 'cli-progress', 'zstd-napi', 'seek-bzip', 'fast-xml-parser'];
const HEAVY_SOURCES = ['src/backup/', 'src/qemu/', 'src/qmp/', 'src/restore/', 'src/daemon/', 'src/checkpoint/', 'native/libnbd', 'native/libvirt'];

let dir: string;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'fleece-test-startup-'));
});

afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** Runs the CLI with the module-log hook; returns its exit code, stdout and the modules it loaded. */
async function modulesOf(args: string[]): Promise<{ exitCode: number; stdout: string; modules: string[] }> {
  const log = join(dir, `modules-${args.join('_').replace(/[^\w-]/g, '')}.txt`);
  const result = await execa(process.execPath, ['--import', join(ROOT, 'test', 'harness', 'module-log.mjs'), CLI, ...args], {
    env: { ...cliEnv(dir), FLEECE_MODULE_LOG: log }, reject: false,
  });
  const modules = (await readFile(log, 'utf8')).split('\n').filter(Boolean);
  return { exitCode: result.exitCode ?? -1, stdout: String(result.stdout), modules };
}

function packageOf(module: string): string | undefined {
  const match = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(module);
  return match?.[1];
}

function heavyIn(modules: string[]): string[] {
  return modules.filter((m) => {
    const pkg = packageOf(m);
    if (pkg !== undefined) return HEAVY_PACKAGES.some((h) => pkg === h || pkg.startsWith(`${h}/`));
    return HEAVY_SOURCES.some((s) => m.includes(`/dist/${s}`));
  });
}

describe('fleece start-up', () => {
  test.each([
    [['--version']],
    [['--help']],
    [['backup', '--help']],
    [['vm', 'list']],
  ])('%j loads no heavy module', async (args) => {
    const { exitCode, modules } = await modulesOf(args);
    expect(exitCode).toBe(0);
    // The log works: the CLI and commander are in it.
    expect(modules.some((m) => m.endsWith('/dist/src/cli/main.js'))).toBe(true);
    expect(modules.some((m) => packageOf(m) === 'commander')).toBe(true);
    expect(heavyIn(modules)).toEqual([]);
  });

  test('backup of a bare QEMU loads neither execa nor the provider contracts (typebox) nor the daemon', async () => {
    // No QEMU listens: the command fails once the backup code is loaded, before anything is touched.
    const { exitCode, modules } = await modulesOf(['backup', 'vm1', '--qmp', join(dir, 'no-qmp.sock'), '--repo', join(dir, 'repo-b')]);
    expect(exitCode).not.toBe(0);
    expect(modules.some((m) => m.endsWith('/dist/src/backup/repository-backup.js'))).toBe(true);
    expect(modules.filter((m) => ['execa', 'typebox', 'fastify', '@aws-sdk/client-s3'].includes(packageOf(m) ?? '') || m.includes('/dist/src/daemon/'))).toEqual([]);
  });

  test('list --repo DIR loads the repository code, not its codecs, the restore code or any control plane', async () => {
    await mkdir(join(dir, 'repo'));
    const { exitCode, stdout, modules } = await modulesOf(['list', '--repo', join(dir, 'repo'), '--json']);
    expect(JSON.parse(stdout)).toEqual([]);
    expect(exitCode).toBe(0);
    expect(modules.some((m) => m.endsWith('/dist/src/repository/repository.js'))).toBe(true);
    expect(heavyIn(modules)).toEqual([]);
  });
});
