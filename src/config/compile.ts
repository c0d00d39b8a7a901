import { permissionMatrix, type PermissionMatrix } from '../auth/permissions.js';
import { compileCors, compileRouteCors, DEFAULT_ALLOW_HEADERS, DEFAULT_EXPOSE_HEADERS, type CorsSettings } from '../pipeline/cors-policy.js';
import type { Route, Stage } from '../pipeline/exchange.js';
import { rateLimitPolicy } from '../pipeline/rate-limit-policy.js';
import { compileMatch, Router, type Matchable, type RouteTable } from '../pipeline/route-match.js';
import type { ServiceConfig } from '../upstream/service-schema.js';
import type { UpstreamService } from '../upstream/service.js';
import type { Env } from './env.js';
import type { RouteConfig, RoutesFile } from './routes-schema.js';

/** A route as the router matches it and the runner runs it. */
export type CompiledRoute = Route & Matchable;

/** A route's config with the defaults that come from the environment filled in: what its stages are built from. */
export type ResolvedRoute = RouteConfig & { readonly maxBodyBytes: number; readonly bodyTimeoutMs: number };

/** What a chain is built against besides its route: this config's permissions and services. */
export interface CompileScope {
  readonly permissions: PermissionMatrix;
  readonly services: ReadonlyMap<string, UpstreamService>;
  readonly serviceConfigs: Readonly<Record<string, ServiceConfig>>;
}

/** Builds one route's chain (the composition root's list of stages, app.ts). */
export type ChainBuilder = (route: ResolvedRoute, scope: CompileScope) => readonly Stage[];

export interface CompiledConfig extends RouteTable {
  readonly router: Router<CompiledRoute>;
  readonly routes: readonly CompiledRoute[];
  readonly services: ReadonlyMap<string, UpstreamService>;
}

/**
 * Compiles a validated routes file against its services (live ones, or ones prepared for a
 * reload) into frozen routes, each with its chain of stages, and the router over them. Nothing
 * on the request path parses or re-validates config; a reload swaps the whole result at once.
 */
export function compileConfig(file: RoutesFile, env: Env, services: ReadonlyMap<string, UpstreamService>, chainFor: ChainBuilder = () => []): CompiledConfig {
  const corsDefaults: CorsSettings = {
    origins: env.CORS_ALLOWED_ORIGINS,
    credentials: env.CORS_ALLOW_CREDENTIALS,
    maxAgeSeconds: env.CORS_MAX_AGE_SECONDS,
    allowHeaders: DEFAULT_ALLOW_HEADERS,
    exposeHeaders: DEFAULT_EXPOSE_HEADERS,
  };
  const globalCors = compileCors(corsDefaults);
  const scope: CompileScope = { permissions: permissionMatrix(file.permissions), services, serviceConfigs: file.services };

  const routes = file.routes.map((config): CompiledRoute => {
    const resolved: ResolvedRoute = { ...config, maxBodyBytes: config.maxBodyBytes ?? env.MAX_BODY_BYTES, bodyTimeoutMs: config.bodyTimeoutMs ?? env.CLIENT_BODY_TIMEOUT_MS };
    const { template, ...match } = compileMatch(config);
    return Object.freeze({
      name: config.name,
      template,
      ...match,
      auth: config.auth,
      phi: config.phi,
      logQuery: config.logQuery && config.logQuery.length > 0 ? new Set(config.logQuery) : null,
      cors: compileRouteCors(corsDefaults, globalCors, config.cors),
      rateLimit: rateLimitPolicy(config.name, config.rateLimit, config.auth === 'public' ? env.RATE_LIMIT_PER_ADDRESS_PER_MINUTE : env.RATE_LIMIT_PER_MINUTE),
      chain: Object.freeze([...chainFor(resolved, scope)]),
    });
  });

  return Object.freeze({ router: new Router(routes), routes: Object.freeze(routes), services, cors: globalCors });
}
