import type { IncomingHttpHeaders } from 'node:http';
import { z } from 'zod';
import { ConfigError } from '../errors.js';

/** Request headers a browser may send cross-origin unless a route says otherwise. */
export const DEFAULT_ALLOW_HEADERS = ['authorization', 'content-type', 'x-request-id', 'x-break-glass-reason'];
/** Response headers a page's script may read: the request id and the rate-limit state. */
export const DEFAULT_EXPOSE_HEADERS = ['x-request-id', 'ratelimit', 'ratelimit-policy', 'retry-after', 'www-authenticate'];

const corsOrigin = z.string().refine((o) => o === '*' || /^https?:\/\/[^/\s]+$/.test(o), 'origins are * or scheme and host such as https://app.healthcare.com (no path)');
const headerName = z.string().regex(/^[A-Za-z0-9-]+$/, 'header names are letters, digits and -');

/** The routes-file slice: a route's own CORS policy; each field left out comes from the CORS_* variables. `false`: no cross-origin use. */
export const corsSchema = {
  cors: z
    .union([
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
    ])
    .optional(),
};

type RouteCors = z.output<(typeof corsSchema)['cors']>;

export interface CorsSettings {
  /** Exact origins (`https://app.healthcare.com`), or `*` for any. */
  origins: readonly string[];
  credentials: boolean;
  maxAgeSeconds: number;
  allowHeaders: readonly string[];
  exposeHeaders: readonly string[];
}

/** A route's CORS policy, compiled once: the hot path does set lookups and pushes made strings. */
export interface CorsPolicy {
  readonly anyOrigin: boolean;
  readonly origins: ReadonlySet<string>;
  readonly credentials: boolean;
  readonly maxAge: string;
  readonly allowHeaders: ReadonlySet<string>;
  readonly exposeHeaders: string;
  /** Answers depend on Origin (a list, or credentials echoing it): caches must keep them apart. */
  readonly varyOrigin: boolean;
}

export function compileCors(settings: CorsSettings): CorsPolicy {
  const anyOrigin = settings.origins.includes('*');
  return Object.freeze({
    anyOrigin,
    origins: new Set(settings.origins.filter((o) => o !== '*').map((o) => o.toLowerCase())),
    credentials: settings.credentials,
    maxAge: String(settings.maxAgeSeconds),
    allowHeaders: new Set(settings.allowHeaders.map((h) => h.toLowerCase())),
    exposeHeaders: settings.exposeHeaders.map((h) => h.toLowerCase()).join(', '),
    varyOrigin: !anyOrigin || settings.credentials,
  });
}

/** A route's policy: its own fields over the CORS_* defaults; null for `cors: false`. */
export function compileRouteCors(defaults: CorsSettings, fallback: CorsPolicy, own: RouteCors): CorsPolicy | null {
  if (own === false) return null;
  if (own === undefined) return fallback;
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

/** Whether a page of this origin may use the route (a WebSocket checks it itself: browsers apply no CORS to one). */
export function originAllowed(policy: CorsPolicy | null, origin: string): boolean {
  return policy !== null && allowed(policy, origin);
}

function allowed(policy: CorsPolicy, origin: string): boolean {
  // `null` is the origin of sandboxed frames and local files: never trusted, even with `*`.
  if (origin === 'null') return false;
  return policy.anyOrigin || policy.origins.has(origin.toLowerCase());
}

/** `*` only when the answer is the same for every origin; credentials always need the origin echoed. */
function allowOriginValue(policy: CorsPolicy, origin: string): string {
  return policy.anyOrigin && !policy.credentials ? '*' : origin;
}

/**
 * The fields an actual (non-preflight) request's answers carry, added to `base` (HSTS): for an
 * allowed origin the CORS grant, on the gateway's own errors as on proxied answers; and Vary:
 * Origin whenever the answer depends on the origin. A disallowed origin gets no grant: the
 * browser then keeps the answer from the page.
 */
export function corsHeaders(policy: CorsPolicy, origin: string | undefined, base: readonly string[] | null): readonly string[] | null {
  // The common case of a list policy, a request without Origin: one shared answer, no copy.
  if (origin === undefined && base === null) return policy.varyOrigin ? VARY_ORIGIN : null;
  const out = base === null ? [] : [...base];
  if (policy.varyOrigin) out.push('vary', 'Origin');
  if (origin !== undefined && allowed(policy, origin)) {
    out.push('access-control-allow-origin', allowOriginValue(policy, origin));
    if (policy.credentials) out.push('access-control-allow-credentials', 'true');
    if (policy.exposeHeaders !== '') out.push('access-control-expose-headers', policy.exposeHeaders);
  }
  return out.length === 0 ? base : out;
}

const VARY_ORIGIN: readonly string[] = Object.freeze(['vary', 'Origin']);

export type PreflightVerdict = { ok: true; headers: Record<string, string> } | { ok: false; detail: string };

export const PREFLIGHT_VARY = 'Origin, Access-Control-Request-Method, Access-Control-Request-Headers';

/** The answer to a preflight (OPTIONS with Origin and Access-Control-Request-Method) for a route. */
export function preflight(policy: CorsPolicy | null, origin: string, method: string, headers: IncomingHttpHeaders): PreflightVerdict {
  if (policy === null) return { ok: false, detail: 'this route does not accept cross-origin requests' };
  if (!allowed(policy, origin)) return { ok: false, detail: 'this origin may not call this route' };
  const requested = headers['access-control-request-headers'];
  let allowHeaders = '';
  if (requested !== undefined && requested.trim() !== '') {
    const names = requested.split(',').map((h) => h.trim().toLowerCase()).filter(Boolean);
    const refused = names.find((h) => !policy.allowHeaders.has(h));
    if (refused !== undefined) return { ok: false, detail: `the header ${refused.slice(0, 64)} may not be sent cross-origin on this route` };
    allowHeaders = names.join(', ');
  }
  const out: Record<string, string> = {
    'access-control-allow-origin': allowOriginValue(policy, origin),
    'access-control-allow-methods': method,
    'access-control-max-age': policy.maxAge,
    vary: PREFLIGHT_VARY,
  };
  if (allowHeaders !== '') out['access-control-allow-headers'] = allowHeaders;
  if (policy.credentials) out['access-control-allow-credentials'] = 'true';
  return { ok: true, headers: out };
}
