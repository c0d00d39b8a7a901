import { collectDefaultMetrics, Counter, Histogram, Registry } from 'prom-client';

/** Methods the gateway routes; anything else shares one label value, so labels stay bounded. */
const KNOWN_METHODS: ReadonlySet<string> = new Set(['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS']);

/** Resolves the spec's 100 ms p95 SLO and its 500 ms alert threshold. */
const DURATION_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5, 10];

/** The label value for requests that matched no route: raw paths would make series unbounded. */
export const UNMATCHED_PATH = 'unmatched';

interface SeriesPair {
  duration: ReturnType<Histogram<'method' | 'path' | 'status'>['labels']>;
  total: ReturnType<Counter<'method' | 'path' | 'status'>['labels']>;
}

/**
 * The spec's Prometheus metrics, with exactly its names and labels. `path` is always a route
 * template (or `unmatched`), never a raw path, user id or request id.
 */
export class Metrics {
  readonly registry = new Registry();
  private readonly duration: Histogram<'method' | 'path' | 'status'>;
  private readonly total: Counter<'method' | 'path' | 'status'>;
  private readonly authFailures: Counter<'reason'>;
  private readonly rateLimited: Counter;
  /** Label children by `method path status`: bounded by routes x methods x statuses. */
  private readonly series = new Map<string, SeriesPair>();

  constructor() {
    this.duration = new Histogram({
      name: 'api_gateway_request_duration_seconds',
      help: 'Request duration in seconds',
      labelNames: ['method', 'path', 'status'],
      buckets: DURATION_BUCKETS,
      registers: [this.registry],
    });
    this.total = new Counter({
      name: 'api_gateway_requests_total',
      help: 'Total requests processed',
      labelNames: ['method', 'path', 'status'],
      registers: [this.registry],
    });
    this.authFailures = new Counter({
      name: 'api_gateway_auth_failures_total',
      help: 'Authentication failures',
      labelNames: ['reason'],
      registers: [this.registry],
    });
    this.rateLimited = new Counter({
      name: 'api_gateway_rate_limit_exceeded_total',
      help: 'Rate limit exceeded events',
      registers: [this.registry],
    });
    collectDefaultMetrics({ register: this.registry });
  }

  request(method: string, path: string, status: number, seconds: number): void {
    const m = KNOWN_METHODS.has(method) ? method : 'OTHER';
    const key = `${m} ${path} ${status}`;
    let pair = this.series.get(key);
    if (pair === undefined) {
      const labels = [m, path, String(status)];
      pair = { duration: this.duration.labels(...labels), total: this.total.labels(...labels) };
      this.series.set(key, pair);
    }
    pair.duration.observe(seconds);
    pair.total.inc();
  }

  authFailure(reason: string): void {
    this.authFailures.inc({ reason });
  }

  rateLimitExceeded(): void {
    this.rateLimited.inc();
  }

  async exposition(): Promise<{ contentType: string; body: string }> {
    return { contentType: this.registry.contentType, body: await this.registry.metrics() };
  }
}
