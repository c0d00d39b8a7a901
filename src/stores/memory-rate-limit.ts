import { gcra, type RateLimitDecision, type RateLimitStore } from './rate-limit-store.js';

/**
 * GCRA in process memory: the demo's store, and the fallback while Redis is away. Bounded: an
 * entry whose TAT has passed says nothing a missing entry would not, so it is swept; past
 * `maxKeys` the least recently used keys go first.
 */
export class MemoryRateLimitStore implements RateLimitStore {
  private readonly tats = new Map<string, number>();
  private readonly sweeper: NodeJS.Timeout;

  constructor(
    private readonly maxKeys = 100_000,
    private readonly now: () => number = Date.now,
    sweepEveryMs = 10_000,
  ) {
    this.sweeper = setInterval(() => this.sweep(), sweepEveryMs);
    this.sweeper.unref();
  }

  consume(key: string, limit: number, windowMs: number): Promise<RateLimitDecision> {
    return Promise.resolve(this.consumeNow(key, limit, windowMs));
  }

  /** With `dryRun`, answers whether one more would pass without counting it. */
  consumeNow(key: string, limit: number, windowMs: number, dryRun = false): RateLimitDecision {
    const now = this.now();
    const { decision, tat } = gcra(this.tats.get(key), now, limit, windowMs);
    if (tat !== null && !dryRun) {
      // Re-insert so that Map order is least recently used first.
      this.tats.delete(key);
      this.tats.set(key, tat);
      if (this.tats.size > this.maxKeys) this.tats.delete(this.tats.keys().next().value!);
    }
    return decision;
  }

  /**
   * Takes over the state the shared store just reported for a key (its TAT is `resetMs` from now),
   * so that a fallback to this store carries on from the shared count instead of a fresh budget.
   */
  mirror(key: string, resetMs: number): void {
    this.tats.delete(key);
    if (resetMs <= 0) return;
    this.tats.set(key, this.now() + resetMs);
    if (this.tats.size > this.maxKeys) this.tats.delete(this.tats.keys().next().value!);
  }

  /** Gives back one request counted earlier: the TAT moves back one interval, never before now. */
  refund(key: string, limit: number, windowMs: number): void {
    const tat = this.tats.get(key);
    if (tat === undefined) return;
    const back = tat - windowMs / limit;
    if (back <= this.now()) this.tats.delete(key);
    else this.tats.set(key, back);
  }

  get size(): number {
    return this.tats.size;
  }

  sweep(): void {
    const now = this.now();
    for (const [key, tat] of this.tats) if (tat <= now) this.tats.delete(key);
  }

  close(): void {
    clearInterval(this.sweeper);
  }
}
