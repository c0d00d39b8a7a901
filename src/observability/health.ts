import { readFile } from 'node:fs/promises';
import { monitorEventLoopDelay, type IntervalHistogram } from 'node:perf_hooks';
import { getHeapStatistics } from 'node:v8';
import { request } from 'undici';

export type Status = 'healthy' | 'degraded' | 'unhealthy';

export interface HealthReport {
  status: Status;
  service: 'api-gateway';
  version: string;
  timestamp: string;
  dependencies: Record<string, Status>;
  /** The audit trail: degraded while its service is unreachable (events wait on disk), unhealthy when events cannot be kept. */
  audit?: { status: Status; detail: string };
  /**
   * The shared store's connection: how Redis is deployed, what the gateway is doing with it (a
   * failover under way, say) and how many primaries serve it. No addresses: those are in `checks`.
   */
  redis?: { mode: string; state: string; primaries: number; announcements: string };
  /** Each upstream service: instances in rotation out of all. */
  services: Record<string, { status: Status; healthy: number; total: number }>;
  checks: Record<string, { status: Status; detail: string }>;
}

export interface RedisState {
  mode: 'server' | 'sentinel' | 'cluster';
  state: string;
  primaries: number;
  detail: string;
}

export interface HealthDeps {
  version: string;
  authServiceUrl: string;
  /** Pings Redis; absent when the gateway runs on in-memory stores. */
  redisPing: (() => Promise<unknown>) | null;
  /** What the request path's Redis connection is doing (which server or primaries, a failover under way); null without Redis. */
  redisState: () => RedisState | null;
  /** Whether the replica hears the other replicas' revocations (`subscribed`, `not subscribed`); null without Redis. */
  announcements: () => string | null;
  /** True while the stores work from per-process fallbacks because Redis failed a command. */
  sharedStoreDegraded: () => boolean;
  /** Tries the shared store once, so that an idle gateway also leaves its fallback. */
  probeSharedStore: () => Promise<void>;
  cacheMs: number;
  eventLoopThresholdMs: number;
  memoryLimitBytes: number;
  isShuttingDown: () => boolean;
  /** The upstream services and how many of their instances are in rotation. */
  services: () => Array<{ name: string; healthy: number; total: number }>;
  /** The audit trail's state; null when auditing is off. */
  audit: () => { problem: string | null; failing: boolean; backlogBytes: number } | null;
  /** Told every fresh report (metrics keep the dependencies' state from it). */
  onReport?: (report: HealthReport) => void;
  /** Told when the overall status changes, with the reasons. */
  onChange?: (status: Status, checks: HealthReport['checks']) => void;
}

const PROBE_TIMEOUT_MS = 1_000;

function worst(statuses: Iterable<Status>): Status {
  let out: Status = 'healthy';
  for (const s of statuses) {
    if (s === 'unhealthy') return 'unhealthy';
    if (s === 'degraded') out = 'degraded';
  }
  return out;
}

async function withTimeout<T>(work: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      work,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error('timeout')), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/** The container's memory limit (cgroup v2, then v1), if the gateway runs under one. */
export async function containerMemoryLimit(): Promise<number | null> {
  for (const file of ['/sys/fs/cgroup/memory.max', '/sys/fs/cgroup/memory/memory.limit_in_bytes']) {
    try {
      const text = (await readFile(file, 'utf8')).trim();
      const n = Number(text);
      if (Number.isFinite(n) && n > 0 && n < 2 ** 60) return n;
    } catch {
      // not under this cgroup version
    }
  }
  return null;
}

export async function resolveMemoryLimit(configuredMb: number): Promise<number> {
  if (configuredMb > 0) return configuredMb * 1024 * 1024;
  return (await containerMemoryLimit()) ?? getHeapStatistics().heap_size_limit;
}

/**
 * The spec's health logic: Redis connectivity, auth-rbac availability, memory within limits and
 * the gateway's own responsiveness (event-loop delay). A result is reused for a short interval and
 * at most one check runs at a time, so probes never hammer the dependencies.
 * A dependency that is down makes the gateway degraded, not unhealthy: it keeps serving what it
 * can. Unhealthy (503) is for a gateway that should be taken out of rotation.
 */
export class HealthMonitor {
  private cached: { at: number; report: HealthReport } | null = null;
  private running: Promise<HealthReport> | null = null;
  private lastStatus: Status = 'healthy';
  private readonly loop: IntervalHistogram;

  constructor(private readonly deps: HealthDeps) {
    this.loop = monitorEventLoopDelay({ resolution: 20 });
    this.loop.enable();
  }

  stop(): void {
    this.loop.disable();
  }

  async report(): Promise<HealthReport> {
    const now = Date.now();
    if (this.cached !== null && now - this.cached.at < this.deps.cacheMs) return this.cached.report;
    if (this.running === null) {
      this.running = this.check().finally(() => {
        this.running = null;
      });
    }
    return this.running;
  }

