import { collectDefaultMetrics, Counter, Gauge, Registry } from 'prom-client';
import { LATENCY_BUCKETS, type Instance } from '../upstream/instance.js';
import type { UpstreamService } from '../upstream/service.js';
import type { AuditTrail } from '../audit/audit-trail.js';

/** Methods the gateway routes; anything else shares one label value, so labels stay bounded. */
const KNOWN_METHODS: ReadonlySet<string> = new Set(['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS']);

/** Resolves the spec's 100 ms p95 SLO and its 500 ms alert threshold. */
const DURATION_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5, 10];

/** The label value for requests that matched no route: raw paths would make series unbounded. */
export const UNMATCHED_PATH = 'unmatched';

type Labels = Record<string, string | number>;

/**
 * Distinct keys seen in the current minute, reported for the last full minute: two bounded sets,
 * swapped each minute. Bounded so that a flood of addresses cannot grow it.
 */
class DistinctPerMinute {
  private current = new Set<string>();
  private previous = new Set<string>();
  private minute = 0;
  constructor(private readonly cap: number) {}
  add(key: string): void {
    this.roll();
    if (this.current.size < this.cap) this.current.add(key);
  }
  count(): number {
    this.roll();
    return Math.max(this.previous.size, this.current.size);
  }
  private roll(): void {
    const minute = Math.floor(Date.now() / 60_000);
    if (minute === this.minute) return;
    this.previous = minute === this.minute + 1 ? this.current : new Set();
    this.current = new Set();
    this.minute = minute;
  }
}
interface Value {
  labels: Labels;
  value: number;
  metricName?: string;
}

/**
 * A metric the registry reads at scrape time from the gateway's own plain counters. The
 * aggregator tells prom-client how to merge the workers' values when WORKERS > 1.
 */
function scraped(name: string, help: string, type: 'counter' | 'gauge' | 'histogram', aggregator: 'sum' | 'min', collect: () => Value[]) {
  return {
    name,
    help,
    type,
    aggregator,
    get: async () => ({ name, help, type, aggregator, values: collect() }),
    reset: () => undefined,
  };
}

/** Cumulative bucket, sum and count values of one histogram series. */
function histogramValues(out: Value[], name: string, labels: Labels, bounds: readonly number[], buckets: Float64Array, count: number, sum: number): void {
  let cumulative = 0;
  for (let i = 0; i < bounds.length; i++) {
    cumulative += buckets[i]!;
    out.push({ metricName: `${name}_bucket`, labels: { ...labels, le: bounds[i]! }, value: cumulative });
  }
  out.push({ metricName: `${name}_bucket`, labels: { ...labels, le: '+Inf' }, value: count });
  out.push({ metricName: `${name}_sum`, labels, value: sum });
  out.push({ metricName: `${name}_count`, labels, value: count });
}

/** One `method, path, status` series of the request histogram and counter. */
class RequestSeries {
  readonly buckets = new Float64Array(DURATION_BUCKETS.length);
  count = 0;
  sum = 0;
  constructor(readonly labels: Labels) {}
}

/**
 * The spec's Prometheus metrics, with exactly its names and labels. `path` is always a route
 * template (or `unmatched`), never a raw path, user id or request id.
 *
 * The two per-request metrics are kept here as plain numbers and read at scrape time: the
 * client library re-validates and re-hashes the labels on every observation, which cost more
 * than the rest of the metrics work together. The upstream metrics are read from the live
 * services the same way. Everything is registered in one registry, so that the workers'
 * registries can be merged when the gateway runs several (src/workers.ts).
 */
export class Metrics {
  readonly registry = new Registry();
  private readonly authFailures: Counter<'reason'>;
  private readonly rateLimited: Counter;
  private readonly reloads: Counter<'result'>;
  private readonly socketsOpen: Gauge<'path'>;
  private readonly socketCloses: Counter<'path' | 'reason'>;
  private readonly dependencyUp: Gauge<'dependency'>;
  private readonly limitedSubjects = new DistinctPerMinute(10_000);
  /** By `method path status`: bounded by routes x methods x statuses. */
  private readonly series = new Map<string, RequestSeries>();

