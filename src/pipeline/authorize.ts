import { z } from 'zod';
import { PERMISSION_PATTERN, type PermissionMatrix } from '../auth/permissions.js';
import { ROLES } from '../auth/roles.js';
import type { Logger } from '../observability/logger.js';
import { PASS, stage, type Exchange, type RouteStage } from './exchange.js';

/** The header a break-glass request must carry: why an admin reaches a clinical route. */
export const BREAK_GLASS_HEADER = 'x-break-glass-reason';
const MAX_REASON_LENGTH = 500;

const permission = z.string().regex(PERMISSION_PATTERN, 'permissions are lower-case words joined by ":" such as records:read');

/** The routes-file slice: who may use the route. */
export const authorizeSchema = {
  roles: z.array(z.enum(ROLES, { error: `roles are ${ROLES.join(', ')}` })).min(1).optional(),
  permission: permission.optional(),
  /** An admin may use this route without its role or permission, with a reason header, flagged for audit. */
  breakGlass: z.boolean().default(false),
  /** The token's subject must equal this path or query parameter, unless the role holds `unlessPermission`. */
  subject: z
    .strictObject({ param: z.string().optional(), query: z.string().min(1).optional(), unlessPermission: permission.optional() })
    .refine((s) => (s.param === undefined) !== (s.query === undefined), 'subject names exactly one of param (a path parameter) or query')
    .optional(),
};

export { permission as permissionSchema };

export interface AuthorizeDeps {
  /** The permissions of the config this chain is built from: a request never mixes two configs. */
  readonly permissions: PermissionMatrix;
  readonly logger: Logger;
}

/**
 * Stage: verified identity x route policy, least privilege first:
 * 1. the route's roles and permission, when it names them;
 * 2. subject match: the token's subject must equal a path or query parameter (a resident reads
 *    only their own record), unless the role holds the route's bypass permission;
 * 3. break-glass: an admin failing 1 or 2 passes only on a route that allows it, only with a
 *    reason header, and the exchange is flagged for audit.
 * Absent from the chains of routes that name none of roles, permission and subject.
 */
export const authorize: RouteStage<z.output<z.ZodObject<typeof authorizeSchema>>, AuthorizeDeps> = {
  name: 'authorize',
  create(route, { permissions, logger }) {
    if (route.roles === undefined && route.permission === undefined && route.subject === undefined) return null;
    const roles = route.roles ? new Set<string>(route.roles) : null;
    const needed = route.permission ?? null;
    const subject = route.subject ? { param: route.subject.param ?? null, query: route.subject.query ?? null, unlessPermission: route.subject.unlessPermission ?? null } : null;
    const ownsSubject = (ex: Exchange, held: ReadonlySet<string>): boolean => {
      if (subject!.unlessPermission !== null && held.has(subject!.unlessPermission)) return true;
      const value = subject!.param !== null ? ex.params?.[subject!.param] : queryValue(ex.query, subject!.query!);
      return value !== undefined && value === ex.identity!.userId;
    };
    return stage('authorize', (ex, req) => {
      const who = ex.identity;
      if (who === null) return PASS;
      const held = permissions.get(who.role)!;
      const roleOk = (roles === null || roles.has(who.role)) && (needed === null || held.has(needed));
      const subjectOk = !roleOk || subject === null || ownsSubject(ex, held);
      if (roleOk && subjectOk) return PASS;
      if (who.role === 'admin' && route.breakGlass) {
        const given = req.headers[BREAK_GLASS_HEADER];
        const reason = typeof given === 'string' ? given.trim() : '';
        if (reason === '' || reason.length > MAX_REASON_LENGTH) {
          return { code: 'GW_BREAK_GLASS_REASON_REQUIRED', detail: `break-glass access needs a reason in ${BREAK_GLASS_HEADER} (1 to ${MAX_REASON_LENGTH} characters)` };
        }
        ex.breakGlass = reason;
        logger.warn({ request_id: ex.id, route: ex.route!.name, user_id: who.userId, break_glass: true }, 'break-glass access');
        return PASS;
      }
      if (!roleOk) return { code: 'GW_FORBIDDEN', detail: needed !== null ? `the role ${who.role} lacks the permission ${needed}` : `the role ${who.role} may not use this route` };
      return { code: 'GW_FORBIDDEN', detail: 'this record belongs to another user' };
    });
  },
};

/** The one value of a query parameter; a repeated or missing one matches nobody. */
function queryValue(query: string, name: string): string | undefined {
  if (query === '') return undefined;
  const values = new URLSearchParams(query).getAll(name);
  return values.length === 1 ? values[0] : undefined;
}
