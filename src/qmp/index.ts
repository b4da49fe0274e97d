// The public surface of the QMP layer.
export {
  QmpClient,
  DEFAULT_COMMAND_TIMEOUT_MS,
  DEFAULT_CONNECT_TIMEOUT_MS,
  type QmpExecutor,
  type ConnectOptions,
  type QmpTrace,
} from './client.js';
export { QmpEventListener, QmpEventHub, MAX_BUFFERED_EVENTS, type CallOptions, type EventPredicate } from './events.js';
export { QmpError, QmpConnectError, QmpClosedError, QmpTimeoutError, QmpProtocolError } from './errors.js';
export { QmpDecoder, encodeMessage } from './framing.js';
export type { QmpEvent, QmpGreeting, QmpVersion } from './messages.js';
export type { QmpRunState } from './run-state.js';
export { describeAddress, type QmpAddress } from './transport.js';
