import { keys } from '../stores/access-store.js';
import type { AccessControl } from '../stores/failover-access-store.js';
import type { Logger } from '../observability/logger.js';
import type { Refusal } from './exchange.js';
import { RATE_WINDOW_MS } from './rate-limit-policy.js';

const MAX_BLOCKED = 10_000;

/**
 * Failed authentications count against their client address (`auth_failures:ip:{address}`,
 * AUTH_FAILURES_PER_ADDRESS_PER_MINUTE, shared across replicas). Once an address has spent that
 * budget, its failing requests are refused with 429 instead of 401 until the budget refills:
 * guessing goes no faster than the budget. A valid token is never refused for what other clients
 * behind the same address (a hospital's NAT) did: it is verified, and it passes.
 */
export class AuthFailureLimit {
  private readonly blocked = new Map<string, number>();

  constructor(
    private readonly store: AccessControl,
    private readonly perMinute: number,
    private readonly logger: Logger,
    private readonly now: () => number = Date.now,
  ) {}

  /** Synchronous: the 429 for a failure from an address that ran out of budget, or null. */
  check(ip: string): Refusal | null {
    if (this.blocked.size === 0) return null;
    const until = this.blocked.get(ip);
    if (until === undefined) return null;
    const waitMs = until - this.now();
    if (waitMs <= 0) {
      this.blocked.delete(ip);
      return null;
    }
    return { code: 'GW_RATE_LIMITED', detail: 'too many failed authentications from this address; a valid token still passes', headers: { 'retry-after': String(Math.ceil(waitMs / 1000)) }, counts: 'rate-limited' };
  }

  /** Counts a failed authentication; past the budget, blocks the address locally until it refills. */
  failed(ip: string): void {
    this.store
      .count(`auth_failures:${keys.client(ip)}`, this.perMinute, RATE_WINDOW_MS, 'take')
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
