// The one commit point of a backup or checkpoint: a QMP `transaction` of actions that all happen or none do.
import type { QmpExecutor } from '../qmp/client.js';
import { InvalidInputError } from '../util/errors.js';
import { getLogger } from '../util/logger.js';
import type { TransactionAction } from './actions.js';

const log = getLogger('qemu-transaction');

export interface TransactionOptions {
  signal?: AbortSignal;
  timeoutMs?: number;
  /**
   * 'individual' (QEMU's default: a job's failure after the commit is its own) or 'grouped' (jobs started by the
   * transaction fail together). Omitted from the command unless given, as libvirt does.
   */
  completionMode?: 'individual' | 'grouped';
}

/** The arguments of the `transaction` command for these actions (pure; what golden tests compare). */
export function transactionArguments(
  actions: readonly TransactionAction[],
  completionMode?: 'individual' | 'grouped',
): Record<string, unknown> {
  const args: Record<string, unknown> = { actions: actions.map((a) => ({ type: a.type, data: a.data })) };
  if (completionMode !== undefined) args.properties = { 'completion-mode': completionMode };
  return args;
}

/**
 * Runs the actions in one `transaction`: all take effect or none (QEMU rolls back the ones done).
 * @throws InvalidInputError when `actions` is empty; QmpError when QEMU refuses (nothing changed);
 *   QmpClosedError / QmpTimeoutError / AbortedError from the call (on a timeout or abort the outcome is unknown:
 *   query the block graph before cleaning up).
 */
export async function transaction(
  qmp: QmpExecutor,
  actions: readonly TransactionAction[],
  options: TransactionOptions = {},
): Promise<void> {
  if (actions.length === 0) throw new InvalidInputError('a QMP transaction needs at least one action');
  const args = transactionArguments(actions, options.completionMode);
  log.debug({ actions: actions.map((a) => a.type) }, 'transaction');
  const call: { signal?: AbortSignal; timeoutMs?: number } = {};
  if (options.signal) call.signal = options.signal;
  if (options.timeoutMs !== undefined) call.timeoutMs = options.timeoutMs;
  await qmp.execute('transaction', args, call);
}
