import type { AuditTrail } from '../audit/audit-trail.js';
import type { UpstreamService } from '../upstream/service.js';
import type { RouteTrends, TrendPoint } from './route-trends.js';

/** The last config reloads the page lists. */
const RELOADS_KEPT = 10;
/** The audit backlog is sampled this often, for its plot (the same 5 minutes as the route plots). */
export const BACKLOG_SAMPLE_MS = 10_000;
const BACKLOG_SAMPLES = 30;

export interface ReloadEntry {
  at: string;
  accepted: boolean;
  /** The refused file's problems, each with its field path (never a value from the environment). */
  problems: string[];
}

/** The last reloads of the routes file, newest first, in fixed memory. */
export class ReloadLog {
  private readonly entries: ReloadEntry[] = [];

  add(accepted: boolean, problems: readonly string[] = []): void {
    this.entries.unshift({ at: new Date().toISOString(), accepted, problems: [...problems] });
    this.entries.length = Math.min(this.entries.length, RELOADS_KEPT);
  }

  list(): ReloadEntry[] {
    return [...this.entries];
  }
}

/** The audit spool's backlog every 10 s over the last minutes, in fixed memory. */
export class BacklogSamples {
  private readonly samples: Array<{ at: number; bytes: number }> = [];
  /** When the backlog was last seen going from empty to not: events are delivered in order, so the oldest waits at least since then. */
  private waitingSince: number | null = null;

  constructor(private readonly read: () => number) {}

  sample(now = Date.now()): void {
    this.samples.push({ at: now, bytes: this.waiting(now) });
    if (this.samples.length > BACKLOG_SAMPLES) this.samples.shift();
  }

  /** Seconds the backlog has been waiting without emptying (0 when empty). */
  waitingSeconds(now = Date.now()): number {
    this.waiting(now);
    return this.waitingSince === null ? 0 : Math.round((now - this.waitingSince) / 1000);
  }

  private waiting(now: number): number {
    const bytes = this.read();
    if (bytes === 0) this.waitingSince = null;
    else this.waitingSince ??= now;
    return bytes;
  }

  list(): Array<{ at: number; bytes: number }> {
    return [...this.samples];
  }
}

export interface StatusSources {
  version: string;
  workers: number;
  memoryLimitBytes: number;
  eventLoopDelayMs: () => { p50: number; p99: number; max: number };
  redis: () => { mode: string; state: string; primaries: number } | null;
  /** The auth service's state as the last health check found it. */
  authService: () => Promise<string>;
  /** The routes in force (config/route-rows.ts): `match` is the route template. */
  routes: () => Array<{ name: string; match: string; methods: string[] | null; service: string | null; auth: string; access: string; rateLimit: string; phi: boolean }>;
  services: () => readonly UpstreamService[];
  audit: AuditTrail | null;
  trends: RouteTrends;
  reloads: ReloadLog;
  backlog: BacklogSamples | null;
}

export type StatusData = Awaited<ReturnType<typeof statusData>>;

/**
 * What the status page shows, as JSON (also served at /status.json). Route templates only: no
 * user id, token, client address, raw path or query is in it.
 */
