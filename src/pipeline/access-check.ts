import { INVALID_TOKEN } from '../auth/challenge.js';
import type { Identity } from '../auth/identity.js';
import { SESSION_TTL_SECONDS, type SessionValidator } from '../auth/sessions.js';
import type { Logger } from '../observability/logger.js';
import { keyPart, keys, type AccessAnswer, type AccessQuery } from '../stores/access-store.js';
import { UNAVAILABLE, type AccessControl } from '../stores/failover-access-store.js';
import type { RateLimitDecision } from '../stores/rate-limit-store.js';
import { PASS, stage, type Exchange, type Refusal, type RouteStage, type Verdict } from './exchange.js';
import { RATE_WINDOW_MS, rateLimitHeader } from './rate-limit-policy.js';

const REVOKED: Refusal = { code: 'GW_AUTH_TOKEN_REVOKED', detail: 'the token has been revoked; sign in again', headers: INVALID_TOKEN, counts: 'auth-failure' };
const SESSION_ENDED: Refusal = { code: 'GW_AUTH_SESSION_INVALID', detail: 'the session of this token has ended; sign in again', headers: INVALID_TOKEN, counts: 'auth-failure' };
const SESSION_UNVERIFIABLE: Refusal = { code: 'GW_AUTH_UNAVAILABLE', detail: 'the session cannot be validated right now; retry shortly', headers: { 'retry-after': '1' } };
const STORE_DOWN_PHI: Refusal = { code: 'GW_AUTH_UNAVAILABLE', detail: 'the revocation list is unreachable and this route carries PHI', headers: { 'retry-after': '1' } };
const STORE_DOWN_LIMIT: Refusal = { code: 'GW_DEPENDENCY_UNAVAILABLE', detail: 'rate limiting is unavailable and this route fails closed', headers: { 'retry-after': '1' } };

/**
 * Revocation, session and rate limit: one question to the shared store, one round trip, as the
 * spec's `rate_limit:{user_id}` and `session:{session_id}` keys and the revocation list live side
 * by side in Redis. The verified user is the rate-limit subject on authenticated routes; anonymous
 * traffic is limited by the client address, which a client cannot choose (client-address.ts). A
 * route with its own limit counts in its own key; every other route shares the user's budget.
 */
export class AccessCheck {
  constructor(
    private readonly store: AccessControl,
    private readonly sessions: SessionValidator,
    private readonly logger: Logger,
  ) {}

  /** Immediate with the in-memory store; a promise when the answer is Redis's or the auth service's. */
  check(ex: Exchange): Verdict | Promise<Verdict> {
    const route = ex.route!;
    const limit = route.rateLimit;
    const who = ex.identity;
    const subject = who !== null ? keyPart(who.userId) : keys.client(ex.clientIp);
    const query: AccessQuery = {
      rateKey: limit.ownKey ? keys.routeRate(route.name, subject) : keys.rate(subject),
      limit: limit.perMinute,
      windowMs: RATE_WINDOW_MS,
      token: who,
    };
    const answer = this.store.check(query, limit.failClosed || (route.phi && who !== null));
    return answer instanceof Promise ? answer.then((a) => this.verdict(ex, a)) : this.verdict(ex, answer);
  }

  private verdict(ex: Exchange, answer: AccessAnswer | typeof UNAVAILABLE): Verdict | Promise<Verdict> {
    const route = ex.route!;
    if (answer === UNAVAILABLE) return route.phi && ex.identity !== null ? STORE_DOWN_PHI : STORE_DOWN_LIMIT;
    if (answer.revoked) return REVOKED;
    const decision = answer.decision;
    ex.rateLimit = decision;
    if (!decision.allowed) return this.limited(ex, decision);
    const who = ex.identity;
    if (who === null || who.sessionId === null || answer.sessionUser === who.userId) return PASS;
    if (answer.sessionUser !== null) return SESSION_ENDED;
    return this.validateSession(ex, who);
  }

  private async validateSession(ex: Exchange, who: Identity): Promise<Verdict> {
    const verdict = await this.sessions.validate(who, ex.id);
    if (verdict === 'valid') {
      this.store.cacheSession(who.sessionId!, who.userId, SESSION_TTL_SECONDS);
      return PASS;
    }
    if (verdict === 'invalid') return SESSION_ENDED;
    this.logger.warn({ request_id: ex.id, route: ex.route!.name }, 'session validation failed: auth service unavailable');
    return SESSION_UNVERIFIABLE;
  }

  private limited(ex: Exchange, decision: RateLimitDecision): Refusal {
    const limit = ex.route!.rateLimit;
    this.logger.warn({ request_id: ex.id, route: ex.route!.name, user_id: ex.identity?.userId ?? null, ip_address: ex.clientIp, limit: limit.perMinute }, 'rate limit exceeded');
    return {
      code: 'GW_RATE_LIMITED',
      detail: `more than ${limit.perMinute} requests a minute`,
      headers: {
        'retry-after': String(Math.max(1, Math.ceil(decision.retryAfterMs / 1000))),
        'ratelimit-policy': limit.policyHeader,
        ratelimit: rateLimitHeader(limit.policyName, decision),
      },
      counts: 'rate-limited',
    };
  }
}

/**
 * Stage: on every route (public ones are limited per client address). The route's budget is
 * compiled into its Route (rate-limit-policy.ts); the stage holds the one AccessCheck.
 */
export const accessCheck: RouteStage<unknown, { readonly accessCheck: AccessCheck }> = {
  name: 'access_check',
  create(_route, deps) {
    const check = deps.accessCheck;
    return stage('access_check', (ex) => check.check(ex), true);
  },
};
