const WINDOW_SECONDS = 10;

/**
 * Keeps retries below a share of a service's requests over the last 10 seconds, plus a small
 * allowance per second so that a quiet service can still retry. When an instance fails, retries
 * cover its share of traffic; when the whole service fails, they cannot multiply the load on it.
 * One-second buckets in a ring: constant memory, and no clock read beyond the request's own.
 */
export class RetryBudget {
  private readonly requests = new Float64Array(WINDOW_SECONDS);
  private readonly retries = new Float64Array(WINDOW_SECONDS);
  private second = 0;

  constructor(
    /** Retries allowed per 100 requests. */
    private percent: number,
    private minPerSecond: number,
  ) {}

  configure(percent: number, minPerSecond: number): void {
    this.percent = percent;
    this.minPerSecond = minPerSecond;
  }

  /** Counts a request (its first try) at `now` (performance.now() ms). */
  request(now: number): void {
    this.requests[this.advance(now)]!++;
  }

  /** Takes one retry from the budget, if there is one left. */
  tryRetry(now: number): boolean {
    const slot = this.advance(now);
    let requests = 0;
    let retries = 0;
    for (let i = 0; i < WINDOW_SECONDS; i++) {
      requests += this.requests[i]!;
      retries += this.retries[i]!;
    }
    // Whole numbers on both sides: 29% of 100 requests is 29 retries, not 28.999...
    if ((retries + 1) * 100 > this.percent * requests && this.retries[slot]! >= this.minPerSecond) return false;
    this.retries[slot]!++;
    return true;
  }

  private advance(now: number): number {
    const second = Math.floor(now / 1000);
    if (second !== this.second) {
      const gap = Math.min(second - this.second, WINDOW_SECONDS);
      for (let i = 1; i <= gap; i++) {
        const slot = (this.second + i) % WINDOW_SECONDS;
        this.requests[slot] = 0;
        this.retries[slot] = 0;
      }
      this.second = second;
    }
    return second % WINDOW_SECONDS;
  }
}
