import { permissionMatrix, type PermissionMatrix } from '../auth/permissions.js';
import type { Role } from '../auth/roles.js';
import type { Env } from './env.js';
import { ConfigError } from './load.js';
import type { RouteConfig, RoutesFile } from './routes-schema.js';
import { Router } from '../pipeline/route-match.js';
import { compileTransform, type RouteTransform } from '../pipeline/route-transform.js';
import { compileCors, DEFAULT_ALLOW_HEADERS, DEFAULT_EXPOSE_HEADERS, type CorsPolicy, type CorsSettings } from '../pipeline/cors.js';
import type { PoolSettings } from '../upstream/instance.js';
import { poolSettings, type UpstreamService } from '../upstream/service.js';

const DEFAULT_TIMEOUT_MS = 15_000;
const DEFAULT_CONNECT_TIMEOUT_MS = 2_000;
const MIN_BODY_IDLE_MS = 30_000;

export interface RouteRateLimit {
  readonly perMinute: number;
  /** The route has its own limit, counted in its own key, rather than the user's default budget. */
  readonly ownKey: boolean;
  readonly failClosed: boolean;
  readonly policyName: string;
  /** `RateLimit-Policy` value, made once. */
  readonly policyHeader: string;
}

export interface CompiledRoute {
  readonly name: string;
  /** The route as declared (`/api/v1/patients/:id`, `/api/v1/files/*`): the metrics and log label. */
  readonly template: string;
  readonly match: { readonly kind: 'exact' | 'prefix' | 'pattern'; readonly path: string };
  readonly methods: ReadonlySet<string> | null;
  readonly headers: ReadonlyArray<readonly [string, string]> | null;
  /** Null only on a route the gateway answers itself (action: revoke). */
  readonly service: UpstreamService | null;
  /** The connect timeout and pool size of this route's connections to the service's instances. */
  readonly pool: PoolSettings;
  readonly rewrite: (path: string, params: Record<string, string> | null) => string;
  readonly auth: 'required' | 'public';
  readonly roles: ReadonlySet<Role> | null;
  readonly permission: string | null;
  readonly breakGlass: boolean;
  readonly subject: { readonly param: string | null; readonly query: string | null; readonly unlessPermission: string | null } | null;
  readonly action: 'login' | 'refresh' | 'logout' | 'revoke' | null;
  readonly timeoutMs: number;
  readonly bodyIdleTimeoutMs: number;
  readonly maxBodyBytes: number;
  readonly rateLimit: RouteRateLimit;
  readonly phi: boolean;
  readonly preserveHost: boolean;
  readonly transform: RouteTransform | null;
  /** Query parameters the access log may show; null: none. */
  readonly logQuery: ReadonlySet<string> | null;
  /** Null: the route takes no cross-origin requests (`cors: false`). */
  readonly cors: CorsPolicy | null;
}

export interface CompiledConfig {
  readonly router: Router;
  readonly permissions: PermissionMatrix;
  readonly routes: readonly CompiledRoute[];
  readonly services: ReadonlyMap<string, UpstreamService>;
  /** The CORS_* policy, for answers to paths no route matches. */
  readonly cors: CorsPolicy;
}

function compileRewrite(route: RouteConfig): CompiledRoute['rewrite'] {
  const target = route.rewrite;
  if (target === undefined) return (path) => path;
  if (route.path !== undefined) return () => target;
  if (route.pattern !== undefined) {
    // Each segment is literal text or the name of a captured parameter.
    const parts = target.split('/').map((seg): [isParam: boolean, value: string] => (seg.startsWith(':') ? [true, seg.slice(1)] : [false, seg]));
    return (_path, params) => parts.map(([isParam, value]) => (isParam ? params![value]! : value)).join('/');
  }
  const prefix = route.prefix!;
  const base = target.endsWith('/') ? target.slice(0, -1) : target;
  return (path) => {
    const rest = path.slice(prefix.length);
    if (rest === '') return target;
    return rest.startsWith('/') ? base + rest : `${base}/${rest}`;
  };
}

