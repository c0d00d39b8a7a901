import cluster from 'node:cluster';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Cluster, Redis } from 'ioredis';
import { AuditTrail } from './audit/audit-trail.js';
import { JwtVerifier } from './auth/jwt.js';
import { SessionValidator } from './auth/sessions.js';
import type { GatewayConfig } from './config/load.js';
import { ConfigError } from './errors.js';
import { HealthMonitor, resolveMemoryLimit, type RedisState } from './observability/health.js';
import { LoopLag } from './observability/loop-lag.js';
import type { Logger } from './observability/logger.js';
import { Metrics } from './observability/metrics.js';
import { Tracing, tracingConfigured } from './observability/tracing.js';
import { AccessControl } from './stores/failover-access-store.js';
import { MemoryAccessStore } from './stores/memory-access-store.js';
import { RedisAccessStore } from './stores/redis-access-store.js';
import { within } from './stores/command-deadline.js';
import { createRedisClient } from './stores/redis-client.js';
import { ClusterPipe } from './stores/cluster-pipe.js';
import { pipeTarget, redisConnectionOf, type RedisConnection } from './stores/redis-connection.js';
import { RespPipe } from './stores/resp-pipe.js';
import { readTlsMaterial, type TlsMaterial } from './tls.js';
import { UpstreamPools } from './upstream/pools.js';
import { UpstreamRegistry } from './upstream/registry.js';
import { VERSION } from './version.js';
import { workerMetrics } from './workers.js';

/** How often the health checks run by themselves, for the dependency gauges. */
const HEALTH_REFRESH_MS = 15_000;

/** A Redis reply this late means a stuck server, not a slow answer. */
const stuckAfter = (commandTimeoutMs: number) => Math.max(1_000, 10 * commandTimeoutMs);

/** The command timeout of the connection that hears revocation announcements. */
const SUBSCRIBER_TIMEOUT_MS = 5_000;
/** At shutdown, how long the audit backlog may take to reach the audit service before the spool keeps it. */
const AUDIT_DRAIN_MS = 2_000;

/**
 * What the request path is handed: the key set, the shared stores (Redis, or memory for one
 * process), the audit trail, tracing, metrics, health and the upstream services. Everything
 * that can refuse the config is read before anything is opened or started.
 */
export interface Resources {
  readonly tls: TlsMaterial | null;
  readonly upstreamCa: Buffer | undefined;
  readonly upstreams: UpstreamRegistry;
  readonly verifier: JwtVerifier;
  readonly accessControl: AccessControl;
  readonly sessions: SessionValidator;
  readonly audit: AuditTrail | null;
  readonly tracing: Tracing | null;
  readonly metrics: Metrics | null;
  readonly health: HealthMonitor;
  /** The event loop's recent delay, for shedding at the door; null with LOAD_SHED_EVENT_LOOP_DELAY_MS=0. */
  readonly loopLag: LoopLag | null;
  /** For /health and /debug/vars: each service's instances in rotation, and the audit trail's state. */
  readonly serviceCounts: () => Array<{ name: string; healthy: number; total: number }>;
  readonly auditState: () => { problem: string | null; failing: boolean; backlogBytes: number } | null;
  /** What the request path's Redis connection is doing; null without Redis. */
  readonly redisState: () => RedisState | null;
  readonly memoryLimitBytes: number;
  close(): Promise<void>;
}

