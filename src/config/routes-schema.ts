import { z } from 'zod';
import { PERMISSION_PATTERN } from '../auth/permissions.js';
import { ROLES } from '../auth/roles.js';
import { PLACEHOLDER, PLACEHOLDER_LIKE } from '../pipeline/route-transform.js';

export const HTTP_METHODS = ['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS'] as const;

/** Paths the gateway answers itself; a route may not take them over. */
export const RESERVED_PATHS = ['/health', '/health/live', '/health/ready', '/metrics'] as const;

const PARAM = /^:[A-Za-z_][A-Za-z0-9_]*$/;
const SEGMENT = /^[A-Za-z0-9\-._~!$&'()*+,;=@%]+$/;

const absolutePath = (what: string) =>
  z
    .string()
    .refine((p) => p.startsWith('/'), `${what} must start with /`)
    .refine(
      (p) => p === '/' || p.split('/').slice(1).every((s, i, all) => (s === '' ? i === all.length - 1 : SEGMENT.test(s) && s !== '.' && s !== '..')),
      `${what} must be a normalised path: no empty, "." or ".." segments and no spaces`,
    );

const patternPath = z
  .string()
  .refine((p) => p.startsWith('/'), 'pattern must start with /')
  .refine(
    (p) => p.split('/').slice(1).every((s) => PARAM.test(s) || (SEGMENT.test(s) && !s.includes(':'))),
    'pattern segments are literals or named parameters such as :patientId',
  );

const permission = z.string().regex(PERMISSION_PATTERN, 'permissions are lower-case words joined by ":" such as records:read');

const ms = (what: string) => z.number().int().min(1, `${what} must be at least 1 ms`).max(3_600_000, `${what} must be at most 3600000 ms`);

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
    connectTimeoutMs: ms('connectTimeoutMs').optional(),
    maxConnections: z.number().int().min(1).max(10_000).default(256),
    balancer: z.enum(['round-robin', 'least-request', 'consistent-hash'], { error: 'balancer is round-robin, least-request or consistent-hash' }).default('round-robin'),
    /** The affinity key of consistent-hash: the verified user id, or a request header. */
    hashOn: z.union([z.literal('user'), z.strictObject({ header: z.string().regex(/^[A-Za-z0-9-]+$/, 'header names are letters, digits and -') })]).optional(),
    healthCheck: z.union([z.literal(false), healthCheckSchema]).default(() => healthCheckSchema.parse({})),
    outlierDetection: z.union([z.literal(false), outlierSchema]).default(() => outlierSchema.parse({})),
    retry: z.union([z.literal(false), retrySchema]).default(() => retrySchema.parse({})),
    /** The circuit breaker: upstream requests in flight or queued, across the instances; past it, 503 at once. */
    maxConcurrentRequests: z.number().int().min(1).max(1_000_000).default(1024),
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

const corsOrigin = z.string().refine((o) => o === '*' || /^https?:\/\/[^/\s]+$/.test(o), 'origins are * or scheme and host such as https://app.healthcare.com (no path)');
const headerName = z.string().regex(/^[A-Za-z0-9-]+$/, 'header names are letters, digits and -');

/** A route's own CORS policy; each field left out comes from the CORS_* variables. `false`: no cross-origin use. */
const routeCorsSchema = z.union([
  z.literal(false),
  z
    .strictObject({
      origins: z.array(corsOrigin).min(1).optional(),
      credentials: z.boolean().optional(),
      maxAgeSeconds: z.number().int().min(0).max(86_400).optional(),
      allowHeaders: z.array(headerName).optional(),
      exposeHeaders: z.array(headerName).optional(),
    })
    .refine((c) => !(c.credentials === true && c.origins?.includes('*')), { message: 'credentials cannot be combined with the origin *', path: ['credentials'] }),
]);

/** Framing and hop fields: a transform that set them could desynchronise the gateway and the upstream. */
const FRAMING_HEADERS = new Set(['host', 'content-length', 'transfer-encoding', 'connection', 'upgrade', 'te', 'trailer', 'keep-alive', 'expect', 'proxy-connection', 'proxy-authorization', 'proxy-authenticate', 'http2-settings']);
/** Answers' fields the gateway's own policies own (CORS, HSTS): a transform may not weaken them. */
const POLICY_HEADER = /^(access-control-|strict-transport-security$)/i;
const transformHeaderName = headerName.refine((h) => !FRAMING_HEADERS.has(h.toLowerCase()), 'framing and hop-by-hop headers (Host, Content-Length, Transfer-Encoding, Connection...) cannot be transformed');
const templateValue = z.string().max(4096).superRefine((v, ctx) => {
  for (const m of v.matchAll(PLACEHOLDER_LIKE)) {
    if (!new RegExp(`^${PLACEHOLDER.source}$`).test(m[0])) {
      ctx.addIssue({ code: 'custom', message: `unknown placeholder ${m[0]}: use {user.id}, {user.role}, {user.phi_access_level}, {request.id}, {route.name}, {client.ip} or {param.name}` });
    }
  }
});
const headerOps = z.strictObject({
  set: z.record(transformHeaderName, templateValue).optional(),
  add: z.record(transformHeaderName, templateValue).optional(),
  remove: z.array(transformHeaderName).optional(),
});
const responseHeaderName = transformHeaderName.refine((h) => !POLICY_HEADER.test(h), 'Access-Control-* and Strict-Transport-Security are set by the gateway (CORS_*, HSTS_MAX_AGE_SECONDS, a route\'s cors)');
const responseHeaderOps = z.strictObject({
  set: z.record(responseHeaderName, templateValue).optional(),
  add: z.record(responseHeaderName, templateValue).optional(),
  remove: z.array(responseHeaderName).optional(),
});
const queryName = z.string().min(1).max(256);
const transformSchema = z.strictObject({
  request: z
    .strictObject({
      headers: headerOps.optional(),
      query: z.strictObject({ rename: z.record(queryName, queryName).optional(), remove: z.array(queryName).optional(), add: z.record(queryName, templateValue).optional() }).optional(),
    })
    .optional(),
  response: z.strictObject({ headers: responseHeaderOps.optional() }).optional(),
  mapErrors: z.boolean().optional(),
});

export const routeSchema = z
  .strictObject({
    name: z
      .string()
      .regex(/^[a-z0-9][a-z0-9-_.]*$/, 'name is lower-case letters, digits, - _ . (it labels metrics and logs)')
      // `ip` and `gateway` are taken by the rate-limit keys of anonymous clients and of the gateway itself.
      .refine((n) => n !== 'ip' && n !== 'gateway', 'the names "ip" and "gateway" are reserved'),
    path: absolutePath('path').optional(),
    prefix: absolutePath('prefix').optional(),
    pattern: patternPath.optional(),
    methods: z
      .array(z.string().transform((m) => m.toUpperCase()).pipe(z.enum(HTTP_METHODS, { error: `methods are ${HTTP_METHODS.join(', ')}` })))
      .min(1)
      .optional(),
    headers: z.record(z.string().regex(/^[A-Za-z0-9-]+$/, 'header names are letters, digits and -'), z.string()).optional(),
    /** Absent only for routes the gateway answers itself (action: revoke). */
    service: z.string().optional(),
    /**
     * What the gateway does besides proxying: login, refresh and logout validate the body first
     * (and logout revokes the tokens); revoke is the gateway's own revocation endpoint.
     */
    action: z.enum(['login', 'refresh', 'logout', 'revoke'], { error: 'action is login, refresh, logout or revoke' }).optional(),
    rewrite: z.string().optional(),
    auth: z.enum(['required', 'public'], { error: 'auth is "required" or "public"' }).default('required'),
    roles: z.array(z.enum(ROLES, { error: `roles are ${ROLES.join(', ')}` })).min(1).optional(),
    permission: permission.optional(),
    /** An admin may use this route without its role or permission, with a reason header, flagged for audit. */
    breakGlass: z.boolean().default(false),
    /** The token's subject must equal this path or query parameter, unless the role holds `unlessPermission`. */
    subject: z
      .strictObject({ param: z.string().optional(), query: z.string().min(1).optional(), unlessPermission: permission.optional() })
      .refine((s) => (s.param === undefined) !== (s.query === undefined), 'subject names exactly one of param (a path parameter) or query')
      .optional(),
    timeoutMs: ms('timeoutMs').optional(),
    connectTimeoutMs: ms('connectTimeoutMs').optional(),
    maxBodyBytes: z.number().int().min(0).max(2 ** 40).optional(),
    rateLimit: z
      .strictObject({
        perMinute: z.number().int().min(1).max(1_000_000),
        /** While the shared store is down: false = limit per process, true = answer 503. */
        failClosed: z.boolean().default(false),
      })
      .optional(),
    phi: z.boolean().default(false),
    cors: routeCorsSchema.optional(),
    /** Query parameters whose values the access log may show (none by default: values may be PHI). */
    logQuery: z.array(z.string().min(1).max(128)).max(20).optional(),
    /** Declared changes to the request and the answer (src/pipeline/route-transform.ts). */
    transform: transformSchema.optional(),
    preserveHost: z.boolean().default(false),
  })
  .superRefine((route, ctx) => {
    const kinds = (['path', 'prefix', 'pattern'] as const).filter((k) => route[k] !== undefined);
    if (kinds.length !== 1) {
      ctx.addIssue({
        code: 'custom',
        path: kinds.length ? [kinds[1]!] : ['path'],
        message: 'a route matches on exactly one of path (exact), prefix or pattern',
      });
      return;
    }
    const matchPath = route.path ?? route.prefix ?? route.pattern!;
    const reserved = RESERVED_PATHS.find((r) => matchPath === r || (route.prefix !== undefined && r.startsWith(route.prefix.replace(/\/$/, '') + '/')) || route.prefix === '/');
    if (reserved) {
      ctx.addIssue({ code: 'custom', path: [kinds[0]!], message: `would take over ${reserved}, which the gateway answers itself` });
    }
    if (route.rewrite !== undefined) {
      if (!route.rewrite.startsWith('/')) {
        ctx.addIssue({ code: 'custom', path: ['rewrite'], message: 'rewrite must start with /' });
      }
      if (route.pattern !== undefined) {
        const params = new Set(route.pattern.split('/').filter((s) => s.startsWith(':')));
        for (const used of route.rewrite.split('/').filter((s) => s.startsWith(':'))) {
          if (!params.has(used)) {
            ctx.addIssue({ code: 'custom', path: ['rewrite'], message: `uses ${used}, which the pattern does not capture` });
          }
        }
      }
    }
    if (route.auth === 'public') {
      for (const field of ['roles', 'permission', 'subject'] as const) {
        if (route[field] !== undefined) ctx.addIssue({ code: 'custom', path: [field], message: `a public route cannot require ${field}; set auth: required` });
      }
      if (route.action === 'logout' || route.action === 'revoke') {
        ctx.addIssue({ code: 'custom', path: ['auth'], message: `a ${route.action} route needs auth: required` });
      }
    }
    const queryOps = route.transform?.request?.query;
    const subjectQuery = route.subject?.query;
    if (queryOps !== undefined && subjectQuery !== undefined) {
      // The subject check reads the client's query; a transform that replaced that parameter's
      // value (a rename into it, a removal, an added value) would send the upstream a different
      // subject than the one checked. Renaming it away is fine: the checked value goes along.
      const touched = new Set([...Object.values(queryOps.rename ?? {}), ...(queryOps.remove ?? []), ...Object.keys(queryOps.add ?? {})]);
      if (touched.has(subjectQuery)) {
        ctx.addIssue({ code: 'custom', path: ['transform', 'request', 'query'], message: `replaces "${subjectQuery}" (a rename into it, a removal or an added value), the query parameter the subject check reads` });
      }
    }
    if (route.transform !== undefined) {
      const captured = new Set((route.pattern ?? '').split('/').filter((seg) => seg.startsWith(':')).map((seg) => seg.slice(1)));
      for (const used of JSON.stringify(route.transform).matchAll(/\{param\.([A-Za-z_][A-Za-z0-9_]*)\}/g)) {
        if (!captured.has(used[1]!)) ctx.addIssue({ code: 'custom', path: ['transform'], message: `uses {param.${used[1]}}, which the route's pattern does not capture` });
      }
    }
    if (route.subject?.param !== undefined && !(route.pattern ?? '').split('/').includes(`:${route.subject.param}`)) {
      ctx.addIssue({ code: 'custom', path: ['subject', 'param'], message: `the pattern captures no :${route.subject.param}` });
    }
    if ((route.action === 'revoke') !== (route.service === undefined)) {
      ctx.addIssue({
        code: 'custom',
        path: ['service'],
        message: route.action === 'revoke' ? 'a revoke route is answered by the gateway: remove service' : 'service is required (the service that answers this route)',
      });
    }
  });

export const routesFileSchema = z
  .strictObject({
    /** Replaces the default permissions of the roles it names (auth/permissions.ts). */
    permissions: z.partialRecord(z.enum(ROLES, { error: `roles are ${ROLES.join(', ')}` }), z.array(permission)).optional(),
    services: z.record(z.string().regex(/^[a-z0-9][a-z0-9-_.]*$/, 'service names are lower-case letters, digits, - _ .'), serviceSchema),
    routes: z.array(routeSchema).min(1, 'the file needs at least one route'),
  })
  .superRefine((file, ctx) => {
    const seen = new Map<string, number>();
    file.routes.forEach((route, i) => {
      if (route.service !== undefined && !(route.service in file.services)) {
        ctx.addIssue({ code: 'custom', path: ['routes', i, 'service'], message: `unknown service "${route.service}"` });
      }
      const first = seen.get(route.name);
      if (first !== undefined) {
        ctx.addIssue({ code: 'custom', path: ['routes', i, 'name'], message: `duplicate route name "${route.name}" (also routes[${first}])` });
      } else seen.set(route.name, i);
    });
  });

export type RoutesFile = z.output<typeof routesFileSchema>;
export type RouteConfig = z.output<typeof routeSchema>;
export type ServiceConfig = z.output<typeof serviceSchema>;