export async function statusData(s: StatusSources, now = Date.now()) {
  const memory = process.memoryUsage();
  const perf = performance.now();
  const trends = new Map(s.trends.snapshot(now).map((t) => [t.route, t.points]));
  return {
    gateway: {
      version: s.version,
      uptimeSeconds: Math.round(process.uptime()),
      workers: s.workers,
      memory: { rssBytes: memory.rss, heapUsedBytes: memory.heapUsed, limitBytes: s.memoryLimitBytes },
      eventLoopDelayMs: s.eventLoopDelayMs(),
      redis: s.redis(),
      authService: await s.authService(),
    },
    routes: s.routes().map((r) => {
      const points = trends.get(r.match) ?? [];
      const recent = points.slice(-6);
      const requests = recent.reduce((n, p) => n + p.rate * 10, 0);
      return {
        ...r,
        lastMinute: {
          ratePerSecond: round(requests / 60),
          errorRate: requests === 0 ? 0 : round(recent.reduce((n, p) => n + p.errorRate * p.rate * 10, 0) / requests),
          p95Ms: recent.reduce<number | null>((m, p) => (p.p95Ms === null ? m : Math.max(m ?? 0, p.p95Ms)), null),
        },
        trend: points.map((p) => ({ at: p.at, rate: round(p.rate), errorRate: round(p.errorRate), p95Ms: p.p95Ms })),
      };
    }),
    services: s.services().map((svc) => ({
      name: svc.name,
      inFlight: svc.active,
      breakerRefusals: svc.overflows,
      retries: svc.retries,
      retriesRefused: svc.retriesRefused,
      instances: svc.instances.map((i) => ({
        origin: i.origin,
        state: !i.healthy ? 'failing checks' : i.ejectedUntil > perf ? 'ejected' : 'in rotation',
        ejectedForSeconds: i.ejectedUntil > perf ? Math.ceil((i.ejectedUntil - perf) / 1000) : 0,
        inFlight: i.active,
        tries: i.requests,
        failures: { ...i.failures },
      })),
    })),
    audit:
      s.audit === null
        ? null
        : {
            delivered: s.audit.delivered,
            waitingBytes: s.audit.backlogBytes,
            /** How long the backlog has waited without emptying: the oldest waiting event's age, at least. */
            waitingSeconds: s.backlog?.waitingSeconds(now) ?? 0,
            setAside: s.audit.rejected,
            dropped: s.audit.dropped,
            failing: s.audit.failing,
            phiRefused: !s.audit.accepting,
            problem: s.audit.problem,
            backlog: s.backlog?.list() ?? [],
          },
    reloads: s.reloads.list(),
  };
}

function round(n: number): number {
  return Math.round(n * 1000) / 1000;
}

