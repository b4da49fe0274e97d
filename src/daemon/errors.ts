// Maps every error a request can meet to the API's error reply: 400 bad input, 401, 404, 409, 500 otherwise.
import { isFleeceError, describeError } from '../util/errors.js';

export interface ErrorReply {
  status: number;
  body: { error: { code: string; message: string } };
}

interface FastifyLikeError {
  statusCode?: number;
  code?: string;
  validation?: unknown;
  validationContext?: string;
  message: string;
}

/** The HTTP status and body for `error`; never throws. */
export function errorReply(error: unknown): ErrorReply {
  if (isFleeceError(error)) {
    const status =
      error.code === 'INVALID_INPUT' || error.code === 'USAGE'
        ? 400
        : error.code === 'NOT_FOUND'
          ? 404
          : error.code === 'CONFLICT'
            ? 409
            : 500;
    return { status, body: { error: { code: error.code, message: error.message } } };
  }
  const fe = error as FastifyLikeError;
  if (fe && typeof fe === 'object' && fe.validation !== undefined) {
    return { status: 400, body: { error: { code: 'INVALID_INPUT', message: fe.message } } };
  }
  if (fe && typeof fe === 'object' && typeof fe.statusCode === 'number' && fe.statusCode >= 400 && fe.statusCode < 500) {
    const code = fe.statusCode === 404 ? 'NOT_FOUND' : fe.statusCode === 401 ? 'UNAUTHORIZED' : 'INVALID_INPUT';
    return { status: fe.statusCode, body: { error: { code, message: fe.message } } };
  }
  return { status: 500, body: { error: { code: 'INTERNAL', message: describeError(error) } } };
}
