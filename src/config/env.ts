import { availableParallelism } from 'node:os';
import { BlockList, isIP } from 'node:net';
import { z } from 'zod';

const LOG_LEVELS = { DEBUG: 'debug', INFO: 'info', WARN: 'warn', ERROR: 'error', SILENT: 'silent' } as const;

const int = (min: number, max: number, hint: string) =>
  z
    .string()
    .trim()
    .regex(/^\d+$/, `must be a whole number (${hint})`)
    .transform(Number)
    .pipe(z.number().int().min(min, `must be at least ${min} (${hint})`).max(max, `must be at most ${max} (${hint})`));

const bool = z
  .string()
  .trim()
  .toLowerCase()
  .refine((v) => ['true', 'false', '1', '0', 'yes', 'no'].includes(v), 'must be true or false')
  .transform((v) => v === 'true' || v === '1' || v === 'yes');

const httpUrl = (hint: string) =>
  z
    .string()
    .trim()
    .refine((v) => {
      try {
        const u = new URL(v);
        return u.protocol === 'http:' || u.protocol === 'https:';
      } catch {
        return false;
      }
    }, `must be an http(s) URL such as ${hint}`)
    .transform((v) => v.replace(/\/+$/, ''));

const origins = z
  .string()
  .trim()
  .transform((v) => v.split(',').map((o) => o.trim()).filter(Boolean))
  .refine(
    (list) => list.length > 0 && list.every((o) => o === '*' || /^https?:\/\/[^/\s]+$/.test(o)),
    'must be * or a comma-separated list of origins such as https://app.healthcare.com (scheme and host, no path)',
  );

const cidrs = z
  .string()
  .trim()
  .transform((v) => v.split(',').map((c) => c.trim()).filter(Boolean))
  .refine(
    (list) =>
      list.every((c) => {
        const [ip, bits, extra] = c.split('/');
        if (extra !== undefined || !ip || !isIP(ip)) return false;
        if (bits === undefined) return true;
        const max = isIP(ip) === 4 ? 32 : 128;
        return /^\d+$/.test(bits) && Number(bits) <= max;
      }),
    'must be a comma-separated list of IP addresses or CIDR ranges such as 10.0.0.0/8,127.0.0.1',
  );

/** `host:port,host:port`, as a list; `what` and `example` for the message. */
function hostPortList(what: string, example: string) {
  return z
    .string()
    .trim()
    .transform((v) => v.split(',').map((s) => s.trim()).filter((s) => s !== ''))
    .pipe(
      z
        .array(z.string().regex(/^[^\s:,]+:\d{1,5}$/, `must list ${what} as host:port, comma-separated, such as ${example}`))
        .min(1, `must list at least one of the ${what} as host:port`),
    );
}

