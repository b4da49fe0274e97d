import { nextDiskState, isDiskTerminal, type DiskEvent, type DiskState } from '../../../src/backup/disk-state.js';

const run = (events: DiskEvent[], from: DiskState = 'none'): DiskState => events.reduce(nextDiskState, from);

describe('nextDiskState', () => {
  test('a job that starts and completes is complete', () => {
    expect(run(['started', 'job-completed'])).toBe('complete');
  });
  test('a job that fails is failed, and stays failed', () => {
    expect(run(['started', 'job-failed', 'job-completed', 'cancel-requested'])).toBe('failed');
  });
  test('cancel goes through cancelling to cancelled', () => {
    expect(run(['started', 'cancel-requested'])).toBe('cancelling');
    expect(run(['started', 'cancel-requested', 'job-cancelled'])).toBe('cancelled');
  });
  test('a job that completes while its cancel is in flight counts as cancelled', () => {
    expect(run(['started', 'cancel-requested', 'job-completed'])).toBe('cancelled');
  });
  test('a cancel before the start means the job never runs', () => {
    expect(run(['cancel-requested'])).toBe('cancelled');
    expect(run(['cancel-requested', 'started'])).toBe('cancelled');
  });
  test('end events before the start are ignored', () => {
    expect(run(['job-completed', 'job-failed'])).toBe('none');
  });
  test('terminal states never change', () => {
    const events: DiskEvent[] = ['started', 'job-completed', 'job-failed', 'cancel-requested', 'job-cancelled'];
    for (const state of ['complete', 'failed', 'cancelled'] as DiskState[]) {
      expect(isDiskTerminal(state)).toBe(true);
      for (const event of events) expect(nextDiskState(state, event)).toBe(state);
    }
  });
});
