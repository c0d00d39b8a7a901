import type { ErrorCode } from '../../errors.js';
import { Decorator, type UpstreamHandler, type UpstreamLayer } from '../call.js';
import { BodyTimeout, BodyTooLarge, UpstreamFailure } from '../failures.js';

const CODES: Readonly<Record<string, ErrorCode>> = {
  UND_ERR_CONNECT_TIMEOUT: 'GW_UPSTREAM_CONNECT_TIMEOUT',
  UND_ERR_HEADERS_TIMEOUT: 'GW_UPSTREAM_TIMEOUT',
  UND_ERR_BODY_TIMEOUT: 'GW_UPSTREAM_TIMEOUT',
};

const DETAIL: Partial<Record<ErrorCode, string>> = {
  GW_UPSTREAM_CONNECT_TIMEOUT: 'the upstream service did not accept a connection in time',
  GW_UPSTREAM_TIMEOUT: 'the upstream service did not answer in time',
  GW_UPSTREAM_BAD_RESPONSE: 'the upstream service sent an invalid response',
  GW_UPSTREAM_UNAVAILABLE: 'the upstream service is unreachable',
};

const CLOSE = Object.freeze({ connection: 'close' });

/** The gateway's answer for a failed call: its code, a detail that names no internals, and why. */
export function toFailure(err: Error): UpstreamFailure {
  if (err instanceof UpstreamFailure) return err;
  // The rest of an oversized upload is never read: the connection goes with the answer.
  if (err instanceof BodyTooLarge) return new UpstreamFailure('GW_BODY_TOO_LARGE', err.message, CLOSE, err.code);
  if (err instanceof BodyTimeout) return new UpstreamFailure('GW_REQUEST_TIMEOUT', err.message, CLOSE, err.code);
  const cause = (err as NodeJS.ErrnoException).code ?? '';
  let code = CODES[cause];
  if (code === undefined) code = cause.startsWith('HPE_') || cause === 'UND_ERR_INFO' || cause === 'UND_ERR_RES_CONTENT_LENGTH_MISMATCH' ? 'GW_UPSTREAM_BAD_RESPONSE' : 'GW_UPSTREAM_UNAVAILABLE';
  return new UpstreamFailure(code, DETAIL[code]!, undefined, cause);
}

class MapErrors extends Decorator {
  override onResponseError(controller: Parameters<UpstreamHandler['onResponseError']>[0], error: Error): void {
    this.handler.onResponseError(controller, toFailure(error));
  }
}

/**
 * Outermost: whatever failed inside (a refusal, a timeout, a reset, a parse error of the
 * upstream's answer) reaches the forward stage as one UpstreamFailure with a gateway error code.
 */
export const errorMap: UpstreamLayer = (next) => (call, handler) => next(call, new MapErrors(handler));
