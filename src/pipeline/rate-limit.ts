import type { Logger } from '../observability/logger.js';
import type { FailoverRateLimitStore } from '../stores/failover-rate-limit.js';
import type { RateLimitDecision } from '../stores/rate-limit-store.js';
import type { StageResult } from './authenticate.js';
import type { Exchange } from './exchange.js';

export const RATE_WINDOW_MS = 60_000;

/** IETF RateLimit header value (draft-ietf-httpapi-ratelimit-headers): remaining and reset seconds. */
export function rateLimitHeader(policy: string, d: RateLimitDecision): string {
  return `"${policy}";r=${d.remaining};t=${Math.ceil(d.resetMs / 1000)}`;
}

/** A user id may hold ':'; escaped, it can never pose as a route key or an `ip:` key. UUIDs pass unchanged. */
function keyPart(id: string): string {
  return id.includes(':') || id.includes('%') ? id.replace(/%/g, '%25').replace(/:/g, '%3A') : id;
}

/**
 * Identity or client IP x route -> allow, or 429. The verified user is the subject on
 * authenticated routes (the spec's `rate_limit:{user_id}`); anonymous traffic is limited by the
 * client address, which a client cannot choose (see client-address.ts). A route with its own
 * limit counts in its own key; every other route shares the user's default budget.
 */
export class RateLimitStage {
  constructor(
    private readonly store: FailoverRateLimitStore,
    private readonly logger: Logger,
    private readonly onExceeded: (ex: Exchange) => void,
  ) {}

  /** Immediate with the in-memory store; a promise when the decision is Redis's. */
  check(ex: Exchange): StageResult | Promise<StageResult> {
    const route = ex.route!;
    const limit = route.rateLimit;
    const subject = ex.identity !== null ? keyPart(ex.identity.userId) : `ip:${ex.clientIp}`;
    const key = limit.ownKey ? `rate_limit:${route.name}:${subject}` : `rate_limit:${subject}`;
    const decision = this.store.consume(key, limit.perMinute, RATE_WINDOW_MS, limit.failClosed);
    return decision instanceof Promise ? decision.then((d) => this.verdict(ex, d)) : this.verdict(ex, decision);
  }

  private verdict(ex: Exchange, decision: RateLimitDecision | null): StageResult {
    const route = ex.route!;
    const limit = route.rateLimit;
    if (decision === null) {
      return { code: 'GW_DEPENDENCY_UNAVAILABLE', detail: 'rate limiting is unavailable and this route fails closed', headers: { 'retry-after': '1' } };
    }
    ex.rateLimit = decision;
    if (decision.allowed) return null;
    this.onExceeded(ex);
    this.logger.warn({ request_id: ex.id, route: route.name, user_id: ex.identity?.userId ?? null, ip_address: ex.clientIp, limit: limit.perMinute }, 'rate limit exceeded');
    return {
      code: 'GW_RATE_LIMITED',
      detail: `more than ${limit.perMinute} requests a minute`,
      headers: {
        'retry-after': String(Math.max(1, Math.ceil(decision.retryAfterMs / 1000))),
        'ratelimit-policy': limit.policyHeader,
        ratelimit: rateLimitHeader(limit.policyName, decision),
      },
    };
  }
}
