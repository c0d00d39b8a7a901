import { Pool } from 'undici';

/** Upstream latency buckets (seconds): the same resolution as the gateway's request histogram. */
export const LATENCY_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5, 10];

/** Why a try at an instance failed; every kind counts towards outlier detection. */
export type FailureKind = 'connect' | 'reset' | 'timeout' | 'status';

export interface PoolSettings {
  readonly connectTimeoutMs: number;
  readonly maxConnections: number;
  /** `connectTimeoutMs maxConnections`, made once: the pool lookup builds no string per request. */
  readonly key: string;
}

export function poolSettings(connectTimeoutMs: number, maxConnections: number): PoolSettings {
  return Object.freeze({ connectTimeoutMs, maxConnections, key: `${connectTimeoutMs} ${maxConnections}` });
}

/**
 * One upstream instance and everything the gateway knows about it: its connection pools, its
 * health (active checks and passive ejection), the requests in flight (least-request and the
 * circuit breaker) and its counters. It lives as long as the instance is in its service, across
 * config reloads, so health state and counters survive them.
 */
export class Instance {
  weight: number;
  /** Requests in flight or queued at this instance. */
  active = 0;
  /** The verdict of the active health checks. */
  healthy = true;
  /** performance.now() until which passive outlier detection keeps the instance out; 0 when in. */
  ejectedUntil = 0;
  ejections = 0;
  consecutiveFailures = 0;
  /** Active checks in a row that agreed with each other, towards a healthy/unhealthy threshold. */
  checkStreak = 0;
  /** performance.now() of the last ejection: an active check that starts after it and passes ends it. */
  ejectedAt = 0;
  // Counters, read by /metrics and /health.
  requests = 0;
  readonly failures: Record<FailureKind, number> = { connect: 0, reset: 0, timeout: 0, status: 0 };
  latencyCount = 0;
  latencySum = 0;
  readonly latencyBuckets = new Float64Array(LATENCY_BUCKETS.length);
  /** Smooth weighted round robin's running weight. */
  currentWeight = 0;
  /** Mixed hash of the origin, for consistent hashing. */
  readonly hash: number;

  private readonly pools = new Map<string, Pool>();
  private closed = false;

  constructor(
    readonly origin: string,
    weight: number,
    /** CAs for https:// instances (UPSTREAM_CA_FILE); undefined: the system's. */
    private readonly ca?: Buffer,
  ) {
    this.weight = weight;
    this.hash = hashString(origin);
  }

  /** Out of rotation now: failing its health checks, or ejected for failures on real traffic. */
  unavailable(now: number): boolean {
    return !this.healthy || (this.ejectedUntil !== 0 && this.ejectedUntil > now);
  }

  /** The keep-alive pool for a connect timeout and size; pools are made once per setting. */
  pool(settings: PoolSettings): Pool {
    const key = settings.key;
    let pool = this.pools.get(key);
    if (pool === undefined) {
      pool = new Pool(this.origin, {
        connections: settings.maxConnections,
        pipelining: 1,
        connect: this.ca === undefined ? { timeout: settings.connectTimeoutMs } : { timeout: settings.connectTimeoutMs, ca: this.ca },
        keepAliveTimeout: 30_000,
        keepAliveMaxTimeout: 600_000,
        // The gateway keeps the response deadline itself (forward.ts); these are only a ceiling.
        headersTimeout: 0,
        bodyTimeout: 0,
      });
      if (this.closed) void pool.close();
      this.pools.set(key, pool);
    }
    return pool;
  }

  recordLatency(seconds: number): void {
    this.latencyCount++;
    this.latencySum += seconds;
    for (let i = 0; i < LATENCY_BUCKETS.length; i++) {
      if (seconds <= LATENCY_BUCKETS[i]!) {
        this.latencyBuckets[i]!++;
        return;
      }
    }
  }

  /** Lets the requests in flight finish, then closes the connections. */
  async close(): Promise<void> {
    this.closed = true;
    await Promise.allSettled([...this.pools.values()].map((p) => p.close()));
  }

  /** Ends the connections at once (gateway shutdown after the drain). */
  async destroy(): Promise<void> {
    this.closed = true;
    await Promise.allSettled([...this.pools.values()].map((p) => p.destroy()));
  }
}

/** FNV-1a over a string's UTF-16 units. */
export function fnv1a(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193);
  return h;
}

/** FNV-1a, then a murmur3 finaliser so that near-identical strings spread over the whole range. */
export function hashString(s: string): number {
  return mix(fnv1a(s));
}

export function mix(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}