export async function openResources(config: GatewayConfig, logger: Logger, isShuttingDown: () => boolean): Promise<Resources> {
  const { env } = config;
  const tls = env.TLS_CERT_FILE ? await readTlsMaterial(env.TLS_CERT_FILE, env.TLS_KEY_FILE!) : null;
  const upstreamCa = env.UPSTREAM_CA_FILE === undefined ? undefined : await readFile(env.UPSTREAM_CA_FILE).catch((err: NodeJS.ErrnoException) => {
    throw new ConfigError([`UPSTREAM_CA_FILE: cannot read "${env.UPSTREAM_CA_FILE}" (${err.code ?? 'error'})`]);
  });
  const verifier = await createVerifier(env);
  const upstreams = new UpstreamRegistry(logger, undefined, upstreamCa);
  const { redis, pipe, subscriber, local, accessControl } = openStores(await redisConnection(env), env.REDIS_COMMAND_TIMEOUT_MS, logger);
  const audit = env.AUDIT_ENABLED ? await openAudit(config, upstreamCa, logger) : null;
  const tracing = tracingConfigured(config.source) ? new Tracing(config.source, VERSION) : null;
  const memoryLimitBytes = await resolveMemoryLimit(env.MEMORY_LIMIT_MB);
  const metrics = env.ENABLE_METRICS ? createMetrics(() => upstreams.list(), audit, memoryLimitBytes) : null;
  const pools = new UpstreamPools();
  const authService = pools.get(new URL(env.AUTH_SERVICE_URL).origin, { connectTimeoutMs: env.AUTH_REQUEST_TIMEOUT_MS, maxConnections: 64, ca: upstreamCa });
  const serviceCounts = () => upstreams.list().map((svc) => ({ name: svc.name, ...svc.counts(performance.now()) }));
  const auditState = () => (audit === null ? null : { problem: audit.problem, failing: audit.failing, backlogBytes: audit.backlogBytes });
  const health = openHealth(config, { redis, pipe, accessControl, metrics, memoryLimitBytes, isShuttingDown, serviceCounts, auditState }, logger);
  // The dependency gauges (and their alert) stay current even when nothing probes /health.
  const healthRefresh = metrics === null ? null : setInterval(() => void health.report().catch(() => undefined), HEALTH_REFRESH_MS);
  healthRefresh?.unref();
  const loopLag = env.LOAD_SHED_EVENT_LOOP_DELAY_MS === 0 ? null : new LoopLag();
  return {
    tls,
    upstreamCa,
    upstreams,
    verifier,
    accessControl,
    sessions: new SessionValidator(authService, env.AUTH_REQUEST_TIMEOUT_MS),
    audit,
    tracing,
    metrics,
    health,
    loopLag,
    serviceCounts,
    auditState,
    redisState: () => pipe?.state() ?? null,
    memoryLimitBytes,
    async close() {
      if (healthRefresh !== null) clearInterval(healthRefresh);
      loopLag?.close();
      await Promise.all([pools.close(), upstreams.close(), audit?.close(AUDIT_DRAIN_MS), tracing?.shutdown()]);
      health.stop();
      accessControl.close();
      local.close();
      redis?.disconnect();
      pipe?.close();
      subscriber?.disconnect();
    },
  };
}

/** The verifier of the gateway's tokens: the current key, the previous one during a rotation, or a JWKS. */
export function createVerifier(env: GatewayConfig['env']): Promise<JwtVerifier> {
  return JwtVerifier.create({
    keys: [
      { secret: env.JWT_SECRET, kid: env.JWT_KID },
      ...(env.JWT_PREVIOUS_SECRET !== undefined ? [{ secret: env.JWT_PREVIOUS_SECRET, kid: env.JWT_PREVIOUS_KID, untilMs: env.JWT_PREVIOUS_SECRET_EXPIRES_AT }] : []),
    ],
    maxLifetimeSeconds: env.JWT_EXPIRES_IN,
    clockSkewSeconds: env.JWT_CLOCK_SKEW_SECONDS,
    issuer: env.JWT_ISSUER,
    audience: env.JWT_AUDIENCE,
    jwksUrl: env.JWT_JWKS_URL,
    jwksTimeoutMs: env.AUTH_REQUEST_TIMEOUT_MS,
  });
}

/** How the environment says to reach Redis (its CA bundle read), or null for the in-process stores. */
export async function redisConnection(env: GatewayConfig['env']): Promise<RedisConnection | null> {
  const ca = env.REDIS_CA_FILE === undefined ? undefined : await readFile(env.REDIS_CA_FILE).catch((err: NodeJS.ErrnoException) => {
    throw new ConfigError([`REDIS_CA_FILE: cannot read "${env.REDIS_CA_FILE}" (${err.code ?? 'error'})`]);
  });
  return redisConnectionOf(env, ca);
}

/** The spec's health logic over the gateway's dependencies; its reports keep the dependency gauges current. */
function openHealth(
  config: GatewayConfig,
  d: { redis: Redis | Cluster | null; pipe: RespPipe | ClusterPipe | null; accessControl: AccessControl; metrics: Metrics | null; memoryLimitBytes: number; isShuttingDown: () => boolean } & Pick<Resources, 'serviceCounts' | 'auditState'>,
  logger: Logger,
): HealthMonitor {
  const { env } = config;
  return new HealthMonitor({
    version: VERSION,
    authServiceUrl: env.AUTH_SERVICE_URL,
    // Judged as the request path's commands are: a stalled loop is not a Redis outage.
    redisPing: d.redis ? () => within(d.redis!.ping(), env.REDIS_COMMAND_TIMEOUT_MS) : null,
    redisState: () => d.pipe?.state() ?? null,
    announcements: () => d.accessControl.announcements,
    sharedStoreDegraded: () => d.accessControl.degraded,
    probeSharedStore: () => d.accessControl.probe(),
    cacheMs: env.HEALTH_CACHE_MS,
    eventLoopThresholdMs: env.HEALTH_EVENT_LOOP_THRESHOLD_MS,
    memoryLimitBytes: d.memoryLimitBytes,
    isShuttingDown: d.isShuttingDown,
    services: d.serviceCounts,
    audit: d.auditState,
    onReport: (report) => {
      for (const [name, status] of Object.entries(report.dependencies)) d.metrics?.dependencyHealth(name, status === 'healthy');
      if (report.audit) d.metrics?.dependencyHealth('audit', report.audit.status === 'healthy');
    },
    onChange: (status, checks) => logger[status === 'healthy' ? 'info' : 'warn']({ status, checks }, `health is now ${status}`),
  });
}