const escapes: Record<string, string> = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };
function h(value: unknown): string {
  return String(value).replace(/[&<>"']/g, (c) => escapes[c]!);
}

function mb(bytes: number): string {
  return bytes < 1048576 ? `${(bytes / 1024).toFixed(1)} KB` : `${(bytes / 1048576).toFixed(1)} MB`;
}

/** A small line plot as inline SVG (no script, no external asset). */
function spark(values: ReadonlyArray<number | null>, label: string): string {
  const width = 150;
  const height = 28;
  const max = Math.max(1e-9, ...values.map((v) => v ?? 0));
  const step = values.length > 1 ? width / (values.length - 1) : width;
  const path = values.map((v, i) => `${i === 0 ? 'M' : 'L'}${(i * step).toFixed(1)},${(height - ((v ?? 0) / max) * (height - 2) - 1).toFixed(1)}`).join(' ');
  return `<svg class="spark" viewBox="0 0 ${width} ${height}" width="${width}" height="${height}" role="img" aria-label="${h(label)}"><path d="${path}"/></svg>`;
}

const PAGE_REFRESH_SECONDS = 10;

/** The page: server-rendered, refreshed by the browser every 10 s, no script. */
export function statusHtml(d: StatusData): string {
  const g = d.gateway;
  const rows = (cells: string[]) => `<tr>${cells.map((c) => `<td>${c}</td>`).join('')}</tr>`;
  const head = (cells: string[]) => `<tr>${cells.map((c) => `<th>${c}</th>`).join('')}</tr>`;
  const routes = d.routes
    .map((r) =>
      rows([
        h(r.name),
        `<code>${h(r.match)}</code>`,
        h(r.methods?.join(', ') ?? 'any'),
        h(r.service ?? '(gateway)'),
        h(r.auth),
        h(r.access),
        h(r.rateLimit),
        r.phi ? '<span class="phi">PHI</span>' : '',
        `${r.lastMinute.ratePerSecond.toFixed(2)}/s ${spark(r.trend.map((p: TrendPoint | { rate: number }) => p.rate), `${r.name} request rate`)}`,
        `${(r.lastMinute.errorRate * 100).toFixed(1)}%`,
        `${r.lastMinute.p95Ms === null ? '–' : `${r.lastMinute.p95Ms} ms`} ${spark(r.trend.map((p) => p.p95Ms), `${r.name} p95`)}`,
      ]),
    )
    .join('');
  const services = d.services
    .map(
      (svc) =>
        `<h3>${h(svc.name)}</h3><p>in flight ${svc.inFlight} · breaker refusals ${svc.breakerRefusals} · retries ${svc.retries} (refused by the budget ${svc.retriesRefused})</p>` +
        `<div class="wide"><table>${head(['instance', 'state', 'in flight', 'tries', 'failures (connect / reset / timeout / 5xx)'])}${svc.instances
          .map((i) =>
            rows([
              `<code>${h(i.origin)}</code>`,
              `<span class="state ${i.state === 'in rotation' ? 'ok' : 'bad'}">${h(i.state)}${i.ejectedForSeconds > 0 ? ` (${i.ejectedForSeconds} s more)` : ''}</span>`,
              String(i.inFlight),
              String(i.tries),
              `${i.failures.connect} / ${i.failures.reset} / ${i.failures.timeout} / ${i.failures.status}`,
            ]),
          )
          .join('')}</table></div>`,
    )
    .join('');
  const a = d.audit;
  const audit =
    a === null
      ? '<p>The audit trail is off.</p>'
      : `<p>delivered ${a.delivered} · waiting <span id="audit-waiting">${h(mb(a.waitingBytes))}</span>${a.waitingSeconds > 0 ? ` (for ${a.waitingSeconds} s)` : ''} ${spark(a.backlog.map((b) => b.bytes), 'audit backlog')} · set aside ${a.setAside} · dropped ${a.dropped}</p>` +
        `<p>${a.failing ? '<span class="state bad">the audit service is unreachable</span>' : '<span class="state ok">delivering</span>'}${a.phiRefused ? ' · <span class="state bad">PHI routes are refused (503)</span>' : ''}${a.problem === null ? '' : ` · ${h(a.problem)}`}</p>`;
  const reloads =
    d.reloads.length === 0
      ? '<p>No reload since the start.</p>'
      : `<ul>${d.reloads.map((r) => `<li>${h(r.at)}: ${r.accepted ? '<span class="state ok">accepted</span>' : `<span class="state bad">refused</span><ul>${r.problems.map((p) => `<li><code>${h(p)}</code></li>`).join('')}</ul>`}</li>`).join('')}</ul>`;
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="refresh" content="${PAGE_REFRESH_SECONDS}">
<title>api-gateway status</title><link rel="stylesheet" href="/status.css"></head>
<body>
<h1>api-gateway ${h(g.version)}</h1>
<p class="facts">up ${g.uptimeSeconds} s · ${g.workers} worker${g.workers === 1 ? '' : 's'} · memory ${h(mb(g.memory.rssBytes))} of ${h(mb(g.memory.limitBytes))} · event-loop delay p99 ${g.eventLoopDelayMs.p99.toFixed(1)} ms · Redis ${g.redis === null ? 'not used (in-memory stores)' : `${h(g.redis.mode)}: ${h(g.redis.state)}`} · auth-rbac ${h(g.authService)}</p>
<h2>Routes</h2><div class="wide"><table>${head(['route', 'match', 'methods', 'service', 'auth', 'access', 'limit', '', 'requests (5 min)', 'errors', 'p95 (5 min)'])}${routes}</table></div>
<h2>Services</h2>${services}
<h2>Audit trail</h2>${audit}
<h2>Config reloads</h2>${reloads}
<p class="foot">Refreshes every ${PAGE_REFRESH_SECONDS} s. The same data: <a href="/status.json">/status.json</a>.</p>
</body></html>`;
}

export const STATUS_CSS = `body{font:14px/1.4 system-ui,sans-serif;margin:1rem;color:#1d1d1f;background:#fff}
h1{font-size:1.3rem}h2{font-size:1.1rem;margin-top:1.5rem}h3{font-size:1rem;margin:.8rem 0 .2rem}
table{border-collapse:collapse;margin:.3rem 0}th,td{padding:.25rem .5rem;border-bottom:1px solid #ddd;text-align:left;vertical-align:middle}
th{font-weight:600;background:#f5f5f7}.wide{overflow-x:auto}code{font-size:.9em}
.state.ok{color:#17663a}.state.bad{color:#b3261e;font-weight:600}.phi{background:#fde7e9;color:#8c1d18;padding:0 .3rem;border-radius:3px}
.spark{vertical-align:middle;margin-left:.3rem}.spark path{fill:none;stroke:#2962ff;stroke-width:1.5}.facts,.foot{color:#555}
@media (max-width:600px){body{margin:.5rem}th,td{padding:.2rem .3rem}}`;

/** Nothing but this page's own stylesheet; no script at all; not framable. */
export const STATUS_CSP = "default-src 'none'; style-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";
