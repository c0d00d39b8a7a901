import type { Exchange } from './exchange.js';
import type { StageResult } from './authenticate.js';

/** Verified identity x route policy: the route's roles, when it names any. */
export function authorize(ex: Exchange): StageResult {
  const roles = ex.route!.roles;
  if (roles === null || ex.identity === null) return null;
  if (roles.has(ex.identity.role)) return null;
  return { code: 'GW_FORBIDDEN', detail: `the role ${ex.identity.role} may not use this route` };
}
