import { z } from 'zod';
import { absolutePath, ms } from '../schema-fields.js';

const instanceUrl = z.string().refine((v) => {
  try {
    const u = new URL(v);
    return (u.protocol === 'http:' || u.protocol === 'https:') && (u.pathname === '/' || u.pathname === '') && !u.search && !u.username;
  } catch {
    return false;
  }
}, 'instances are origins such as http://chat-history:8002 (scheme, host and port; no path, query or credentials)');

const instance = z.union([instanceUrl, z.strictObject({ url: instanceUrl, weight: z.number().int().min(1).max(1000).default(1) })]);

const hostname = z
  .string()
  .regex(/^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$/, 'host is a DNS name such as chat-history-headless.platform.svc.cluster.local');

/** Active health checks: each instance's health path polled; `false` turns them off. */
const healthCheckSchema = z
  .strictObject({
    intervalMs: ms('healthCheck.intervalMs').default(5_000),
    timeoutMs: ms('healthCheck.timeoutMs').default(1_000),
    /** Consecutive passes that bring an unhealthy instance back. */
    healthyThreshold: z.number().int().min(1).max(100).default(1),
    /** Consecutive failures that take a healthy instance out. */
    unhealthyThreshold: z.number().int().min(1).max(100).default(3),
  })
  .refine((h) => h.timeoutMs <= h.intervalMs, { message: 'timeoutMs must not exceed intervalMs', path: ['timeoutMs'] });

/** Passive outlier detection on real traffic; `false` turns it off. */
const outlierSchema = z
  .strictObject({
    /** Consecutive connection failures, resets, timeouts or 5xx answers that eject an instance. */
    consecutiveFailures: z.number().int().min(1).max(1000).default(5),
    /** The first ejection lasts this long; each repeat adds as much again, up to maxEjectionMs. */
    baseEjectionMs: ms('outlierDetection.baseEjectionMs').default(30_000),
    maxEjectionMs: ms('outlierDetection.maxEjectionMs').default(300_000),
    /** The panic threshold: never eject more than this share of the service's instances. */
    maxEjectedPercent: z.number().int().min(0).max(100).default(50),
  })
  .refine((o) => o.baseEjectionMs <= o.maxEjectionMs, { message: 'baseEjectionMs must not exceed maxEjectionMs', path: ['baseEjectionMs'] });

/** Retries of idempotent requests on another instance; `false` turns them off. */
const retrySchema = z.strictObject({
  /** Further tries after the first, each on an instance not yet tried. */
  retries: z.number().int().min(0).max(5).default(2),
  /** A try without a response head within this time is abandoned for another instance. */
  perTryTimeoutMs: ms('retry.perTryTimeoutMs').optional(),
  /** Upstream answers that are retried (their body is discarded). */
  onStatuses: z.array(z.number().int().min(500).max(599)).default([502, 503, 504]),
  /** Retries stay below this share of the service's requests (over the last 10 s)... */
  budgetPercent: z.number().min(0).max(100).default(20),
  /** ...except for this many per second, so a quiet service can still retry. */
  minRetriesPerSecond: z.number().int().min(0).max(1000).default(3),
});

/** The routes file's `services:` entries: instances, balancing, health, outlier detection, retries, the breaker. */
export const serviceSchema = z
  .strictObject({
    /** Fixed instances: origins, or `{url, weight}`. */
    instances: z.array(instance).min(1, 'a service needs at least one instance URL').optional(),
    /** Instances found by resolving a DNS name to all its addresses (a Kubernetes headless service). */
    discovery: z
      .strictObject({
        host: hostname,
        port: z.number().int().min(1).max(65_535),
        scheme: z.enum(['http', 'https'], { error: 'scheme is http or https' }).default('http'),
        intervalMs: ms('discovery.intervalMs').default(5_000),
      })
      .optional(),
    healthPath: absolutePath('healthPath').default('/health'),
    connectTimeoutMs: ms('connectTimeoutMs').default(2_000),
    maxConnections: z.number().int().min(1).max(10_000).default(256),
    balancer: z.enum(['round-robin', 'least-request', 'consistent-hash'], { error: 'balancer is round-robin, least-request or consistent-hash' }).default('round-robin'),
    /** The affinity key of consistent-hash: the verified user id, or a request header. */
    hashOn: z.union([z.literal('user'), z.strictObject({ header: z.string().regex(/^[A-Za-z0-9-]+$/, 'header names are letters, digits and -') })]).optional(),
    healthCheck: z.union([z.literal(false), healthCheckSchema]).default(() => healthCheckSchema.parse({})),
    outlierDetection: z.union([z.literal(false), outlierSchema]).default(() => outlierSchema.parse({})),
    retry: z.union([z.literal(false), retrySchema]).default(() => retrySchema.parse({})),
    /** The circuit breaker: upstream requests in flight or queued, across the instances; past it, 503 at once. */
    maxConcurrentRequests: z.number().int().min(1).max(1_000_000).default(256),
    /**
     * The door's limit adapts: each request that misses its deadline lowers it by a tenth (down
     * to 8), each answer in time raises it by one (up to maxConcurrentRequests); `false` keeps it
     * at maxConcurrentRequests.
     */
    adaptiveConcurrency: z.boolean().default(true),
  })
  .superRefine((svc, ctx) => {
    if ((svc.instances === undefined) === (svc.discovery === undefined)) {
      ctx.addIssue({ code: 'custom', path: ['instances'], message: 'a service lists its instances or names a discovery host, exactly one of the two' });
    }
    if (svc.balancer === 'consistent-hash' && svc.hashOn === undefined) {
      ctx.addIssue({ code: 'custom', path: ['hashOn'], message: 'consistent-hash needs hashOn: user, or hashOn: { header: X-Name }' });
    }
    if (svc.hashOn !== undefined && svc.balancer !== 'consistent-hash') {
      ctx.addIssue({ code: 'custom', path: ['hashOn'], message: 'hashOn applies to balancer: consistent-hash only' });
    }
  });

export type ServiceConfig = z.output<typeof serviceSchema>;