export const envSchema = z
  .object({
    NODE_ENV: z.string().trim().default('development'),
    PORT: int(0, 65535, 'the port to listen on, default 8090; 0 picks a free port').default(8090),
    HOST: z.string().trim().min(1).default('0.0.0.0'),
    AUTH_SERVICE_URL: httpUrl('http://auth-rbac:8080').default('http://auth-rbac:8080'),
    AUDIT_SERVICE_URL: httpUrl('http://audit-logging:8084').default('http://audit-logging:8084'),
    REDIS_URL: z
      .string()
      .trim()
      .refine((v) => /^rediss?:\/\/.+/.test(v), 'must be a redis:// or rediss:// URL such as redis://redis:6379')
      .optional(),
    REDIS_COMMAND_TIMEOUT_MS: int(5, 10_000, 'milliseconds a Redis command may hold a request').default(100),
    /** PEM bundle of the CAs that sign a rediss:// server's certificate (else the system's). */
    REDIS_CA_FILE: z.string().trim().min(1).optional(),
    /** Redis Sentinel instead of REDIS_URL: the sentinels, and the name of the primary they watch. */
    REDIS_SENTINELS: hostPortList('sentinels', 'redis-sentinel-0:26379,redis-sentinel-1:26379').optional(),
    REDIS_SENTINEL_NAME: z.string().trim().min(1).optional(),
    /** Redis Cluster instead of REDIS_URL: some of its nodes; the others are learned from them. */
    REDIS_CLUSTER_NODES: hostPortList('cluster nodes', 'redis-0.redis:6379,redis-1.redis:6379').optional(),
    /** The password of the Redis servers found through Sentinel, or of the cluster's nodes. */
    REDIS_PASSWORD: z.string().min(1).optional(),
    /** TLS to the servers of REDIS_SENTINELS or REDIS_CLUSTER_NODES (REDIS_URL says it with rediss://). */
    REDIS_TLS: bool.default(false),
    ROUTES_FILE: z.string().trim().min(1).default('config/routes.yaml'),
    /** Reload the routes file when it changes on disk (SIGHUP reloads it either way). */
    ROUTES_WATCH: bool.default(true),
    JWT_SECRET: z
      .string({ error: 'is required: set it from your secret manager (at least 32 bytes)' })
      .refine((v) => Buffer.byteLength(v) >= 32, 'is too short: use at least 32 bytes from your secret manager'),
    JWT_EXPIRES_IN: int(1, 7200, 'seconds; HIPAA caps PHI access tokens at 7200').default(7200),
    JWT_KID: z.string().trim().min(1).max(128).optional(),
    JWT_PREVIOUS_SECRET: z
      .string()
      .refine((v) => Buffer.byteLength(v) >= 32, 'is too short: use at least 32 bytes from your secret manager')
      .optional(),
    JWT_PREVIOUS_KID: z.string().trim().min(1).max(128).optional(),
    JWT_PREVIOUS_SECRET_EXPIRES_AT: z
      .string()
      .trim()
      .refine((v) => Number.isFinite(Date.parse(v)), 'must be an ISO 8601 time such as 2026-12-01T00:00:00Z (end of the rotation overlap)')
      .transform((v) => Date.parse(v))
      .optional(),
    JWT_ISSUER: z.string().trim().min(1).optional(),
    JWT_AUDIENCE: z.string().trim().min(1).optional(),
    JWT_CLOCK_SKEW_SECONDS: int(0, 300, 'seconds of clock difference tolerated on exp, nbf and iat').default(30),
    JWT_JWKS_URL: httpUrl('https://auth.example.com/.well-known/jwks.json').optional(),
    AUTH_REQUEST_TIMEOUT_MS: int(50, 30_000, 'milliseconds for a session check or a JWKS fetch').default(2_000),
    LOGIN_MAX_FAILURES_PER_ACCOUNT: int(1, 10_000, 'failed logins per account per LOGIN_FAILURE_WINDOW_SECONDS').default(5),
    LOGIN_MAX_FAILURES_PER_IP: int(1, 100_000, 'failed logins per client IP per LOGIN_FAILURE_WINDOW_SECONDS').default(20),
    LOGIN_FAILURE_WINDOW_SECONDS: int(1, 86_400, 'seconds over which failed logins are counted').default(900),
    RATE_LIMIT_PER_MINUTE: int(1, 1_000_000, 'requests per minute per user').default(100),
    RATE_LIMIT_PER_ADDRESS_PER_MINUTE: int(1, 1_000_000, 'anonymous requests per minute per client address, on public routes without their own rateLimit').default(1_000),
    AUTH_FAILURES_PER_ADDRESS_PER_MINUTE: int(1, 1_000_000, 'failed authentications per minute per client address before its failing requests get 429').default(60),
    CORS_ALLOWED_ORIGINS: origins.default(['*']),
    /** Access-Control-Allow-Credentials (cookies, client certificates): never with `*`. */
    CORS_ALLOW_CREDENTIALS: bool.default(false),
    CORS_MAX_AGE_SECONDS: int(0, 86_400, 'seconds a browser may cache a preflight answer').default(600),
    LOG_LEVEL: z
      .string()
      .trim()
      .toUpperCase()
      .refine((v) => v in LOG_LEVELS, 'must be one of DEBUG, INFO, WARN, ERROR, SILENT')
      .transform((v) => LOG_LEVELS[v as keyof typeof LOG_LEVELS])
      .default('info'),
    ENABLE_METRICS: bool.default(true),
    TLS_CERT_FILE: z.string().trim().min(1).optional(),
    TLS_KEY_FILE: z.string().trim().min(1).optional(),
    /** TLS ends at a load balancer in front of the gateway: production may then run without a certificate. */
    TLS_TERMINATED_BY_PROXY: bool.default(false),
    /** With TLS: HTTP/2 by ALPN, HTTP/1.1 for clients that do not offer it. */
    HTTP2_ENABLED: bool.default(true),
    HSTS_MAX_AGE_SECONDS: int(0, 63_072_000, 'seconds of Strict-Transport-Security on TLS answers; 0 sends none').default(31_536_000),
    /** PEM bundle of the CAs that sign upstream instances' certificates (https:// instances). */
    UPSTREAM_CA_FILE: z.string().trim().min(1).optional(),
    TRUSTED_PROXIES: cidrs.default([]),
    MAX_BODY_BYTES: int(0, 2 ** 40, 'bytes; per-route maxBodyBytes overrides it').default(10 * 1024 * 1024),
    MAX_HEADER_BYTES: int(1024, 1024 * 1024, 'bytes for the request line and all headers').default(16 * 1024),
    CLIENT_HEADERS_TIMEOUT_MS: int(100, 600_000, 'milliseconds a client has to send its headers').default(10_000),
    CLIENT_REQUEST_TIMEOUT_MS: int(0, 3_600_000, 'milliseconds a client has to send its whole request, 0 = none').default(300_000),
    CLIENT_BODY_TIMEOUT_MS: int(100, 600_000, 'milliseconds a body the gateway reads may take, and an upload may pause; per-route bodyTimeoutMs overrides it').default(30_000),
    KEEP_ALIVE_TIMEOUT_MS: int(100, 600_000, 'milliseconds an idle client connection stays open').default(65_000),
    /** The admin listener (diagnostics: /debug/vars, heap snapshots), on 127.0.0.1 only; 0 = none. */
    ADMIN_PORT: int(0, 65535, 'the loopback port of the admin listener (diagnostics); 0 turns it off').default(0),
    /** Audit events of authenticated routes, spooled on disk and delivered to AUDIT_SERVICE_URL. */
    AUDIT_ENABLED: bool.default(true),
    AUDIT_SPOOL_DIR: z.string().trim().min(1).default('var/audit-spool'),
    AUDIT_SPOOL_MAX_MB: int(1, 1_048_576, 'MiB of undelivered audit events kept on disk; past it PHI routes answer 503').default(1024),
    AUDIT_REQUEST_TIMEOUT_MS: int(100, 60_000, 'milliseconds a delivery to the audit service may take').default(5_000),
    /** Worker processes on one host (outside Kubernetes): a number, or `auto` for one per available core. */
    WORKERS: z
      .string()
      .trim()
      .toLowerCase()
      .refine((v) => v === 'auto' || (/^\d+$/.test(v) && Number(v) >= 1 && Number(v) <= 256), 'must be a number of worker processes from 1 to 256, or auto (one per core)')
      .transform((v) => (v === 'auto' ? Math.max(1, availableParallelism()) : Number(v)))
      .default(1),
    SHUTDOWN_TIMEOUT_MS: int(0, 600_000, 'milliseconds in-flight requests get to finish on SIGTERM').default(25_000),
    LOG_SLOW_REQUEST_MS: int(1, 600_000, 'milliseconds above which a request is logged at WARN').default(500),
    HEALTH_CACHE_MS: int(0, 60_000, 'milliseconds a health result is reused').default(2_000),
    HEALTH_EVENT_LOOP_THRESHOLD_MS: int(1, 60_000, 'event-loop delay p99 above which the gateway reports degraded').default(100),
    LOAD_SHED_EVENT_LOOP_DELAY_MS: int(0, 60_000, 'event-loop delay above which requests to services holding a quarter of their maxConcurrentRequests are refused at the door; 0 = off').default(100),
    MEMORY_LIMIT_MB: int(0, 1_048_576, 'MiB; 0 = the container limit, else the V8 heap limit').default(0),
  })
  .superRefine((env, ctx) => {
    if (env.JWT_PREVIOUS_SECRET !== undefined && env.JWT_PREVIOUS_SECRET_EXPIRES_AT === undefined) {
      ctx.addIssue({
        code: 'custom',
        path: ['JWT_PREVIOUS_SECRET_EXPIRES_AT'],
        message: 'is required with JWT_PREVIOUS_SECRET: the end of the rotation overlap, such as 2026-12-01T00:00:00Z',
      });
    }
    if (env.CORS_ALLOW_CREDENTIALS && env.CORS_ALLOWED_ORIGINS.includes('*')) {
      ctx.addIssue({
        code: 'custom',
        path: ['CORS_ALLOW_CREDENTIALS'],
        message: 'cannot be true while CORS_ALLOWED_ORIGINS is *: list the origins that may send credentials',
      });
    }
    if (Boolean(env.TLS_CERT_FILE) !== Boolean(env.TLS_KEY_FILE)) {
      ctx.addIssue({
        code: 'custom',
        path: [env.TLS_CERT_FILE ? 'TLS_KEY_FILE' : 'TLS_CERT_FILE'],
        message: 'must be set together with the other TLS file (TLS_CERT_FILE and TLS_KEY_FILE)',
      });
    }
  });

