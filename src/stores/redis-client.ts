import { Cluster, Redis, type RedisOptions } from 'ioredis';
import standaloneModule from 'ioredis/built/connectors/StandaloneConnector.js';
import type { RedisConnection } from './redis-connection.js';
import type { Logger } from '../observability/logger.js';

// A CommonJS default export, seen from ESM: the module object, whose `default` is the class.
const StandaloneConnector = standaloneModule.default;

/**
 * ioredis listens for one error per connection (`once`); a TLS socket can raise two (a refused
 * handshake, then the peer's alert), and an error nobody listens for ends the process. Every
 * error is ioredis's to report; the extra listener only keeps a second one from being fatal.
 */
class GuardedStandaloneConnector extends StandaloneConnector {
  override connect(...args: Parameters<InstanceType<typeof StandaloneConnector>['connect']>) {
    return super.connect(...args).then((stream) => {
      stream.on('error', () => undefined);
      return stream;
    });
  }
}
// ioredis hands a connector its own options, typed `unknown` in the constructor it takes.
const GuardedConnector = GuardedStandaloneConnector as unknown as NonNullable<RedisOptions['Connector']>;

/**
 * The shared Redis connection. No offline queue and a short command timeout: while Redis is
 * away a command fails at once instead of holding a request, and nothing piles up. Commands
 * issued in the same tick travel in one pipeline (auto-pipelining).
 */
export function createRedisClient(connection: RedisConnection, commandTimeoutMs: number, logger: Logger, subscriber = false): Redis | Cluster {
  const options: RedisOptions = {
    // The subscriber subscribes again itself on every 'ready' (AccessControl.listen): ioredis's own
    // resubscription leaves its promise unhandled when the connection drops right after ready.
    autoResubscribe: !subscriber,
    lazyConnect: true,
    enableOfflineQueue: false,
    enableAutoPipelining: true,
    maxRetriesPerRequest: 0,
    commandTimeout: commandTimeoutMs,
    connectTimeout: 1_000,
    retryStrategy: (attempt) => Math.min(attempt * 200, 2_000),
    // A primary demoted under this connection answers writes with READONLY: connect again (through
    // the sentinels, to the new primary).
    reconnectOnError: (err) => err.message.startsWith('READONLY'),
  };
  const tls = connection.kind === 'url' || connection.tls === null ? undefined : { tls: connection.tls.ca === undefined ? {} : { ca: connection.tls.ca } };
  let redis: Redis | Cluster;
  if (connection.kind === 'url') {
    redis = new Redis(connection.url, {
      ...options,
      Connector: GuardedConnector,
      // rediss://: the server's certificate is checked against REDIS_CA_FILE (else the system's CAs).
      ...(connection.url.startsWith('rediss://') ? { tls: connection.ca === undefined ? {} : { ca: connection.ca } } : undefined),
    });
  } else if (connection.kind === 'sentinel') {
    redis = new Redis({
      ...options,
      sentinels: connection.sentinels.map((s) => ({ host: s.host, port: s.port })),
      name: connection.name,
      ...(connection.password === null ? undefined : { password: connection.password }),
      ...(tls === undefined ? undefined : { ...tls, enableTLSForSentinelMode: true }),
      // No failoverDetector: its disconnect on +switch-master, landing while the client was
      // already reconnecting, left the client closed for good (seen in CI); a lost primary is
      // found again through the sentinels on the ordinary reconnect.
      sentinelRetryStrategy: (attempt) => Math.min(attempt * 200, 2_000),
    });
  } else {
    redis = new Cluster(
      connection.nodes.map((n) => ({ host: n.host, port: n.port })),
      {
        lazyConnect: true,
        enableOfflineQueue: false,
        enableAutoPipelining: true,
        clusterRetryStrategy: (attempt) => Math.min(attempt * 200, 2_000),
        retryDelayOnFailover: 100,
        retryDelayOnTryAgain: 5,
        slotsRefreshTimeout: 1_000,
        redisOptions: {
          ...options,
          // A node's connection may come back without the cluster's 'ready': it subscribes again itself.
          autoResubscribe: true,
          Connector: GuardedConnector,
          ...(connection.password === null ? undefined : { password: connection.password }),
          ...tls,
        },
      },
    );
  }
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
