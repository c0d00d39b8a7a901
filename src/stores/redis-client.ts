import { Redis } from 'ioredis';
import type { Logger } from '../observability/logger.js';

/**
 * The shared Redis connection. No offline queue and a short command timeout: while Redis is
 * away a command fails at once instead of holding a request, and nothing piles up. Commands
 * issued in the same tick travel in one pipeline (auto-pipelining).
 */
export function createRedisClient(url: string, commandTimeoutMs: number, logger: Logger, ca?: Buffer): Redis {
  const redis = new Redis(url, {
    // rediss://: the server's certificate is checked against REDIS_CA_FILE (else the system's CAs).
    ...(url.startsWith('rediss://') ? { tls: ca === undefined ? {} : { ca } } : undefined),
    lazyConnect: true,
    enableOfflineQueue: false,
    enableAutoPipelining: true,
    maxRetriesPerRequest: 0,
    commandTimeout: commandTimeoutMs,
    connectTimeout: 1_000,
    retryStrategy: (attempt) => Math.min(attempt * 200, 2_000),
  });
  let up = false;
  redis.on('ready', () => {
    up = true;
    logger.info('redis connected');
  });
  redis.on('error', (err: Error) => {
    if (up) logger.warn({ cause: err.message }, 'redis connection lost; reconnecting');
    up = false;
  });
  redis.connect().catch(() => {
    // retried by the client's own strategy; /health reports it meanwhile
  });
  return redis;
}