function compileRateLimit(route: RouteConfig, env: Env): RouteRateLimit {
  const own = route.rateLimit !== undefined;
  const perMinute = route.rateLimit?.perMinute ?? env.RATE_LIMIT_PER_MINUTE;
  const policyName = own ? route.name : 'default';
  return Object.freeze({
    perMinute,
    ownKey: own,
    failClosed: route.rateLimit?.failClosed ?? false,
    policyName,
    policyHeader: `"${policyName}";q=${perMinute};w=60`,
  });
}

/** Compiles a validated routes file against its services (live ones, or ones prepared for a reload). */
export function compileConfig(file: RoutesFile, env: Env, services: ReadonlyMap<string, UpstreamService>): CompiledConfig {
  const corsDefaults: CorsSettings = {
    origins: env.CORS_ALLOWED_ORIGINS,
    credentials: env.CORS_ALLOW_CREDENTIALS,
    maxAgeSeconds: env.CORS_MAX_AGE_SECONDS,
    allowHeaders: DEFAULT_ALLOW_HEADERS,
    exposeHeaders: DEFAULT_EXPOSE_HEADERS,
  };
  const globalCors = compileCors(corsDefaults);

  const routes = file.routes.map((route): CompiledRoute => {
    const svcConfig = route.service !== undefined ? file.services[route.service]! : null;
    const service = route.service !== undefined ? services.get(route.service)! : null;
    const connectTimeoutMs = route.connectTimeoutMs ?? svcConfig?.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS;
    const timeoutMs = route.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    const kind = route.path !== undefined ? 'exact' : route.pattern !== undefined ? 'pattern' : 'prefix';
    const matchPath = route.path ?? route.pattern ?? route.prefix!;
    let methods: Set<string> | null = null;
    if (route.methods) {
      methods = new Set(route.methods);
      // HEAD is GET without the body; a route that serves GET serves HEAD.
      if (methods.has('GET')) methods.add('HEAD');
    }
    return Object.freeze({
      name: route.name,
      template: kind === 'prefix' ? `${matchPath.replace(/\/$/, '')}/*` : matchPath,
      match: Object.freeze({ kind, path: matchPath }),
      methods,
      headers: route.headers ? Object.entries(route.headers).map(([k, v]) => [k.toLowerCase(), v] as const) : null,
      service,
      pool: poolSettings(connectTimeoutMs, svcConfig?.maxConnections ?? 1),
      rewrite: compileRewrite(route),
      auth: route.auth,
      roles: route.roles ? new Set(route.roles) : null,
      permission: route.permission ?? null,
      breakGlass: route.breakGlass,
      subject: route.subject ? Object.freeze({ param: route.subject.param ?? null, query: route.subject.query ?? null, unlessPermission: route.subject.unlessPermission ?? null }) : null,
      action: route.action ?? null,
      timeoutMs,
      bodyIdleTimeoutMs: Math.max(timeoutMs, MIN_BODY_IDLE_MS),
      maxBodyBytes: route.maxBodyBytes ?? env.MAX_BODY_BYTES,
      rateLimit: compileRateLimit(route, env),
      phi: route.phi,
      preserveHost: route.preserveHost,
      transform: compileTransform(route.transform),
      logQuery: route.logQuery && route.logQuery.length > 0 ? new Set(route.logQuery) : null,
      cors: route.cors === false ? null : route.cors === undefined ? globalCors : compileRouteCors(corsDefaults, route.cors),
    });
  });

  return Object.freeze({ router: new Router(routes), permissions: permissionMatrix(file.permissions), routes: Object.freeze(routes), services, cors: globalCors });
}

function compileRouteCors(defaults: CorsSettings, own: Exclude<RouteConfig['cors'], false | undefined>): CorsPolicy {
  const settings: CorsSettings = {
    origins: own.origins ?? defaults.origins,
    credentials: own.credentials ?? defaults.credentials,
    maxAgeSeconds: own.maxAgeSeconds ?? defaults.maxAgeSeconds,
    allowHeaders: own.allowHeaders ?? defaults.allowHeaders,
    exposeHeaders: own.exposeHeaders ?? defaults.exposeHeaders,
  };
  if (settings.credentials && settings.origins.includes('*')) {
    throw new ConfigError([`routes: a route's cors sets credentials while its origins are * (from CORS_ALLOWED_ORIGINS): list the origins`]);
  }
  return compileCors(settings);
}