  private async check(): Promise<HealthReport> {
    const [auth, database] = await Promise.all([this.checkAuth(), this.checkRedis()]);
    const memory = this.checkMemory();
    const eventLoop = this.checkEventLoop();
    const shutdown: { status: Status; detail: string } = this.deps.isShuttingDown()
      ? { status: 'unhealthy', detail: 'shutting down' }
      : { status: 'healthy', detail: 'serving' };
    const dependencies = { 'auth-service': auth.status, database: database.status };
    const services: HealthReport['services'] = {};
    for (const { name, healthy, total } of this.deps.services()) {
      // No instance at all (a discovery that found none) is as bad as none healthy.
      services[name] = { status: healthy === 0 ? 'unhealthy' : healthy === total ? 'healthy' : 'degraded', healthy, total };
    }
    const redisState = this.deps.redisState();
    const redis = redisState === null ? undefined : { mode: redisState.mode, state: redisState.state, primaries: redisState.primaries, announcements: this.deps.announcements() ?? 'none' };
    const auditState = this.deps.audit();
    const audit: HealthReport['audit'] =
      auditState === null
        ? undefined
        : auditState.problem !== null
          ? { status: 'unhealthy', detail: auditState.problem }
          : auditState.failing
            ? { status: 'degraded', detail: `the audit service is unreachable; ${auditState.backlogBytes} bytes of events wait in the spool` }
            : { status: 'healthy', detail: 'events delivered' };
    // A dependency or service outage is degraded service, never a reason to pull every replica at once.
    const status = worst([
      ...[...Object.values(dependencies), ...Object.values(services).map((s) => s.status), ...(audit ? [audit.status] : [])].map((s): Status => (s === 'healthy' ? s : 'degraded')),
      memory.status,
      eventLoop.status,
      shutdown.status,
    ]);
    const report: HealthReport = {
      status,
      service: 'api-gateway',
      version: this.deps.version,
      timestamp: new Date().toISOString(),
      dependencies,
      ...(audit ? { audit } : undefined),
      ...(redis ? { redis } : undefined),
      services,
      checks: { 'auth-service': auth, database, memory, event_loop: eventLoop, lifecycle: shutdown },
    };
    this.deps.onReport?.(report);
    if (status !== this.lastStatus) {
      this.deps.onChange?.(status, report.checks);
      this.lastStatus = status;
    }
    this.cached = { at: Date.now(), report };
    return report;
  }

  private async checkAuth(): Promise<{ status: Status; detail: string }> {
    try {
      const res = await withTimeout(
        request(`${this.deps.authServiceUrl}/health`, { headersTimeout: PROBE_TIMEOUT_MS, bodyTimeout: PROBE_TIMEOUT_MS }),
        PROBE_TIMEOUT_MS,
      );
      await res.body.dump();
      return res.statusCode < 300 ? { status: 'healthy', detail: 'reachable' } : { status: 'unhealthy', detail: `answered ${res.statusCode}` };
    } catch {
      return { status: 'unhealthy', detail: 'unreachable' };
    }
  }

  private async checkRedis(): Promise<{ status: Status; detail: string }> {
    if (this.deps.redisPing === null) return { status: 'healthy', detail: 'in-memory stores (single process)' };
    // Redis down is `degraded`: limits fall back to per-process counting and service goes on.
    try {
      await withTimeout(this.deps.redisPing(), PROBE_TIMEOUT_MS);
    } catch {
      return { status: 'degraded', detail: `redis unreachable: limiting per process; ${this.topology()}` };
    }
    if (this.deps.sharedStoreDegraded()) await withTimeout(this.deps.probeSharedStore(), PROBE_TIMEOUT_MS).catch(() => undefined);
    if (this.deps.sharedStoreDegraded()) return { status: 'degraded', detail: `redis reachable again; recovering; ${this.topology()}` };
    return { status: 'healthy', detail: `redis reachable: ${this.topology()}` };
  }

  private topology(): string {
    return this.deps.redisState()?.detail ?? 'none';
  }

  private checkMemory(): { status: Status; detail: string } {
    const rss = process.memoryUsage.rss();
    const share = rss / this.deps.memoryLimitBytes;
    const detail = `${Math.round(share * 100)}% of the memory limit in use`;
    if (share >= 0.95) return { status: 'unhealthy', detail };
    if (share >= 0.8) return { status: 'degraded', detail };
    return { status: 'healthy', detail };
  }

  private checkEventLoop(): { status: Status; detail: string } {
    const p99 = this.loop.percentile(99) / 1e6;
    this.loop.reset();
    const detail = `event-loop delay p99 ${p99.toFixed(1)} ms`;
    return p99 > this.deps.eventLoopThresholdMs ? { status: 'degraded', detail } : { status: 'healthy', detail };
  }
}
