// The provider contract both ways (fleece's requests and the provider's answers against the schemas, the checked-in
// JSON schema equal to the code's), the bitmap mode choice, the process protocol's failures (with tiny shell
// providers), and the tool driver's configuration, templates and Cinder-style output check.
import { describe, expect, test } from '@jest/globals';
import { chmod, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  CONTRACT,
  PROVIDER_VERBS,
  ProviderError,
  buildRequest,
  contractJsonSchema,
  contractViolation,
  parseReply,
} from '../../../src/backup/consume/provider-contract.js';
import { ExecProvider } from '../../../src/backup/consume/provider-client.js';
import { chooseBitmapModes, type BitmapChoiceInput } from '../../../src/backup/consume/provider-consumer.js';
import { ToolConfigSchema, checkToolConfig, checkToolOutput, fillTemplate, loadToolConfig, parseKeyValues } from '../../../src/backup/consume/tool-driver.js';
import type { Checkpoint } from '../../../src/checkpoint/model.js';
import { checkBackupRequest } from '../../../src/app/backup-request.js';
import { parseTimeouts } from '../../../src/app/provider-registry.js';

const SCHEMA_FILE = join(process.cwd(), 'docs', 'provider-contract.schema.json');

describe('the contract document', () => {
  test('docs/provider-contract.schema.json is exactly what the code checks (FLEECE_WRITE_SCHEMA=1 rewrites it)', async () => {
    const generated = contractJsonSchema({ 'tool-config': ToolConfigSchema });
    if (process.env.FLEECE_WRITE_SCHEMA === '1') await writeFile(SCHEMA_FILE, `${JSON.stringify(generated, null, 2)}\n`);
    expect(JSON.parse(await readFile(SCHEMA_FILE, 'utf8'))).toEqual(generated);
    expect(PROVIDER_VERBS).toEqual(Object.keys(CONTRACT));
    expect(PROVIDER_VERBS).toContain('query-incremental');
  });

  test("fleece's own requests are checked: a wrong field is fleece's bug, named", () => {
    const ok = buildRequest('backup-init', { provider: 'p', config: '/etc/p.json' }, { vm: 'vm1', 'vm-type': 'qemu', 'start-time': 1 });
    expect(ok).toEqual({ contract: 1, provider: 'p', config: '/etc/p.json', vm: 'vm1', 'vm-type': 'qemu', 'start-time': 1 });
    expect(() => buildRequest('query-incremental', { provider: 'p' }, { vm: 'vm1', 'backup-id': 'b1', volumes: { 'bad name!': { size: 1 } } }))
      .toThrow("backup provider 'p' was not called: fleece's own request has unknown field 'volumes.bad name!' (verb query-incremental)");
  });

  test('answers: bad JSON, not an object, unknown and missing fields, values out of the contract', () => {
    const wrong = (verb: Parameters<typeof parseReply>[1], text: string) => {
      try {
        parseReply('restic1', verb, text);
      } catch (error) {
        expect(error).toBeInstanceOf(ProviderError);
        return (error as ProviderError).message;
      }
      throw new Error('no error');
    };
    expect(parseReply('p', 'get-mechanism', '{"mechanism":"nbd"}\n')).toEqual({ mechanism: 'nbd' });
    expect(parseReply('p', 'job-init', '{"contract":1,"warnings":["slow server"]}')).toEqual({ contract: 1, warnings: ['slow server'] });
    expect(wrong('get-mechanism', 'mechanism: nbd')).toMatch(/^backup provider 'restic1' answered with bad JSON \(.*\); its stdout began "mechanism: nbd" \(verb get-mechanism\); a provider prints exactly one JSON object/);
    expect(wrong('job-init', '')).toMatch(/answered "", not a JSON object/);
    expect(wrong('job-init', '[1]')).toMatch(/answered \[1\], not a JSON object/);
    expect(wrong('get-mechanism', '{"mechanism":"tape"}')).toContain("its answer has field 'mechanism' \"tape\", not one of nbd, file-handle (verb get-mechanism)");
    expect(wrong('get-mechanism', '{"mechanism":"nbd","colour":"blue"}')).toContain("its answer has unknown field 'colour'");
    expect(wrong('backup-init', '{}')).toContain("its answer lacks field 'backup-id'");
    expect(wrong('backup-init', '{"backup-id":"../etc"}')).toContain("field 'backup-id' \"../etc\", which does not match");
    expect(wrong('query-incremental', '{"volumes":{"vda":"maybe"}}')).toContain("field 'volumes.vda' \"maybe\", not one of new, use");
    expect(wrong('job-init', '{"contract":2}')).toContain("field 'contract' 2, not 1");
    expect(wrong('backup-cleanup', '{"stats":{"archive-size":-1}}')).toContain("field 'stats.archive-size' -1");
  });

  test('every verb has a request and a reply schema that reject unknown fields', () => {
    for (const verb of PROVIDER_VERBS) {
      expect(contractViolation(CONTRACT[verb].reply, { nonsense: 1 })).toMatch(/unknown field 'nonsense'|lacks field/);
      expect((CONTRACT[verb].request as { additionalProperties?: boolean }).additionalProperties).toBe(false);
    }
  });
});

