import type { Logger } from '../observability/logger.js';
import type { MemoryRateLimitStore } from './memory-rate-limit.js';
import type { RateLimitDecision, RateLimitStore } from './rate-limit-store.js';

/**
 * The shared store (Redis) with a per-process fallback. While the shared store fails, each
 * process limits on its own, so N replicas admit up to N x L; a route that cannot accept that
 * fails closed instead. The shared store is tried on every request, so limiting goes back to it
 * by itself as soon as it answers again. Its client never queues commands while disconnected,
 * so a failed attempt costs no waiting.
 */
export class FailoverRateLimitStore {
  private failing = false;

  constructor(
    private readonly shared: RateLimitStore | null,
    private readonly local: MemoryRateLimitStore,
    private readonly logger: Logger,
  ) {}

  /** True while decisions come from the per-process fallback. */
  get degraded(): boolean {
    return this.failing;
  }

  /**
   * One decision on the shared store, outside any client's budget, while the fallback is in use:
   * an idle gateway has no traffic that would notice the shared store is back.
   */
  async probe(): Promise<void> {
    if (this.shared === null || !this.failing) return;
    try {
      await this.shared.consume('rate_limit:gateway:probe', 1_000_000, 60_000);
      this.recovered();
    } catch {
      // still failing; the next request or probe tries again
    }
  }

  private recovered(): void {
    this.failing = false;
    this.logger.info('rate limiting is shared across replicas again');
  }

  /**
   * A decision, or null when the shared store is down and the route fails closed. Without a
   * shared store (one process, the demo) the answer is immediate.
   */
  consume(key: string, limit: number, windowMs: number, failClosed: boolean): RateLimitDecision | Promise<RateLimitDecision | null> {
    if (this.shared === null) return this.local.consumeNow(key, limit, windowMs);
    return this.consumeShared(key, limit, windowMs, failClosed);
  }

  private async consumeShared(key: string, limit: number, windowMs: number, failClosed: boolean): Promise<RateLimitDecision | null> {
    const shared = this.shared!;
    try {
      const decision = await shared.consume(key, limit, windowMs);
      if (this.failing) this.recovered();
      return decision;
    } catch (err) {
      if (!this.failing) {
        this.failing = true;
        this.logger.warn({ cause: (err as Error).message }, 'rate-limit store unreachable: limiting per process until it returns');
      }
      return failClosed ? null : this.local.consumeNow(key, limit, windowMs);
    }
  }
}
