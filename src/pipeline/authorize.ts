import type { Exchange } from './exchange.js';
import type { StageResult } from './authenticate.js';
import type { PermissionMatrix } from '../auth/permissions.js';

/** The header a break-glass request must carry: why an admin reaches a clinical route. */
export const BREAK_GLASS_HEADER = 'x-break-glass-reason';
const MAX_REASON_LENGTH = 500;

/**
 * Verified identity x route policy, least privilege first:
 * 1. the route's roles and permission, when it names them;
 * 2. subject match: the token's subject must equal a path or query parameter (a resident reads
 *    only their own record), unless the role holds the route's bypass permission;
 * 3. break-glass: an admin failing 1 or 2 passes only on a route that allows it, only with a
 *    reason header, and the exchange is flagged for audit.
 */
export function authorize(ex: Exchange, permissions: PermissionMatrix, breakGlassReason: string | string[] | undefined): StageResult {
  const who = ex.identity;
  if (who === null) return null;
  const route = ex.route!;
  const held = permissions.get(who.role)!;
  const roleOk = (route.roles === null || route.roles.has(who.role)) && (route.permission === null || held.has(route.permission));
  const subjectOk = !roleOk || route.subject === null || ownsSubject(ex, held);
  if (roleOk && subjectOk) return null;

  if (who.role === 'admin' && route.breakGlass) {
    const reason = typeof breakGlassReason === 'string' ? breakGlassReason.trim() : '';
    if (reason === '' || reason.length > MAX_REASON_LENGTH) {
      return { code: 'GW_BREAK_GLASS_REASON_REQUIRED', detail: `break-glass access needs a reason in ${BREAK_GLASS_HEADER} (1 to ${MAX_REASON_LENGTH} characters)` };
    }
    ex.breakGlass = reason;
    return null;
  }
  if (!roleOk) {
    return { code: 'GW_FORBIDDEN', detail: route.permission !== null ? `the role ${who.role} lacks the permission ${route.permission}` : `the role ${who.role} may not use this route` };
  }
  return { code: 'GW_FORBIDDEN', detail: 'this record belongs to another user' };
}

function ownsSubject(ex: Exchange, held: ReadonlySet<string>): boolean {
  const subject = ex.route!.subject!;
  if (subject.unlessPermission !== null && held.has(subject.unlessPermission)) return true;
  const value = subject.param !== null ? ex.params?.[subject.param] : queryValue(ex.query, subject.query!);
  return value !== undefined && value === ex.identity!.userId;
}

/** The one value of a query parameter; a repeated or missing one matches nobody. */
function queryValue(query: string, name: string): string | undefined {
  if (query === '') return undefined;
  const values = new URLSearchParams(query).getAll(name);
  return values.length === 1 ? values[0] : undefined;
}
