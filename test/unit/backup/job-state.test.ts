import { foldJobState, isJobTerminal } from '../../../src/backup/job-state.js';

describe('foldJobState', () => {
  test('before the transaction the job is preparing; an abort then ends it at once', () => {
    expect(foldJobState('push', { vda: 'none', vdb: 'none' })).toEqual({ phase: 'preparing', toCancel: [] });
    expect(foldJobState('push', { vda: 'none' }, 'abort')).toEqual({ phase: 'cancelled', toCancel: [] });
  });
  test('push completes only when every disk completed', () => {
    expect(foldJobState('push', { vda: 'complete', vdb: 'running' })).toEqual({ phase: 'running', toCancel: [] });
    expect(foldJobState('push', { vda: 'complete', vdb: 'complete' })).toEqual({ phase: 'completed', toCancel: [] });
  });
  test('one failed disk cancels its running siblings, then the job is failed', () => {
    expect(foldJobState('push', { vda: 'failed', vdb: 'running', vdc: 'complete' })).toEqual({
      phase: 'cancelling',
      toCancel: ['vdb'],
    });
    expect(foldJobState('push', { vda: 'failed', vdb: 'cancelling' })).toEqual({ phase: 'cancelling', toCancel: [] });
    expect(foldJobState('push', { vda: 'failed', vdb: 'cancelled' })).toEqual({ phase: 'failed', toCancel: [] });
  });
  test('abort cancels every running disk and ends cancelled', () => {
    expect(foldJobState('push', { vda: 'running', vdb: 'complete' }, 'abort')).toEqual({
      phase: 'cancelling',
      toCancel: ['vda'],
    });
    expect(foldJobState('push', { vda: 'cancelled', vdb: 'complete' }, 'abort').phase).toBe('cancelled');
  });
  test('pull stays ready until the reader finishes, and then the cancelled jobs mean completed', () => {
    expect(foldJobState('pull', { vda: 'running', vdb: 'running' })).toEqual({ phase: 'ready', toCancel: [] });
    expect(foldJobState('pull', { vda: 'running', vdb: 'running' }, 'finish')).toEqual({
      phase: 'finishing',
      toCancel: ['vda', 'vdb'],
    });
    expect(foldJobState('pull', { vda: 'cancelled', vdb: 'cancelled' }, 'finish').phase).toBe('completed');
    expect(foldJobState('pull', { vda: 'cancelled', vdb: 'cancelled' }, 'abort').phase).toBe('cancelled');
  });
  test('a pull job that fails (scratch full) fails the whole job even during finish', () => {
    expect(foldJobState('pull', { vda: 'failed', vdb: 'running' }, 'finish')).toEqual({
      phase: 'cancelling',
      toCancel: ['vdb'],
    });
    expect(foldJobState('pull', { vda: 'failed', vdb: 'cancelled' }, 'finish').phase).toBe('failed');
  });
  test('terminal phases', () => {
    expect(['completed', 'failed', 'cancelled'].every((p) => isJobTerminal(p as never))).toBe(true);
    expect(['preparing', 'running', 'ready', 'finishing', 'cancelling'].some((p) => isJobTerminal(p as never))).toBe(false);
  });
});