describe('bitmap modes', () => {
  const cp = (name: string, disks = ['vda']): Checkpoint => ({ name, creationTime: 1, disks: disks.map((d) => ({ name: d, checkpoint: 'bitmap' as const })) });
  const base: BitmapChoiceInput = {
    provider: 'p',
    disks: [{ target: 'vda', virtualSize: 100, format: 'qcow2' }, { target: 'vdb', virtualSize: 50, format: 'raw' }],
    asked: { vda: 'use', vdb: 'use' },
    state: { version: 1, provider: 'p', vm: 'vm1', backupId: 'b1', checkpoint: 'cp1', finishedAt: '', disks: { vda: { size: 100, bitmapMode: 'new', checkpoint: 'cp1' } } },
    checkpoints: [cp('cp1')],
    checks: [{ name: 'cp1', valid: true, disks: [{ checkpoint: 'cp1', disk: 'vda', bitmap: 'cp1', state: 'ok' }] }],
    canCheckpoint: true,
    level: 'auto',
  };
  const mode = (input: Partial<BitmapChoiceInput>) => chooseBitmapModes({ ...base, ...input })[0]!;

  test('reuse since the last successful checkpoint; a raw disk none', () => {
    const [vda, vdb] = chooseBitmapModes(base);
    expect(vda).toEqual({ disk: 'vda', mode: 'reuse', incrementalFrom: 'cp1', reason: "incremental since checkpoint cp1 (provider 'p''s backup b1)" });
    expect(vdb).toMatchObject({ mode: 'none', reason: 'disk vdb is raw: it cannot hold a bitmap' });
  });

  test('new, with the reason, whenever the old bitmap cannot be used', () => {
    expect(mode({ asked: { vda: 'new' } })).toMatchObject({ mode: 'new', reason: "provider 'p' asked for a new bitmap" });
    expect(mode({ asked: {} })).toMatchObject({ mode: 'none', reason: "provider 'p' asked for no bitmap on disk vda" });
    expect(mode({ level: 'full' })).toMatchObject({ mode: 'new', reason: 'a full backup was asked for (--full)' });
    expect(mode({ state: undefined })).toMatchObject({ mode: 'new', reason: "provider 'p' has no successful backup of disk vda with a bitmap yet" });
    expect(mode({ checkpoints: [] })).toMatchObject({ mode: 'new', reason: "checkpoint cp1 of provider 'p''s last backup b1 is gone" });
    expect(mode({ checkpoints: [cp('cp1', ['vdb'])] })).toMatchObject({ mode: 'new', reason: 'checkpoint cp1 has no bitmap on disk vda' });
    expect(mode({ checks: [{ name: 'cp1', valid: false, disks: [{ checkpoint: 'cp1', disk: 'vda', bitmap: 'cp1', state: 'inconsistent', detail: 'broken' }] }] }))
      .toMatchObject({ mode: 'new', reason: 'the bitmap of checkpoint cp1 on disk vda is inconsistent (broken)' });
    expect(mode({ disks: [{ target: 'vda', virtualSize: 200, format: 'qcow2' }] })).toMatchObject({ mode: 'new', reason: "disk vda changed size since provider 'p''s last backup (100 → 200 bytes)" });
    expect(mode({ canCheckpoint: false, asked: { vda: 'new' } })).toMatchObject({ mode: 'none' });
    expect(mode({ canCheckpoint: false })).toMatchObject({ mode: 'reuse' });
  });
});

