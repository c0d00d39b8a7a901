import { keys } from '../stores/access-store.js';
import type { AccessControl } from '../stores/failover-access-store.js';
import type { Logger } from '../observability/logger.js';
import type { Refusal } from './exchange.js';
import { RATE_WINDOW_MS } from './rate-limit-policy.js';

const MAX_BLOCKED = 10_000;

/**
 * Requests that fail authentication are anonymous traffic: each one counts against its client
 * address's budget (`rate_limit:ip:{address}`, shared across replicas). Once that budget is
 * spent, the address is refused with 429 before any signature is checked, until the budget
 * refills: a flood of forged or guessed tokens costs one map lookup per request, not a signature
 * check. Tokens already verified (the cache) are never held up.
 */
export class AuthFailureLimit {
  private readonly blocked = new Map<string, number>();

  constructor(
    private readonly store: AccessControl,
    private readonly perMinute: number,
    private readonly logger: Logger,
    private readonly now: () => number = Date.now,
  ) {}

  /** Synchronous: a verdict only for an address that ran out of budget. */
  check(ip: string): Refusal | null {
    if (this.blocked.size === 0) return null;
    const until = this.blocked.get(ip);
    if (until === undefined) return null;
    const waitMs = until - this.now();
    if (waitMs <= 0) {
      this.blocked.delete(ip);
      return null;
    }
    return { code: 'GW_RATE_LIMITED', detail: 'too many failed authentications from this address', headers: { 'retry-after': String(Math.ceil(waitMs / 1000)) }, counts: 'rate-limited' };
  }

  /** Counts a failed authentication; past the budget, blocks the address locally until it refills. */
  failed(ip: string): void {
    this.store
      .count(`rate_limit:${keys.client(ip)}`, this.perMinute, RATE_WINDOW_MS, 'take')
      .then((d) => {
        // Spent (this failure took the last of it) or overspent: wait until one more would pass.
        const waitMs = !d.allowed ? d.retryAfterMs : d.remaining === 0 ? d.resetMs + RATE_WINDOW_MS / this.perMinute - RATE_WINDOW_MS : 0;
        if (waitMs <= 0) return;
        if (this.blocked.size >= MAX_BLOCKED) this.blocked.delete(this.blocked.keys().next().value!);
        if (!this.blocked.has(ip)) this.logger.warn({ ip_address: ip, limit: this.perMinute }, 'address blocked after too many failed authentications');
        this.blocked.set(ip, this.now() + waitMs);
      })
      .catch((err: unknown) => this.logger.warn({ cause: (err as Error).message }, 'cannot count a failed authentication'));
  }
}
