// The QMP client's run state as data: the states, the allowed transitions, and the one function that moves between them.
import { FleeceError } from '../util/errors.js';

/** idle → connecting → running → disconnecting → closed (a failed connect goes connecting → disconnecting → closed). */
export type QmpRunState = 'idle' | 'connecting' | 'running' | 'disconnecting' | 'closed';

const ALLOWED: Readonly<Record<QmpRunState, readonly QmpRunState[]>> = {
  idle: ['connecting', 'disconnecting'],
  connecting: ['running', 'disconnecting'],
  running: ['disconnecting'],
  disconnecting: ['closed'],
  closed: [],
};

/**
 * Returns `to` when the move from `from` is allowed.
 * @throws FleeceError 'INTERNAL' for a transition the state machine does not allow (a bug in the client).
 */
export function transitionRunState(from: QmpRunState, to: QmpRunState): QmpRunState {
  if (!ALLOWED[from].includes(to)) {
    throw new FleeceError('INTERNAL', `QMP client cannot go from state '${from}' to '${to}'`, {
      hint: 'this is a bug in fleece; please report it',
    });
  }
  return to;
}
