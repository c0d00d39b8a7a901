import type { Role } from './roles.js';

/** The caller as the verified token says; the only source of the identity headers sent upstream. */
export interface Identity {
  readonly userId: string;
  readonly role: Role;
  readonly phiAccessLevel: string;
  /** `jti`: what a logout or an operator revokes. */
  readonly tokenId: string | null;
  /** `sid` (or `session_id`): the auth service's session, validated once and cached. */
  readonly sessionId: string | null;
  /** `iat`, seconds: a user-wide revocation refuses every token issued at or before its time. */
  readonly issuedAt: number | null;
  readonly expiresAt: number;
}
