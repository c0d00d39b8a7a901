import { collectDefaultMetrics, Counter, Registry } from 'prom-client';
import { LATENCY_BUCKETS } from '../upstream/instance.js';
import type { UpstreamService } from '../upstream/service.js';

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
  private readonly reloads: Counter<'result'>;
  /** By `method path status`: bounded by routes x methods x statuses. */
  private readonly series = new Map<string, RequestSeries>();

  constructor(private readonly upstreams: () => readonly UpstreamService[] = () => []) {
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
    this.reloads = new Counter({
      name: 'api_gateway_config_reloads_total',
      help: 'Routes file reloads, by result (success, failure: the running config stayed)',
      labelNames: ['result'],
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

  configReload(ok: boolean): void {
    this.reloads.inc({ result: ok ? 'success' : 'failure' });
  }

  /**
   * Upstream series, read from the live services at scrape time: labelled by service and
   * instance origin, so bounded by the instances in the config (an instance that leaves takes
   * its series with it).
   */
  private renderUpstreams(): string {
    const now = performance.now();
    const out = new Map<string, { help: string; type: string; lines: string[] }>();
    const add = (name: string, type: string, help: string, line: string) => {
      let metric = out.get(name);
      if (metric === undefined) out.set(name, (metric = { help, type, lines: [] }));
      metric.lines.push(line);
    };
    for (const svc of this.upstreams()) {
      const s = `service="${labelValue(svc.name)}"`;
      add('api_gateway_upstream_retries_total', 'counter', 'Retries of idempotent requests on another instance', `api_gateway_upstream_retries_total{${s}} ${svc.retries}`);
      add('api_gateway_upstream_retries_refused_total', 'counter', 'Retries the retry budget refused', `api_gateway_upstream_retries_refused_total{${s}} ${svc.retriesRefused}`);
      add('api_gateway_upstream_overflow_total', 'counter', 'Requests refused with 503 by the circuit breaker', `api_gateway_upstream_overflow_total{${s}} ${svc.overflows}`);
      add('api_gateway_upstream_unavailable_total', 'counter', 'Requests refused with 502 because no instance was healthy', `api_gateway_upstream_unavailable_total{${s}} ${svc.unavailable}`);
      add('api_gateway_upstream_active_requests', 'gauge', 'Upstream requests in flight or queued', `api_gateway_upstream_active_requests{${s}} ${svc.active}`);
      for (const inst of svc.instances) {
        const l = `${s},instance="${labelValue(inst.origin)}"`;
        add('api_gateway_upstream_requests_total', 'counter', 'Tries sent to each upstream instance', `api_gateway_upstream_requests_total{${l}} ${inst.requests}`);
        for (const [kind, n] of Object.entries(inst.failures)) {
          add('api_gateway_upstream_failures_total', 'counter', 'Failed tries by kind: connect, reset, timeout, status (5xx)', `api_gateway_upstream_failures_total{${l},kind="${kind}"} ${n}`);
        }
        add('api_gateway_upstream_healthy', 'gauge', '1 while the instance is in rotation (passing health checks, not ejected)', `api_gateway_upstream_healthy{${l}} ${inst.unavailable(now) ? 0 : 1}`);
        add('api_gateway_upstream_ejections_total', 'counter', 'Ejections by passive outlier detection', `api_gateway_upstream_ejections_total{${l}} ${inst.ejections}`);
        let cumulative = 0;
        for (let i = 0; i < LATENCY_BUCKETS.length; i++) {
          cumulative += inst.latencyBuckets[i]!;
          add('api_gateway_upstream_response_seconds', 'histogram', 'Time from sending a try to the response head', `api_gateway_upstream_response_seconds_bucket{${l},le="${LATENCY_BUCKETS[i]}"} ${cumulative}`);
        }
        add('api_gateway_upstream_response_seconds', 'histogram', '', `api_gateway_upstream_response_seconds_bucket{${l},le="+Inf"} ${inst.latencyCount}`);
        add('api_gateway_upstream_response_seconds', 'histogram', '', `api_gateway_upstream_response_seconds_sum{${l}} ${inst.latencySum}`);
        add('api_gateway_upstream_response_seconds', 'histogram', '', `api_gateway_upstream_response_seconds_count{${l}} ${inst.latencyCount}`);
      }
    }
    let text = '';
    for (const [name, { help, type, lines }] of out) text += `# HELP ${name} ${help}\n# TYPE ${name} ${type}\n${lines.join('\n')}\n\n`;
    return text;
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
    return { contentType: this.registry.contentType, body: `${this.renderRequests()}\n${this.renderUpstreams()}${await this.registry.metrics()}` };
  }
}
