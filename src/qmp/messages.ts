// The shapes of QMP wire messages (greeting, command, return, error reply, event) and type guards for them.

export interface QmpVersion {
  qemu: { major: number; minor: number; micro: number };
  package: string;
}

/** The server's greeting: `{"QMP": {"version": ..., "capabilities": [...]}}`, unwrapped. */
export interface QmpGreeting {
  version: QmpVersion;
  capabilities: string[];
}

/** An asynchronous event sent by QEMU. */
export interface QmpEvent {
  event: string;
  data: Record<string, unknown>;
  timestamp: { seconds: number; microseconds: number };
}

/** A command as sent on the wire. */
export interface QmpCommandMessage {
  execute: string;
  arguments?: Record<string, unknown>;
  id: string;
}

export interface QmpReturnMessage {
  return: unknown;
  id?: unknown;
}

export interface QmpErrorMessage {
  error: { class: string; desc: string };
  id?: unknown;
}

export type QmpReplyMessage = QmpReturnMessage | QmpErrorMessage;

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** True for the raw greeting message `{"QMP": {...}}`. */
export function isGreetingMessage(message: unknown): message is { QMP: QmpGreeting } {
  if (!isRecord(message) || !isRecord(message.QMP)) return false;
  const body = message.QMP;
  return isRecord(body.version) && isRecord(body.version.qemu) && Array.isArray(body.capabilities);
}

export function isReturnMessage(message: unknown): message is QmpReturnMessage {
  return isRecord(message) && 'return' in message;
}

export function isErrorMessage(message: unknown): message is QmpErrorMessage {
  return isRecord(message) && isRecord(message.error) && typeof message.error.class === 'string';
}

export function isEventMessage(message: unknown): message is QmpEvent {
  return isRecord(message) && typeof message.event === 'string';
}

/** Normalises an event: QEMU omits `data` for events without payload (e.g. STOP, RESUME). */
export function toEvent(message: QmpEvent): QmpEvent {
  const timestamp = isRecord(message.timestamp)
    ? { seconds: Number(message.timestamp.seconds), microseconds: Number(message.timestamp.microseconds) }
    : { seconds: 0, microseconds: 0 };
  return { event: message.event, data: isRecord(message.data) ? message.data : {}, timestamp };
}
