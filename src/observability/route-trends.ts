/** A trend point every 10 s, for the last 5 minutes: what the status page plots per route. */
export const TREND_BUCKET_MS = 10_000;
export const TREND_BUCKETS = 30;
/** Upper edges (seconds) of the latency histogram a p95 is read from; the last bucket is open. */
const EDGES = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];
const SLOTS = EDGES.length + 1;

export interface TrendPoint {
  /** Start of the 10 s bucket, epoch milliseconds. */
  at: number;
  /** Requests a second. */
  rate: number;
  /** Share of answers with a 5xx status, 0 to 1 (0 without requests). */
  errorRate: number;
  /** Upper edge of the histogram bucket holding the 95th percentile, in milliseconds; null without requests. */
  p95Ms: number | null;
}

class Series {
  readonly starts = new Float64Array(TREND_BUCKETS).fill(-1);
  readonly counts = new Uint32Array(TREND_BUCKETS);
  readonly errors = new Uint32Array(TREND_BUCKETS);
  readonly latency = new Uint32Array(TREND_BUCKETS * SLOTS);
}

/**
 * Request rate, error rate and p95 per route template over the last minutes, in fixed memory: a
 * ring of 10 s buckets per route, and the routes are the config's templates (never raw paths), so
 * nothing grows with traffic. Fed by the exit phase; read by the status page.
 */
export class RouteTrends {
  private readonly series = new Map<string, Series>();

  record(route: string, status: number, seconds: number, now = Date.now()): void {
    let s = this.series.get(route);
    if (s === undefined) {
      s = new Series();
      this.series.set(route, s);
    }
    const start = now - (now % TREND_BUCKET_MS);
    const i = Math.floor(now / TREND_BUCKET_MS) % TREND_BUCKETS;
    if (s.starts[i] !== start) {
      s.starts[i] = start;
      s.counts[i] = 0;
      s.errors[i] = 0;
      s.latency.fill(0, i * SLOTS, (i + 1) * SLOTS);
    }
    s.counts[i]!++;
    if (status >= 500) s.errors[i]!++;
    let slot = 0;
    while (slot < EDGES.length && seconds > EDGES[slot]!) slot++;
    s.latency[i * SLOTS + slot]!++;
  }

  /** Every route's points, oldest first, the bucket under way last. */
  snapshot(now = Date.now()): Array<{ route: string; points: TrendPoint[] }> {
    const current = now - (now % TREND_BUCKET_MS);
    const out: Array<{ route: string; points: TrendPoint[] }> = [];
    for (const [route, s] of this.series) {
      const points: TrendPoint[] = [];
      for (let k = TREND_BUCKETS - 1; k >= 0; k--) {
        const start = current - k * TREND_BUCKET_MS;
        const i = Math.floor(start / TREND_BUCKET_MS) % TREND_BUCKETS;
        if (s.starts[i] !== start) {
          points.push({ at: start, rate: 0, errorRate: 0, p95Ms: null });
          continue;
        }
        const count = s.counts[i]!;
        const seconds = start === current ? Math.max(1, (now - start) / 1000) : TREND_BUCKET_MS / 1000;
        points.push({ at: start, rate: count / seconds, errorRate: count === 0 ? 0 : s.errors[i]! / count, p95Ms: p95(s.latency, i, count) });
      }
      out.push({ route, points });
    }
    return out;
  }
}

function p95(latency: Uint32Array, i: number, count: number): number | null {
  if (count === 0) return null;
  const target = Math.ceil(count * 0.95);
  let seen = 0;
  for (let slot = 0; slot < SLOTS; slot++) {
    seen += latency[i * SLOTS + slot]!;
    // Past the last edge: reported as the last edge (10 s or more).
    if (seen >= target) return (slot < EDGES.length ? EDGES[slot]! : EDGES.at(-1)!) * 1000;
  }
  return null;
}
