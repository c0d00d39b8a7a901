import { Pool } from 'undici';

export interface PoolOptions {
  connectTimeoutMs: number;
  maxConnections: number;
  /** CAs for an https:// origin (UPSTREAM_CA_FILE); undefined: the system's. */
  ca?: Buffer;
}

/**
 * Keep-alive pools of the services the gateway itself calls (auth-rbac's session checks), one
 * per origin and settings. Routed services have theirs in their instances (src/upstream/instance.ts).
 */
export class UpstreamPools {
  private readonly pools = new Map<string, Pool>();

  get(origin: string, options: PoolOptions): Pool {
    const key = `${origin} ${options.connectTimeoutMs} ${options.maxConnections}`;
    let pool = this.pools.get(key);
    if (pool === undefined) {
      pool = new Pool(origin, {
        connections: options.maxConnections,
        pipelining: 1,
        connect: options.ca === undefined ? { timeout: options.connectTimeoutMs } : { timeout: options.connectTimeoutMs, ca: options.ca },
        keepAliveTimeout: 30_000,
        keepAliveMaxTimeout: 600_000,
        // The gateway sets per-request timeouts from the route; these are only a ceiling.
        headersTimeout: 0,
        bodyTimeout: 0,
      });
      this.pools.set(key, pool);
    }
    return pool;
  }

  async close(): Promise<void> {
    await Promise.allSettled([...this.pools.values()].map((p) => p.close()));
    this.pools.clear();
  }
}
