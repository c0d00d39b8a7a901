/** The healthcare roles of the platform, as the spec's role mappings name them. */
export const ROLES = ['system', 'admin', 'health_provider', 'care_staff', 'family_member', 'resident'] as const;

export type Role = (typeof ROLES)[number];

const ROLE_SET: ReadonlySet<string> = new Set(ROLES);

export function isRole(value: unknown): value is Role {
  return typeof value === 'string' && ROLE_SET.has(value);
}
