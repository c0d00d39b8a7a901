import type { Role } from './roles.js';

/** The caller as the verified token says; the only source of the identity headers sent upstream. */
export interface Identity {
  readonly userId: string;
  readonly role: Role;
  readonly phiAccessLevel: string;
  readonly tokenId: string | null;
  readonly expiresAt: number;
}