describe('the process protocol', () => {
  const provider = async (script: string, timeouts: Record<string, number> = {}) => {
    const dir = await mkdtemp(join(tmpdir(), 'fleece-test-provider-'));
    const exec = join(dir, 'p');
    await writeFile(exec, `#!/bin/sh\n${script}\n`);
    await chmod(exec, 0o755);
    const lines: string[] = [];
    return { dir, lines, p: new ExecProvider({ name: 'tiny', exec, timeouts, onStderr: (line) => lines.push(line) }) };
  };

  test('the verb in argv[1], the request on stdin, stderr line by line, the answer checked', async () => {
    const { dir, lines, p } = await provider('read req; echo "got $1" >&2; echo "$req" >&2; echo \'{"backup-id":"b-1"}\'');
    try {
      expect(await p.call('backup-init', { vm: 'vm1', 'vm-type': 'qemu', 'start-time': 7 })).toEqual({ 'backup-id': 'b-1' });
      expect(lines[0]).toBe('got backup-init');
      expect(JSON.parse(lines[1]!)).toEqual({ contract: 1, provider: 'tiny', vm: 'vm1', 'vm-type': 'qemu', 'start-time': 7 });
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  test('exit status with its {"error"} and stderr, an unknown verb (64), a timeout, an abort', async () => {
    const failing = await provider('echo "disk full" >&2; echo \'{"error":"no space on the server"}\'; exit 3');
    const unknown = await provider('exit 64');
    const slow = await provider('sleep 30', { 'job-init': 1 });
    try {
      await expect(failing.p.call('job-init', { 'start-time': 1 })).rejects.toThrow(
        "backup provider 'tiny' exited with status 3: no space on the server; its last stderr lines: disk full (verb job-init)");
      await expect(unknown.p.call('job-cleanup', { success: true })).rejects.toMatchObject({ reason: 'unknown-verb' });
      const started = Date.now();
      await expect(slow.p.call('job-init', { 'start-time': 1 })).rejects.toMatchObject({ reason: 'timeout', message: expect.stringContaining('did not answer within 1 s and was stopped') });
      expect(Date.now() - started).toBeLessThan(5000);
      const controller = new AbortController();
      const call = slow.p.call('job-init', { 'start-time': 1 }, { timeoutMs: 20_000, signal: controller.signal });
      setTimeout(() => controller.abort(), 100);
      await expect(call).rejects.toMatchObject({ reason: 'aborted', code: 'ABORTED' });
    } finally {
      for (const x of [failing, unknown, slow]) await rm(x.dir, { recursive: true, force: true });
    }
  });
});

describe('tool drivers', () => {
  const DSMC = [
    'IBM Spectrum Protect',
    'Total number of objects inspected:        1',
    'Total number of objects backed up:        1',
    'Total number of bytes transferred:    64.00 MB',
  ].join('\n');

  test('the key : value check, exact or at least, and the exit code (Cinder\'s TSM driver)', () => {
    expect(parseKeyValues(DSMC).get('Total number of objects backed up')).toBe('1');
    const run = { exitCode: 0, signal: null, stdout: DSMC, stderr: '' };
    expect(checkToolOutput({ expect: [{ key: 'Total number of objects backed up', value: '1' }] }, run)).toBeUndefined();
    expect(checkToolOutput({ expect: [{ key: 'Total number of objects backed up', value: '2', match: 'at-least' }] }, run)).toBe("its output says 'Total number of objects backed up : 1', less than 2");
    expect(checkToolOutput({ expect: [{ key: 'Total number of objects restored', value: '1' }] }, run)).toBe("its output has no line 'Total number of objects restored : 1'");
    expect(checkToolOutput({ expect: [{ key: 'Total number of objects backed up', value: '1' }], streams: 'stderr' }, run)).toMatch(/no line/);
    expect(checkToolOutput(undefined, { ...run, exitCode: 12 })).toBe('it exited with status 12 (success is 0)');
    expect(checkToolOutput({ 'exit-codes': [0, 4] }, { ...run, exitCode: 4 })).toBeUndefined();
    expect(checkToolOutput(undefined, { ...run, exitCode: null, signal: 'SIGKILL' })).toBe('it was killed by SIGKILL');
  });

  test('templates are argument vectors; unknown placeholders and secrets on the command line are refused', async () => {
    expect(fillTemplate(['borg', 'create', '::{backup_id}', '{path}'], { backup_id: 'vm1-x-vda', path: '/run/p/vda' })).toEqual(['borg', 'create', '::vm1-x-vda', '/run/p/vda']);
    expect(fillTemplate(['tool', '{path}'], { path: 'a b; rm -rf /' })).toEqual(['tool', 'a b; rm -rf /']);
    const config = (argv: string[]) => ({ tool: 1, mode: 'image', backup: { argv }, restore: { argv: ['t', '{path}'] } });
    expect(() => checkToolConfig(config(['t', '{volume}']), 'x.json')).toThrow('the backup command of x.json has an unknown placeholder {volume}');
    expect(() => checkToolConfig(config(['dsmc', '-password=secret', '{path}']), 'x.json')).toThrow('puts a secret on the command line');
    expect(() => checkToolConfig(config(['t', '--passphrase', 'x']), 'x.json')).toThrow('puts a secret on the command line');
    expect(() => checkToolConfig({ ...config(['t']), mode: 'tape' }, 'x.json')).toThrow("the tool driver configuration x.json has field 'mode' \"tape\", not one of image, file");
    for (const f of ['borg-tool.json', 'dsmc-tool.json']) await expect(loadToolConfig(join(process.cwd(), 'fixtures', 'providers', f))).resolves.toMatchObject({ tool: 1 });
  });
});

describe('the backup request', () => {
  test('a repository or a provider, not both, not neither; --timeout VERB=SECONDS', () => {
    expect(checkBackupRequest({ vm: 'vm1', provider: 'restic1' }).provider).toBe('restic1');
    expect(() => checkBackupRequest({ vm: 'vm1', provider: 'restic1', repo: '/r' })).toThrow("either a repository ('repo') or a backup provider ('provider'), not both");
    expect(() => checkBackupRequest({ vm: 'vm1' })).toThrow("field 'repo' of the backup request is missing");
    expect(() => checkBackupRequest({ vm: 'vm1', provider: '../x' })).toThrow("field 'provider' is '../x', which is no provider name");
    expect(parseTimeouts(['backup-vm=7200', 'job-init=5'])).toEqual({ 'backup-vm': 7200, 'job-init': 5 });
    expect(() => parseTimeouts(['backup=1'])).toThrow("--timeout 'backup=1' is not VERB=SECONDS");
  });
});
