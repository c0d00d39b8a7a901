import { collectDefaultMetrics, Counter, Registry } from 'prom-client';

/** Methods the gateway routes; anything else shares one label value, so labels stay bounded. */
const KNOWN_METHODS: ReadonlySet<string> = new Set(['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS']);

/** Resolves the spec's 100 ms p95 SLO and its 500 ms alert threshold. */
const DURATION_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5, 10];

/** The label value for requests that matched no route: raw paths would make series unbounded. */
export const UNMATCHED_PATH = 'unmatched';

/** Prometheus label value escaping: backslash, double quote and newline. */
function labelValue(v: string): string {
  return v.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n');
}

/** One `method, path, status` series of the request histogram and counter. */
class RequestSeries {
  readonly buckets = new Float64Array(DURATION_BUCKETS.length);
  count = 0;
  sum = 0;
  constructor(readonly labels: string) {}
}

/**
 * The spec's Prometheus metrics, with exactly its names and labels. `path` is always a route
 * template (or `unmatched`), never a raw path, user id or request id.
 *
 * The two per-request metrics are kept here as plain numbers and rendered at scrape time: the
 * client library re-validates and re-hashes the labels on every observation, which cost more
 * than the rest of the metrics work together. The others go through the library's registry.
 */
export class Metrics {
  readonly registry = new Registry();
  private readonly authFailures: Counter<'reason'>;
  private readonly rateLimited: Counter;
  /** By `method path status`: bounded by routes x methods x statuses. */
  private readonly series = new Map<string, RequestSeries>();

  constructor() {
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
    let series = this.series.get(key);
    if (series === undefined) {
      series = new RequestSeries(`method="${m}",path="${labelValue(path)}",status="${status}"`);
      this.series.set(key, series);
    }
    series.count++;
    series.sum += seconds;
    for (let i = 0; i < DURATION_BUCKETS.length; i++) {
      if (seconds <= DURATION_BUCKETS[i]!) {
        series.buckets[i]!++;
        break;
      }
    }
  }

  authFailure(reason: string): void {
    this.authFailures.inc({ reason });
  }

  rateLimitExceeded(): void {
    this.rateLimited.inc();
  }

  private renderRequests(): string {
    const hist = ['# HELP api_gateway_request_duration_seconds Request duration in seconds', '# TYPE api_gateway_request_duration_seconds histogram'];
    const total = ['# HELP api_gateway_requests_total Total requests processed', '# TYPE api_gateway_requests_total counter'];
    for (const s of this.series.values()) {
      let cumulative = 0;
      for (let i = 0; i < DURATION_BUCKETS.length; i++) {
        cumulative += s.buckets[i]!;
        hist.push(`api_gateway_request_duration_seconds_bucket{${s.labels},le="${DURATION_BUCKETS[i]}"} ${cumulative}`);
      }
      hist.push(`api_gateway_request_duration_seconds_bucket{${s.labels},le="+Inf"} ${s.count}`);
      hist.push(`api_gateway_request_duration_seconds_sum{${s.labels}} ${s.sum}`);
      hist.push(`api_gateway_request_duration_seconds_count{${s.labels}} ${s.count}`);
      total.push(`api_gateway_requests_total{${s.labels}} ${s.count}`);
    }
    return `${hist.join('\n')}\n\n${total.join('\n')}\n`;
  }

  async exposition(): Promise<{ contentType: string; body: string }> {
    return { contentType: this.registry.contentType, body: `${this.renderRequests()}\n${await this.registry.metrics()}` };
  }
}