  constructor(
    private readonly upstreams: () => readonly UpstreamService[] = () => [],
    /** With WORKERS > 1: the merged metrics of every worker, from the primary process. */
    private readonly clusterExposition: (() => Promise<string>) | null = null,
    audit: AuditTrail | null = null,
    memoryLimitBytes = 0,
  ) {
    if (audit !== null) this.registerAuditMetrics(audit);
    this.registry.registerMetric(
      scraped('api_gateway_request_duration_seconds', 'Request duration in seconds', 'histogram', 'sum', () => {
        const out: Value[] = [];
        for (const s of this.series.values()) histogramValues(out, 'api_gateway_request_duration_seconds', s.labels, DURATION_BUCKETS, s.buckets, s.count, s.sum);
        return out;
      }) as never,
    );
    this.registry.registerMetric(
      scraped('api_gateway_requests_total', 'Total requests processed', 'counter', 'sum', () => [...this.series.values()].map((s) => ({ labels: s.labels, value: s.count }))) as never,
    );
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
    this.socketsOpen = new Gauge({
      name: 'api_gateway_websockets_open',
      help: 'WebSockets open through the gateway, by route template',
      labelNames: ['path'],
      registers: [this.registry],
      aggregator: 'sum',
    });
    this.socketCloses = new Counter({
      name: 'api_gateway_websocket_closes_total',
      help: 'WebSockets closed, by route template and reason (client, upstream, idle, expired, revoked, too_large, shutdown, error)',
      labelNames: ['path', 'reason'],
      registers: [this.registry],
    });
    this.reloads = new Counter({
      name: 'api_gateway_config_reloads_total',
      help: 'Routes file reloads, by result (success, failure: the running config stayed)',
      labelNames: ['result'],
      registers: [this.registry],
    });
    this.dependencyUp = new Gauge({
      name: 'api_gateway_dependency_up',
      help: '1 while the last health check found the dependency healthy (auth-service, database, audit)',
      labelNames: ['dependency'],
      registers: [this.registry],
      aggregator: 'min',
    });
    this.registry.registerMetric(
      scraped('api_gateway_rate_limited_subjects', 'Distinct users or client addresses refused by a rate limit in the last full minute (at most 10000 counted)', 'gauge', 'sum', () => [
        { labels: {}, value: this.limitedSubjects.count() },
      ]) as never,
    );
    this.registry.registerMetric(
      scraped('api_gateway_memory_limit_bytes', 'The memory limit the health check measures against (container limit, MEMORY_LIMIT_MB or the V8 heap limit)', 'gauge', 'min', () => [
        { labels: {}, value: memoryLimitBytes },
      ]) as never,
    );
    this.registerUpstreamMetrics();
    collectDefaultMetrics({ register: this.registry });
  }