export type Env = z.output<typeof envSchema>;

/** Variables that hold secrets: their values never appear in an error message. */
const SECRET_VARS = new Set(['JWT_SECRET', 'JWT_PREVIOUS_SECRET', 'REDIS_URL', 'REDIS_PASSWORD']);

export function parseEnv(source: NodeJS.ProcessEnv): { env: Env } | { errors: string[] } {
  const input: Record<string, string> = {};
  for (const key of Object.keys(envSchema.shape)) {
    const value = source[key];
    if (value !== undefined && value !== '') input[key] = value;
  }
  const result = envSchema.safeParse(input);
  if (result.success) return { env: result.data };
  return {
    errors: result.error.issues.map((issue) => {
      const name = String(issue.path[0] ?? 'environment');
      const shown = SECRET_VARS.has(name) || input[name] === undefined ? '' : ` (got "${input[name]}")`;
      return `${name}: ${issue.message}${shown}`;
    }),
  };
}

export function trustedProxyList(cidrList: readonly string[]): BlockList {
  const list = new BlockList();
  for (const entry of cidrList) {
    const [ip, bits] = entry.split('/') as [string, string | undefined];
    const type = isIP(ip) === 6 ? 'ipv6' : 'ipv4';
    if (bits === undefined) list.addAddress(ip, type);
    else list.addSubnet(ip, Number(bits), type);
  }
  return list;
}
