import { z } from 'zod';
import { BEARER_CHALLENGE, INVALID_TOKEN } from '../auth/challenge.js';
import type { JwtVerifier, VerifyResult } from '../auth/jwt.js';
import type { AuthFailureLimit } from './auth-failure-limit.js';
import { PASS, stage, type Exchange, type Refusal, type RouteStage, type Verdict } from './exchange.js';

/** The routes-file slice: whether the route needs a verified caller. */
export const authenticateSchema = {
  auth: z.enum(['required', 'public'], { error: 'auth is "required" or "public"' }).default('required'),
};

export interface AuthenticateDeps {
  readonly verifier: JwtVerifier;
  readonly authFailures: AuthFailureLimit;
}

const MISSING_CHALLENGE = Object.freeze({ 'www-authenticate': BEARER_CHALLENGE });

function refusal(result: VerifyResult & { ok: false }): Refusal {
  // A key source that cannot be reached says nothing about the caller: 503, not 401.
  if (result.reason === 'GW_AUTH_UNAVAILABLE') return { code: result.reason, detail: result.detail, headers: { 'retry-after': '1' }, counts: 'auth-failure' };
  // RFC 6750: say that a Bearer token is expected, and why this one was refused, without echoing it.
  return { code: result.reason, detail: result.detail, headers: result.reason === 'GW_AUTH_TOKEN_MISSING' ? MISSING_CHALLENGE : INVALID_TOKEN, counts: 'auth-failure' };
}

/**
 * Stage: Bearer JWT -> verified identity, on routes whose auth is `required` (absent from public
 * routes' chains). Answers at once for tokens verified before; only a new token waits for a
 * signature check. Every failure counts against its client address (auth-failure-limit.ts); once
 * an address has spent that budget its failures are 429, while valid tokens from it still pass.
 */
export const authenticate: RouteStage<z.output<z.ZodObject<typeof authenticateSchema>>, AuthenticateDeps> = {
  name: 'authenticate',
  create(route, { verifier, authFailures }) {
    if (route.auth === 'public') return null;
    const verdict = (ex: Exchange, result: VerifyResult): Verdict => {
      if (result.ok) {
        ex.identity = result.identity;
        return PASS;
      }
      // A key source that is down says nothing about the caller: not counted, never 429.
      if (result.reason === 'GW_AUTH_UNAVAILABLE') return refusal(result);
      const blocked = authFailures.check(ex.clientIp);
      if (blocked !== null) return blocked;
      authFailures.failed(ex.clientIp);
      return refusal(result);
    };
    return stage(
      'authenticate',
      (ex, req) => {
        const authorization = req.headers.authorization;
        const hit = verifier.cached(authorization);
        if (hit !== undefined) {
          ex.identity = hit.identity;
          return PASS;
        }
        return verifier.verifyUncached(authorization).then((r) => verdict(ex, r));
      },
      true,
    );
  },
};
