import { transitionRunState, type QmpRunState } from '../../../src/qmp/run-state.js';
import { FleeceError } from '../../../src/util/errors.js';

describe('transitionRunState', () => {
  it('allows the life cycle idle → connecting → running → disconnecting → closed', () => {
    let state: QmpRunState = 'idle';
    for (const next of ['connecting', 'running', 'disconnecting', 'closed'] as const) {
      state = transitionRunState(state, next);
      expect(state).toBe(next);
    }
  });

  it('allows a failed connect to go connecting → disconnecting', () => {
    expect(transitionRunState('connecting', 'disconnecting')).toBe('disconnecting');
  });

  it.each([
    ['closed', 'running'],
    ['closed', 'connecting'],
    ['running', 'connecting'],
    ['running', 'closed'],
    ['idle', 'running'],
    ['disconnecting', 'running'],
  ] as Array<[QmpRunState, QmpRunState]>)('refuses %s → %s', (from, to) => {
    expect(() => transitionRunState(from, to)).toThrow(FleeceError);
  });
});
