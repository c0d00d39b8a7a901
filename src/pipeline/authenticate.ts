import type { JwtVerifier, VerifyResult } from '../auth/jwt.js';
import type { Exchange } from './exchange.js';
import type { ErrorCode } from '../errors.js';
import type { AuthFailureLimit } from './auth-failure-limit.js';

export type StageResult = null | { code: ErrorCode; detail: string; headers?: Record<string, string> };

const PASS: StageResult = null;

export const BEARER_CHALLENGE = 'Bearer realm="api-gateway"';

/**
 * Bearer JWT -> verified identity on every route whose auth is `required`. Answers at once for
 * public routes and tokens verified before; only a new token waits for a signature check.
 */
export function authenticate(ex: Exchange, authorization: string | undefined, verifier: JwtVerifier, failures: AuthFailureLimit): StageResult | Promise<StageResult> {
  if (ex.route!.auth === 'public') return PASS;
  const hit = verifier.cached(authorization);
  if (hit !== undefined) {
    ex.identity = hit.identity;
    return PASS;
  }
  // An address that spent its budget on failed authentications gets no signature check.
  const blocked = failures.check(ex.clientIp);
  if (blocked !== null) return blocked;
  return verifier.verifyUncached(authorization).then((r) => verdict(ex, r));
}

function verdict(ex: Exchange, result: VerifyResult): StageResult {
  if (result.ok) {
    ex.identity = result.identity;
    return PASS;
  }
  // A key source that cannot be reached says nothing about the caller: 503, not 401.
  if (result.reason === 'GW_AUTH_UNAVAILABLE') return { code: result.reason, detail: result.detail, headers: { 'retry-after': '1' } };
  // RFC 6750: say that a Bearer token is expected, and why this one was refused, without echoing it.
  const error = result.reason === 'GW_AUTH_TOKEN_MISSING' ? '' : ', error="invalid_token"';
  return {
    code: result.reason,
    detail: result.detail,
    headers: { 'www-authenticate': `${BEARER_CHALLENGE}${error}` },
  };
}