  request(method: string, path: string, status: number, seconds: number): void {
    const m = KNOWN_METHODS.has(method) ? method : 'OTHER';
    const key = `${m} ${path} ${status}`;
    let series = this.series.get(key);
    if (series === undefined) {
      series = new RequestSeries({ method: m, path, status });
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

  /** `subject`: the user id or client address refused, counted once per minute for the "users affected" alert. */
  rateLimitExceeded(subject: string): void {
    this.rateLimited.inc();
    this.limitedSubjects.add(subject);
  }

  /** The result of the last health check, for the dependency alert. */
  dependencyHealth(name: string, up: boolean): void {
    this.dependencyUp.set({ dependency: name }, up ? 1 : 0);
  }

  socketOpened(path: string): void {
    this.socketsOpen.inc({ path });
  }

  socketClosed(path: string, reason: string): void {
    this.socketsOpen.dec({ path });
    this.socketCloses.inc({ path, reason });
  }

  configReload(ok: boolean): void {
    this.reloads.inc({ result: ok ? 'success' : 'failure' });
  }

  /**
   * Upstream series, read from the live services at scrape time: labelled by service and
   * instance origin, so bounded by the instances in the config (an instance that leaves takes
   * its series with it). The origin's label is `upstream`, not `instance`: Prometheus gives
   * `instance` to the scraped gateway pod and would rename ours.
   */
  private registerUpstreamMetrics(): void {
    const perService = (name: string, help: string, type: 'counter' | 'gauge', read: (svc: UpstreamService) => number) =>
      this.registry.registerMetric(scraped(name, help, type, 'sum', () => this.upstreams().map((svc) => ({ labels: { service: svc.name }, value: read(svc) }))) as never);
    const perInstance = (name: string, help: string, type: 'counter' | 'gauge', aggregator: 'sum' | 'min', read: (inst: Instance, now: number) => Value[] | number) =>
      this.registry.registerMetric(
        scraped(name, help, type, aggregator, () => {
          const now = performance.now();
          const out: Value[] = [];
          for (const svc of this.upstreams()) {
            for (const inst of svc.instances) {
              const labels = { service: svc.name, upstream: inst.origin };
              const v = read(inst, now);
              if (typeof v === 'number') out.push({ labels, value: v });
              else for (const one of v) out.push({ labels: { ...labels, ...one.labels }, value: one.value });
            }
          }
          return out;
        }) as never,
      );
    perService('api_gateway_upstream_retries_total', 'Retries of idempotent requests on another instance', 'counter', (s) => s.retries);
    perService('api_gateway_upstream_retries_refused_total', 'Retries the retry budget refused', 'counter', (s) => s.retriesRefused);
    perService('api_gateway_upstream_overflow_total', 'Requests refused with 503 by the circuit breaker', 'counter', (s) => s.overflows);
    this.registry.registerMetric(
      scraped(
        'api_gateway_upstream_shed_total',
        'Requests refused with 503 at the door, before authentication: the service full (reason="full"), or the event loop late while the service held a quarter of its limit (reason="event_loop_delay")',
        'counter',
        'sum',
        () =>
          this.upstreams().flatMap((svc) => [
            { labels: { service: svc.name, reason: 'full' }, value: svc.shedFull },
            { labels: { service: svc.name, reason: 'event_loop_delay' }, value: svc.shedLagging },
          ]),
      ) as never,
    );
    perService('api_gateway_upstream_unavailable_total', 'Requests refused with 502 because no instance was healthy', 'counter', (s) => s.unavailable);
    perService('api_gateway_upstream_active_requests', 'Upstream requests in flight or queued', 'gauge', (s) => s.active);
    perInstance('api_gateway_upstream_requests_total', 'Tries sent to each upstream instance', 'counter', 'sum', (i) => i.requests);
    perInstance('api_gateway_upstream_failures_total', 'Failed tries by kind: connect, reset, timeout, status (5xx)', 'counter', 'sum', (i) =>
      Object.entries(i.failures).map(([kind, value]) => ({ labels: { kind }, value })),
    );
    // Each worker checks on its own; an instance is in rotation for the gateway when it is for every worker.
    perInstance('api_gateway_upstream_healthy', '1 while the instance is in rotation (passing health checks, not ejected)', 'gauge', 'min', (i, now) => (i.unavailable(now) ? 0 : 1));
    perInstance('api_gateway_upstream_ejections_total', 'Ejections by passive outlier detection', 'counter', 'sum', (i) => i.ejections);
    this.registry.registerMetric(
      scraped('api_gateway_upstream_response_seconds', 'Time from sending a try to the response head', 'histogram', 'sum', () => {
        const out: Value[] = [];
        for (const svc of this.upstreams()) {
          for (const inst of svc.instances) {
            histogramValues(out, 'api_gateway_upstream_response_seconds', { service: svc.name, upstream: inst.origin }, LATENCY_BUCKETS, inst.latencyBuckets, inst.latencyCount, inst.latencySum);
          }
        }
        return out;
      }) as never,
    );
  }

  private registerAuditMetrics(audit: AuditTrail): void {
    const one = (name: string, help: string, type: 'counter' | 'gauge', read: () => number) =>
      this.registry.registerMetric(scraped(name, help, type, 'sum', () => [{ labels: {}, value: read() }]) as never);
    one('api_gateway_audit_events_delivered_total', 'Audit events the audit service accepted', 'counter', () => audit.delivered);
    one('api_gateway_audit_events_dropped_total', 'Audit events that could not be kept (spool full or unwritable)', 'counter', () => audit.dropped);
    one('api_gateway_audit_events_rejected_total', 'Audit events the audit service refused as invalid, kept aside in the spool folder', 'counter', () => audit.rejected);
    one('api_gateway_audit_delivery_failures_total', 'Failed deliveries to the audit service (retried)', 'counter', () => audit.failures);
    one('api_gateway_audit_spool_bytes', 'Bytes of audit events waiting in the spool', 'gauge', () => audit.backlogBytes);
    one('api_gateway_audit_phi_refusals_unrecorded_total', 'Refused attempts on PHI routes whose audit event could not be kept (spool full past its reserve for them)', 'counter', () => audit.phiRefusalsUnrecorded);
    one('api_gateway_audit_incomplete_total', 'Access records found at start without their completion (the gateway stopped mid-exchange), completed as incomplete', 'counter', () => audit.incompleteAtStart);
    const wait = 'api_gateway_audit_durability_wait_seconds';
    this.registry.registerMetric(
      scraped(wait, 'How long answers of write-ahead routes waited for their access record to be durable (0 when it already was)', 'histogram', 'sum', () => {
        const out: Value[] = [];
        histogramValues(out, wait, {}, audit.waitBounds, audit.waitBuckets, audit.waitCount, audit.waitSum);
        return out;
      }) as never,
    );
  }

  async exposition(): Promise<{ contentType: string; body: string }> {
    const body = this.clusterExposition !== null ? await this.clusterExposition() : await this.registry.metrics();
    return { contentType: this.registry.contentType, body };
  }
}
