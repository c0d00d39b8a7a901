import type { JwtVerifier } from '../auth/jwt.js';
import type { Exchange } from './exchange.js';
import type { ErrorCode } from '../errors.js';

export type StageResult = null | { code: ErrorCode; detail: string; headers?: Record<string, string> };

const PASS: StageResult = null;

/** Bearer JWT -> verified identity on every route whose auth is `required`. */
export async function authenticate(ex: Exchange, authorization: string | undefined, verifier: JwtVerifier): Promise<StageResult> {
  if (ex.route!.auth === 'public') return PASS;
  const result = await verifier.verify(authorization);
  if (result.ok) {
    ex.identity = result.identity;
    return PASS;
  }
  // RFC 6750: say that a Bearer token is expected, and why this one was refused, without echoing it.
  const error = result.reason === 'GW_AUTH_TOKEN_MISSING' ? '' : ', error="invalid_token"';
  return {
    code: result.reason,
    detail: result.detail,
    headers: { 'www-authenticate': `Bearer realm="api-gateway"${error}` },
  };
}
