import { Pool } from 'undici';

export interface PoolOptions {
  connectTimeoutMs: number;
  maxConnections: number;
}

/**
 * One keep-alive connection pool per upstream origin and connect timeout. Pools are made when
 * the config is compiled and shared by every route that reaches the same origin.
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
        connect: { timeout: options.connectTimeoutMs },
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
