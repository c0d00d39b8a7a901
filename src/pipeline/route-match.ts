import type { IncomingHttpHeaders } from 'node:http';
import type { CompiledRoute } from '../config/compile.js';

export type RouteMatch =
  | { kind: 'found'; route: CompiledRoute; params: Record<string, string> | null }
  | { kind: 'method-not-allowed'; allow: string }
  | { kind: 'not-found' };

const NOT_FOUND: RouteMatch = Object.freeze({ kind: 'not-found' });

interface PatternEntry {
  route: CompiledRoute;
  regex: RegExp;
  names: readonly string[];
}

/**
 * Finds the route for a canonical path: exact paths first, then patterns in file order, then
 * the longest prefix. Everything is compiled when the config loads; a lookup is a map hit or a
 * short scan, with no allocation on the common path.
 */
export class Router {
  private readonly exact = new Map<string, CompiledRoute[]>();
  private readonly patterns: PatternEntry[] = [];
  private readonly prefixes: CompiledRoute[] = [];

  constructor(routes: readonly CompiledRoute[]) {
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
  match(method: string, path: string, headers: IncomingHttpHeaders, announced: ReadonlySet<string> | null = null): RouteMatch {
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

function headersMatch(route: CompiledRoute, headers: IncomingHttpHeaders, announced: ReadonlySet<string> | null): boolean {
  if (route.headers === null) return true;
  for (const [name, value] of route.headers) {
    if (announced !== null ? !announced.has(name) : headers[name] !== value) return false;
  }
  return true;
}

function addAllowed(allow: Set<string> | null, route: CompiledRoute): Set<string> {
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
