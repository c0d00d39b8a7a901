import { ROLES, type Role } from './roles.js';

/**
 * What each healthcare role may do, by default. A route asks for a permission (or names roles);
 * the routes file may replace a role's list under `permissions:`. A permission ending in `:any`
 * reaches records of other users where a route otherwise requires the caller's own (subject
 * match). `admin` holds no clinical permission: its use on a clinical route is break-glass.
 */
export const DEFAULT_PERMISSIONS: Readonly<Record<Role, readonly string[]>> = {
  system: ['chat:read', 'chat:read:any', 'records:read', 'records:read:any', 'records:write', 'records:write:any', 'audit:write', 'tokens:revoke'],
  admin: ['tokens:revoke', 'users:manage', 'config:read'],
  health_provider: ['chat:read', 'chat:read:any', 'records:read', 'records:read:any', 'records:write', 'records:write:any'],
  care_staff: ['chat:read', 'records:read', 'care:coordinate'],
  family_member: ['chat:read', 'records:read'],
  resident: ['chat:read', 'records:read', 'records:write'],
};

export const PERMISSION_PATTERN = /^[a-z][a-z_]*(:[a-z][a-z_]*)*$/;

export type PermissionMatrix = ReadonlyMap<Role, ReadonlySet<string>>;

export function permissionMatrix(overrides: Partial<Record<Role, readonly string[]>> | undefined): PermissionMatrix {
  return new Map(ROLES.map((role) => [role, new Set(overrides?.[role] ?? DEFAULT_PERMISSIONS[role])]));
}
