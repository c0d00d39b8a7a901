import type { ErrorCode } from '../errors.js';
import type { FailureKind } from './instance.js';

/**
 * The ways an upstream call fails, and whose fault each is. Layers raise these; the error-map
 * layer turns any of them (or undici's own errors) into an UpstreamFailure, the one shape the
 * forward stage answers with.
 */

/**
 * The base of the failures below: errors that steer a call, raised by the hundred in a storm (a
 * wave of deadlines that pass together, each refusal), each from one known place. They carry no
 * stack trace: Node formats it whenever a stream is destroyed with the error, and doing so (through
 * source maps when they are on) was the largest single cost of expiring a wave of deadlines.
 */
class Failure extends Error {
  constructor(message?: string) {
    const limit = Error.stackTraceLimit;
    Error.stackTraceLimit = 0;
    super(message);
    Error.stackTraceLimit = limit;
  }
}

/** A failure the gateway answers for, with its code: the error-map layer's output. */
export class UpstreamFailure extends Failure {
  constructor(
    readonly code: ErrorCode,
    readonly detail: string,
    readonly headers: Readonly<Record<string, string>> | undefined,
    /** The errno or undici code of what went wrong at the instance; null for the gateway's own refusals. */
    readonly causeCode: string | null,
  ) {
    super(detail);
  }
}

/** The gateway answered without calling an instance (breaker open, no instance in rotation). */
export class GatewayRefusal extends UpstreamFailure {
  constructor(code: ErrorCode, detail: string, headers?: Record<string, string>) {
    super(code, detail, headers, null);
  }
}

/** A chunked upload went past the route's limit while streaming. */
export class BodyTooLarge extends Failure {
  readonly code = 'BODY_TOO_LARGE';
}

/** The client's upload paused longer than the route's body timeout. */
export class BodyTimeout extends Failure {
  readonly code = 'BODY_TIMEOUT';
}

/** The route's deadline passed: the answer is 504, whatever tries are left. */
export class ResponseTimeout extends Failure {
  readonly code = 'UND_ERR_HEADERS_TIMEOUT';
  constructor(ms: number) {
    super(`no response headers within ${ms} ms`);
  }
}

/** One try took longer than the service's per-try timeout: another instance may answer. */
export class TryTimeout extends Failure {
  readonly code = 'UND_ERR_HEADERS_TIMEOUT';
  constructor(ms: number) {
    super(`no response headers within the per-try timeout of ${ms} ms`);
  }
}

/** The instance answered with a status the service retries; its answer is dropped. */
export class RetriedStatus extends Failure {
  readonly code = 'RETRIED_STATUS';
}

/** The client left, or the exchange ended before the try could start. */
export class ClientClosed extends Failure {
  readonly code = 'CLIENT_CLOSED';
}

/** Connection-level errors before any answer: the request never reached the instance. */
const CONNECT_ERRORS: ReadonlySet<string> = new Set(['ECONNREFUSED', 'UND_ERR_CONNECT_TIMEOUT', 'EHOSTUNREACH', 'ENETUNREACH', 'EHOSTDOWN', 'ENOTFOUND', 'EAI_AGAIN', 'EADDRNOTAVAIL']);

/** Errors of a connection that broke or an answer that was not HTTP: the instance's doing. */
const RESET_ERRORS: ReadonlySet<string> = new Set(['ECONNRESET', 'EPIPE', 'ECONNABORTED', 'UND_ERR_SOCKET', 'UND_ERR_CLOSED', 'UND_ERR_INFO', 'UND_ERR_RES_CONTENT_LENGTH_MISMATCH']);

/**
 * Whose fault a failed try was: the instance's (counted for outlier detection, maybe retried) or
 * not (null): the client left, its body was too large, or the gateway itself could not send the
 * request (a bad argument must not eject healthy instances). `sent`: the request reached the
 * instance, so a deadline that passed is the instance's slowness.
 */
export function failureKind(err: Error, sent: boolean): FailureKind | null {
  if (err instanceof BodyTooLarge || err instanceof BodyTimeout || err instanceof ClientClosed || err instanceof UpstreamFailure) return null;
  if (err instanceof ResponseTimeout) return sent ? 'timeout' : null;
  if (err instanceof TryTimeout) return 'timeout';
  if (err instanceof RetriedStatus) return 'status';
  const code = (err as NodeJS.ErrnoException).code ?? '';
  if (CONNECT_ERRORS.has(code)) return 'connect';
  if (code === 'UND_ERR_BODY_TIMEOUT') return 'timeout';
  if (RESET_ERRORS.has(code) || code.startsWith('HPE_')) return 'reset';
  return null;
}
