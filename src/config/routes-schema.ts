import { z } from 'zod';
import { ROLES } from '../auth/roles.js';
import { auditGateSchema } from '../pipeline/audit-gate.js';
import { authFlowSchema } from '../pipeline/auth-flow.js';
import { authenticateSchema } from '../pipeline/authenticate.js';
import { authorizeSchema, permissionSchema } from '../pipeline/authorize.js';
import { contentTypeSchema } from '../pipeline/content-type.js';
import { corsSchema } from '../pipeline/cors-policy.js';
import { forwardSchema } from '../pipeline/forward.js';
import { RESERVED_PATHS } from '../pipeline/own-endpoints.js';
import { rateLimitSchema } from '../pipeline/rate-limit-policy.js';
import { routeMatchSchema } from '../pipeline/route-match.js';
import { transformSchema } from '../pipeline/transform.js';
import { websocketSchema } from '../pipeline/websocket.js';
import { NAME } from '../schema-fields.js';
import { serviceSchema } from '../upstream/service-schema.js';

/**
 * The routes file's schema, assembled from the slices its stages own (each stage file exports
 * the fields it reads, with their defaults), plus the rules that span several of them. Every
 * config type is inferred from here; nothing is declared twice.
 */

const routeFields = z.strictObject({
  name: z
    .string()
    .regex(NAME, 'name is lower-case letters, digits, - _ . (it labels metrics and logs)')
    // `ip` and `gateway` are taken by the rate-limit keys of anonymous clients and of the gateway itself.
    .refine((n) => n !== 'ip' && n !== 'gateway', 'the names "ip" and "gateway" are reserved'),
  ...routeMatchSchema,
  service: forwardSchema.service,
  ...authFlowSchema,
  rewrite: transformSchema.rewrite,
  ...authenticateSchema,
  ...authorizeSchema,
  timeoutMs: forwardSchema.timeoutMs,
  connectTimeoutMs: forwardSchema.connectTimeoutMs,
  maxBodyBytes: forwardSchema.maxBodyBytes,
  bodyTimeoutMs: forwardSchema.bodyTimeoutMs,
  streamIdleTimeoutMs: forwardSchema.streamIdleTimeoutMs,
  ...websocketSchema,
  ...rateLimitSchema,
  ...contentTypeSchema,
  ...auditGateSchema,
  ...corsSchema,
  /** Query parameters whose values the access log may show (none by default: values may be PHI). */
  logQuery: z.array(z.string().min(1).max(128)).max(20).optional(),
  transform: transformSchema.transform,
  preserveHost: transformSchema.preserveHost,
  passHeaders: transformSchema.passHeaders,
});

export const routeSchema = routeFields.superRefine((route, ctx) => {
  if (!matchRule(route, ctx)) return;
  rewriteRule(route, ctx);
  publicRouteRule(route, ctx);
  subjectRules(route, ctx);
  if ((route.action === 'revoke') !== (route.service === undefined)) {
    ctx.addIssue({
      code: 'custom',
      path: ['service'],
      message: route.action === 'revoke' ? 'a revoke route is answered by the gateway: remove service' : 'service is required (the service that answers this route)',
    });
  }
  if (route.websocket !== undefined && route.websocket !== false && route.action !== undefined) {
    ctx.addIssue({ code: 'custom', path: ['websocket'], message: `a ${route.action} route reads a request body; it cannot carry WebSockets` });
  }
});

type Draft = z.output<typeof routeFields>;
type Issues = z.RefinementCtx;

/** Exactly one of path, prefix and pattern, and none that takes over an own endpoint. */
function matchRule(route: Draft, ctx: Issues): boolean {
  const kinds = (['path', 'prefix', 'pattern'] as const).filter((k) => route[k] !== undefined);
  if (kinds.length !== 1) {
    ctx.addIssue({ code: 'custom', path: kinds.length ? [kinds[1]!] : ['path'], message: 'a route matches on exactly one of path (exact), prefix or pattern' });
    return false;
  }
  const matchPath = route.path ?? route.prefix ?? route.pattern!;
  const reserved = RESERVED_PATHS.find((r) => matchPath === r || (route.prefix !== undefined && r.startsWith(route.prefix.replace(/\/$/, '') + '/')) || route.prefix === '/');
  if (reserved) ctx.addIssue({ code: 'custom', path: [kinds[0]!], message: `would take over ${reserved}, which the gateway answers itself` });
  return true;
}

/** A rewrite is an absolute path, using only parameters the pattern captures. */
function rewriteRule(route: Draft, ctx: Issues): void {
  if (route.rewrite === undefined) return;
  if (!route.rewrite.startsWith('/')) ctx.addIssue({ code: 'custom', path: ['rewrite'], message: 'rewrite must start with /' });
  if (route.pattern === undefined) return;
  const params = new Set(route.pattern.split('/').filter((s) => s.startsWith(':')));
  for (const used of route.rewrite.split('/').filter((s) => s.startsWith(':'))) {
    if (!params.has(used)) ctx.addIssue({ code: 'custom', path: ['rewrite'], message: `uses ${used}, which the pattern does not capture` });
  }
}

/** A public route requires nothing of a caller it does not know. */
function publicRouteRule(route: Draft, ctx: Issues): void {
  if (route.auth !== 'public') return;
  for (const field of ['roles', 'permission', 'subject'] as const) {
    if (route[field] !== undefined) ctx.addIssue({ code: 'custom', path: [field], message: `a public route cannot require ${field}; set auth: required` });
  }
  if (route.action === 'logout' || route.action === 'revoke') ctx.addIssue({ code: 'custom', path: ['auth'], message: `a ${route.action} route needs auth: required` });
  if (route.audit === 'write-ahead') ctx.addIssue({ code: 'custom', path: ['audit'], message: 'a public route is not audited; write-ahead audit needs auth: required' });
}

/** Parameters that a subject check or a transform reads must exist, and a transform may not replace the checked one. */
function subjectRules(route: Draft, ctx: Issues): void {
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
}

export const routesFileSchema = z
  .strictObject({
    /** Replaces the default permissions of the roles it names (auth/permissions.ts). */
    permissions: z.partialRecord(z.enum(ROLES, { error: `roles are ${ROLES.join(', ')}` }), z.array(permissionSchema)).optional(),
    services: z.record(z.string().regex(NAME, 'service names are lower-case letters, digits, - _ .'), serviceSchema),
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
export type { ServiceConfig } from '../upstream/service-schema.js';
