import type { IncomingHttpHeaders } from 'node:http';
import { z } from 'zod';
import { absolutePath, patternPath } from '../schema-fields.js';
import type { CorsPolicy } from './cors-policy.js';
import { PASS, stage, type Refusal, type Route, type Stage } from './exchange.js';

export const HTTP_METHODS = ['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS'] as const;

/** The routes-file slice: what a request must look like to take a route. */
export const routeMatchSchema = {
  path: absolutePath('path').optional(),
  prefix: absolutePath('prefix').optional(),
  pattern: patternPath.optional(),
  methods: z
    .array(z.string().transform((m) => m.toUpperCase()).pipe(z.enum(HTTP_METHODS, { error: `methods are ${HTTP_METHODS.join(', ')}` })))
    .min(1)
    .optional(),
  headers: z.record(z.string().regex(/^[A-Za-z0-9-]+$/, 'header names are letters, digits and -'), z.string()).optional(),
};

/** What the router needs of a route. */
export interface Matchable {
  readonly name: string;
  readonly match: { readonly kind: 'exact' | 'prefix' | 'pattern'; readonly path: string };
  readonly methods: ReadonlySet<string> | null;
  readonly headers: ReadonlyArray<readonly [string, string]> | null;
}

/** A route's match conditions, compiled once: GET implies HEAD, header names lower-cased. */
export function compileMatch(route: z.output<z.ZodObject<typeof routeMatchSchema>>): Omit<Matchable, 'name'> & { template: string } {
  const kind = route.path !== undefined ? 'exact' : route.pattern !== undefined ? 'pattern' : 'prefix';
  const path = route.path ?? route.pattern ?? route.prefix!;
  let methods: Set<string> | null = null;
  if (route.methods) {
    methods = new Set(route.methods);
    // HEAD is GET without the body; a route that serves GET serves HEAD.
    if (methods.has('GET')) methods.add('HEAD');
  }
  return {
    match: Object.freeze({ kind, path }),
    methods,
    headers: route.headers ? Object.entries(route.headers).map(([k, v]) => [k.toLowerCase(), v] as const) : null,
    template: kind === 'prefix' ? `${path.replace(/\/$/, '')}/*` : path,
  };
}

export type RouteMatch<R extends Matchable = Matchable> =
  | { kind: 'found'; route: R; params: Record<string, string> | null }
  | { kind: 'method-not-allowed'; allow: string }
  | { kind: 'not-found' };

const NOT_FOUND = Object.freeze({ kind: 'not-found' as const });

interface PatternEntry<R> {
  route: R;
  regex: RegExp;
  names: readonly string[];
}

/**
 * Finds the route for a canonical path: exact paths first, then patterns in file order, then
 * the longest prefix. Everything is compiled when the config loads; a lookup is a map hit or a
 * short scan, with no allocation on the common path.
 */
export class Router<R extends Matchable = Matchable> {
  private readonly exact = new Map<string, R[]>();
  private readonly patterns: Array<PatternEntry<R>> = [];
  private readonly prefixes: R[] = [];

  constructor(routes: readonly R[]) {
    for (const route of routes) {
      if (route.match.kind === 'exact') {
        const list = this.exact.get(route.match.path) ?? [];
        list.push(route);
        this.exact.set(route.match.path, list);
      } else if (route.match.kind === 'pattern') {
        this.patterns.push({ route, ...compilePattern(route.match.path) });
      } else {
        this.prefixes.push(route);
      }
    }
    this.prefixes.sort((a, b) => b.match.path.length - a.match.path.length);
  }

  /**
   * `announced`: for a preflight, which carries no header values, the header names the real
   * request will send (Access-Control-Request-Headers); a route's header condition is then met
   * when its header is announced.
   */
  match(method: string, path: string, headers: IncomingHttpHeaders, announced: ReadonlySet<string> | null = null): RouteMatch<R> {
    let allow: Set<string> | null = null;

    const exact = this.exact.get(path);
    if (exact !== undefined) {
      for (const route of exact) {
        if (!headersMatch(route, headers, announced)) continue;
        if (route.methods === null || route.methods.has(method)) return { kind: 'found', route, params: null };
        allow = addAllowed(allow, route);
      }
    }

    for (const entry of this.patterns) {
      const m = entry.regex.exec(path);
      if (m === null || !headersMatch(entry.route, headers, announced)) continue;
      if (entry.route.methods === null || entry.route.methods.has(method)) {
        const params: Record<string, string> = {};
        for (let i = 0; i < entry.names.length; i++) params[entry.names[i]!] = m[i + 1]!;
        return { kind: 'found', route: entry.route, params };
      }
      allow = addAllowed(allow, entry.route);
    }

    for (const route of this.prefixes) {
      if (!prefixMatches(route.match.path, path) || !headersMatch(route, headers, announced)) continue;
      if (route.methods === null || route.methods.has(method)) return { kind: 'found', route, params: null };
      allow = addAllowed(allow, route);
    }

    return allow === null ? NOT_FOUND : { kind: 'method-not-allowed', allow: [...allow].sort().join(', ') };
  }
}

/** A prefix matches whole segments only: `/api/chat` matches `/api/chat/x`, not `/api/chatty`. */
export function prefixMatches(prefix: string, path: string): boolean {
  if (!path.startsWith(prefix)) return false;
  return path.length === prefix.length || prefix.endsWith('/') || path.charCodeAt(prefix.length) === 47;
}

function headersMatch(route: Matchable, headers: IncomingHttpHeaders, announced: ReadonlySet<string> | null): boolean {
  if (route.headers === null) return true;
  for (const [name, value] of route.headers) {
    if (announced !== null ? !announced.has(name) : headers[name] !== value) return false;
  }
  return true;
}

function addAllowed(allow: Set<string> | null, route: Matchable): Set<string> {
  const set = allow ?? new Set<string>();
  for (const m of route.methods ?? []) set.add(m);
  return set;
}

function escapeRegex(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

function compilePattern(pattern: string): { regex: RegExp; names: string[] } {
  const names: string[] = [];
  const source = pattern
    .split('/')
    .map((seg) => {
      if (seg.startsWith(':')) {
        names.push(seg.slice(1));
        return '([^/]+)';
      }
      return escapeRegex(seg);
    })
    .join('/');
  return { regex: new RegExp(`^${source}$`), names };
}

/** The routes in force: a reload replaces the whole table in one assignment. */
export interface RouteTable {
  readonly router: Router<Route & Matchable>;
  /** The CORS_* policy, for answers to paths no route matches. */
  readonly cors: CorsPolicy;
}

const NO_ROUTE: Refusal = Object.freeze({ code: 'GW_ROUTE_NOT_FOUND', detail: 'no route matches this path' });

/**
 * Stage: the canonical path, method and headers against the routes in force. A request keeps the
 * table it was matched in, so a reload mid-request never mixes two configs. No match is not
 * answered here but after the cors stage, so that a browser can read the 404 or 405: the miss is
 * left for the runner (run.ts).
 */
export function routeMatch(table: () => RouteTable): Stage {
  return stage('route-match', (ex, req) => {
    const current = table();
    const m = current.router.match(req.method!, ex.path, req.headers);
    if (m.kind === 'found') {
      ex.route = m.route;
      ex.params = m.params;
      ex.cors = m.route.cors;
      return PASS;
    }
    ex.cors = current.cors;
    ex.miss = m.kind === 'not-found' ? NO_ROUTE : { code: 'GW_METHOD_NOT_ALLOWED', detail: `this route accepts ${m.allow}`, headers: { allow: m.allow } };
    return PASS;
  });
}