/**
 * Redis when REDIS_URL, REDIS_SENTINELS or REDIS_CLUSTER_NODES is set, with the in-process store
 * as its fallback; the in-process store alone otherwise.
 */
function openStores(
  connection: RedisConnection | null,
  timeoutMs: number,
  logger: Logger,
): { redis: Redis | Cluster | null; pipe: RespPipe | ClusterPipe | null; subscriber: Redis | Cluster | null; local: MemoryAccessStore; accessControl: AccessControl } {
  const local = new MemoryAccessStore();
  if (connection === null) return { redis: null, pipe: null, subscriber: null, local, accessControl: new AccessControl(null, local, logger, timeoutMs) };
  const { redis, pipe, store } = openRedisStore(connection, timeoutMs, logger);
  const accessControl = new AccessControl(store, local, logger, timeoutMs);
  // Revocations announced by other replicas, mirrored for use while Redis is away.
  // Its commands (SUBSCRIBE) are on no request's path: a stalled event loop must not time them out.
  const subscriber = createRedisClient(connection, Math.max(timeoutMs, SUBSCRIBER_TIMEOUT_MS), logger, true);
  accessControl.listen(subscriber);
  return { redis, pipe, subscriber, local, accessControl };
}

/** The shared store on Redis: a general client, and the request path's pipe (one per primary of a cluster). */
export function openRedisStore(connection: RedisConnection, timeoutMs: number, logger: Logger): { redis: Redis | Cluster; pipe: RespPipe | ClusterPipe; store: RedisAccessStore } {
  // Its calls are timed by `within` (command-deadline.ts), from their write and with the I/O phase
  // read first; its own timeout, counted from the call, is only a backstop, as the pipe's
  // stuckAfterMs is.
  const redis = createRedisClient(connection, stuckAfter(timeoutMs), logger);
  // The per-request scripts on a lean connection of their own; a reply this late means a stuck server.
  const pipeOptions = {
    connectTimeoutMs: 1_000,
    stuckAfterMs: stuckAfter(timeoutMs),
    onProblem: (problem: string) => logger.warn({ problem }, 'redis (request path connection)'),
  };
  const pipe =
    connection.kind === 'cluster'
      ? new ClusterPipe(connection.nodes, { ...pipeOptions, password: connection.password, tls: connection.tls, timeoutMs })
      : new RespPipe(pipeTarget(connection, 1_000), pipeOptions);
  return { redis, pipe, store: new RedisAccessStore(redis, pipe) };
}

function openAudit(config: GatewayConfig, ca: Buffer | undefined, logger: Logger): Promise<AuditTrail> {
  const { env } = config;
  return AuditTrail.open(
    {
      serviceUrl: env.AUDIT_SERVICE_URL,
      // Each worker of WORKERS > 1 keeps a spool of its own, by slot, so a restarted worker takes over its predecessor's.
      spoolDir: cluster.isWorker ? join(env.AUDIT_SPOOL_DIR, `worker-${process.env.GATEWAY_WORKER_SLOT ?? cluster.worker!.id}`) : env.AUDIT_SPOOL_DIR,
      spoolMaxBytes: env.AUDIT_SPOOL_MAX_MB * 1024 * 1024,
      requestTimeoutMs: env.AUDIT_REQUEST_TIMEOUT_MS,
      ca,
    },
    logger,
  ).catch((err: unknown) => {
    throw new ConfigError([`AUDIT_SPOOL_DIR: cannot use "${env.AUDIT_SPOOL_DIR}" (${(err as Error).message}); point it at a writable folder of this gateway's own`]);
  });
}

/** In a worker of WORKERS > 1, /metrics shows every worker's numbers, merged by the primary. */
function createMetrics(upstreams: () => ReturnType<UpstreamRegistry['list']>, audit: AuditTrail | null, memoryLimitBytes: number): Metrics {
  if (!cluster.isWorker) return new Metrics(upstreams, null, audit, memoryLimitBytes);
  let fetchMerged: (() => Promise<string>) | null = null;
  const metrics = new Metrics(upstreams, () => fetchMerged!(), audit, memoryLimitBytes);
  fetchMerged = workerMetrics(metrics.registry);
  return metrics;
}
