// The backup journal's file handling: one failed write fails only its own caller (the next save writes the whole
// record), and a provider restore's journal lives beside the VMs' under a name no VM can have.
import { describe, expect, test } from '@jest/globals';
import { mkdir, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { BackupJournal, readJournal, removeJournal, restoreJournalKeys } from '../../../src/backup/journal.js';
import { makeTempDir, removeTempDir } from '../../harness/temp-dir.js';

describe('BackupJournal', () => {
  test('a failed write does not poison the saves after it', async () => {
    const dir = await makeTempDir('journal');
    try {
      const journal = await BackupJournal.begin(dir, 'vm1');
      await journal.record({ kind: 'path', path: '/tmp/a' });
      await rm(join(dir, 'journal'), { recursive: true });
      await expect(journal.record({ kind: 'path', path: '/tmp/b' })).rejects.toThrow();
      await mkdir(join(dir, 'journal'));
      const id = await journal.record({ kind: 'path', path: '/tmp/c' });
      const record = JSON.parse(await readFile(join(dir, 'journal', 'vm1.json'), 'utf8')) as { effects: { id: number; effect: { path: string } }[] };
      expect(record.effects.map((e) => e.effect.path)).toEqual(['/tmp/a', '/tmp/b', '/tmp/c']);
      await journal.clear(id);
      expect((await readJournal(dir, 'vm1'))?.effects.map((e) => e.id)).toEqual([1, 2]);
    } finally {
      await removeTempDir(dir);
    }
  });

  test('a provider restore journal: its own file, listed, read and removed by its key', async () => {
    const dir = await makeTempDir('journal');
    try {
      const journal = await BackupJournal.beginRestore(dir);
      await journal.record({ kind: 'provider-restore', provider: 'p1', backupId: 'b1' });
      const keys = await restoreJournalKeys(dir);
      expect(keys).toEqual([expect.stringMatching(/^_restore-[0-9a-f]{8}$/)]);
      expect((await readJournal(dir, keys[0]!))?.effects[0]?.effect).toEqual({ kind: 'provider-restore', provider: 'p1', backupId: 'b1' });
      await removeJournal(dir, keys[0]!);
      expect(await restoreJournalKeys(dir)).toEqual([]);
      // A VM's journal is not a restore's: the VM can still be taken.
      await (await BackupJournal.begin(dir, 'restore-1')).end();
    } finally {
      await removeTempDir(dir);
    }
  });
});
