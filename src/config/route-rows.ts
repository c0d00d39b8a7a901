import type { CompiledConfig } from './compile.js';
import type { RoutesFile } from './routes-schema.js';

export interface RouteRow {
  name: string;
  match: string;
  methods: string[] | null;
  service: string | null;
  auth: string;
  access: string;
  rateLimit: string;
  phi: boolean;
}

/** The compiled routes in match order, one row each, as the gateway holds them (the command line's `routes`, the status page). */
export function routeRows(file: RoutesFile, table: CompiledConfig): RouteRow[] {
  return table.routes.map((r) => {
    const c = file.routes.find((x) => x.name === r.name)!;
    const access = r.auth === 'public' ? '-' : c.permission !== undefined ? `permission ${c.permission}` : c.roles !== undefined ? c.roles.join(',') : 'any role';
    const limit = `${r.rateLimit.perMinute}/min ${r.rateLimit.ownKey ? 'own budget' : r.auth === 'public' ? 'per address' : 'per user'}${r.rateLimit.failClosed ? ', fails closed' : ''}`;
    return { name: r.name, match: r.template, methods: c.methods ?? null, service: c.service ?? null, auth: r.auth, access, rateLimit: limit, phi: r.phi };
  });
}

export function routeRowsText(rows: readonly RouteRow[]): string {
  const head = ['NAME', 'MATCH', 'METHODS', 'SERVICE', 'AUTH', 'ACCESS', 'LIMIT', 'PHI'];
  const cells = rows.map((r) => [r.name, r.match, r.methods?.join(',') ?? 'any', r.service ?? '(gateway)', r.auth, r.access, r.rateLimit, r.phi ? 'yes' : 'no']);
  const widths = head.map((h, i) => Math.max(h.length, ...cells.map((c) => c[i]!.length)));
  const line = (c: string[]) => c.map((v, i) => v.padEnd(widths[i]!)).join('  ').trimEnd();
  return `${[line(head), ...cells.map(line)].join('\n')}\n`;
}
