import type { IncomingHttpHeaders } from 'node:http';
import { z } from 'zod';
import { PASS, stage, type Exchange, type RouteStage } from './exchange.js';
import { compileTransform, transformQuery, transformRulesSchema } from './route-transform.js';
import { mayPass } from './spoofable-headers.js';
import { clientResponseHeaders, upstreamRequestHeaders } from './upstream-headers.js';

/** The routes-file slice: how the request is rewritten for the upstream, and its answer for the client. */
export const transformSchema = {
  rewrite: z.string().optional(),
  /** Declared changes to the request and the answer (route-transform.ts). */
  transform: transformRulesSchema.optional(),
  /** Send the client's Host instead of the instance's. */
  preserveHost: z.boolean().default(false),
  /** Headers of the spoofable list (spoofable-headers.ts) this route's upstream needs from the client. */
  passHeaders: z
    .array(z.string().refine(mayPass, 'passHeaders names headers the gateway drops, such as X-Forwarded-Prefix (never X-Forwarded-For, -Proto, -Host, Forwarded, X-Request-ID or an identity header)'))
    .optional(),
};

type TransformRoute = z.output<z.ZodObject<typeof transformSchema>> & {
  readonly service?: string | undefined;
  readonly path?: string | undefined;
  readonly prefix?: string | undefined;
  readonly pattern?: string | undefined;
};

/** The upstream path for a matched path: the route's `rewrite`, with a pattern's parameters or a prefix's rest. */
function compileRewrite(route: TransformRoute): (path: string, params: Record<string, string> | null) => string {
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

/** A header list whose Content-Length is that of the body the gateway sends (auth flows re-serialise it). */
function withLength(headers: string[], length: number): string[] {
  const out: string[] = [];
  for (let i = 0; i < headers.length; i += 2) if (headers[i] !== 'content-length') out.push(headers[i]!, headers[i + 1]!);
  if (length > 0) out.push('content-length', String(length));
  return out;
}

/**
 * Stage: what the upstream receives and what the client gets back. The path is rewritten, the
 * query transformed, the client's headers stripped of hop-by-hop fields and of anything that
 * could impersonate a user or a proxy, then enriched with X-Forwarded-*, the request id and the
 * verified identity (upstream-headers.ts), and the route's own header rules applied. The
 * answer's header rules are handed to the forward stage. Every rule is compiled here, once.
 */
export const transform: RouteStage<TransformRoute, { readonly tls: boolean }> = {
  name: 'transform',
  create(route, { tls }) {
    if (route.service === undefined) return null;
    const rewrite = compileRewrite(route);
    const rules = compileTransform(route.transform);
    const queryOps = rules?.query ?? null;
    const requestOps = rules?.requestHeaders ?? null;
    const responseOps = rules?.responseHeaders ?? null;
    const mapErrors = rules?.mapErrors ?? false;
    const preserveHost = route.preserveHost;
    const pass = route.passHeaders === undefined ? null : new Set(route.passHeaders.map((h) => h.toLowerCase()));
    const responseHeaders = (headers: IncomingHttpHeaders, ex: Exchange) => clientResponseHeaders(headers, ex, responseOps);
    return stage('transform', (ex, req) => {
      const path = rewrite(ex.path, ex.params);
      const query = queryOps === null ? ex.query : transformQuery(ex.query, queryOps, ex);
      ex.upstreamTarget = query === '' ? path : `${path}?${query}`;
      const headers = upstreamRequestHeaders(ex, req.headers, tls, preserveHost, requestOps, pass);
      ex.upstreamHeaders = ex.body === null ? headers : withLength(headers, ex.body.length);
      ex.responseHeaders = responseHeaders;
      ex.mapErrors = mapErrors;
      return PASS;
    });
  },
};
