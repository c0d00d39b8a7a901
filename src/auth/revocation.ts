import { decodeJwt } from 'jose';
import type { TokenFacts } from '../stores/access-store.js';

/** A refresh token lives longer than an access token; its revocation is kept this long at most. */
export const MAX_REFRESH_TTL_SECONDS = 30 * 24 * 3600;

/**
 * How long a revocation without a known expiry is kept: it must outlive every token it covers,
 * refresh tokens included, which live longer than the access-token cap.
 */
export function userRevocationTtl(maxTokenLifetimeSeconds: number, clockSkewSeconds: number): number {
  return Math.max(MAX_REFRESH_TTL_SECONDS, maxTokenLifetimeSeconds + clockSkewSeconds);
}

/**
 * The revocation-relevant claims of a refresh token, read without verifying it: the auth service
 * may sign refresh tokens with a key the gateway never holds, and a forged token gains nothing
 * here (it can only be refused, and the auth service verifies it anyway).
 */
export function tokenFacts(token: string): (TokenFacts & { expiresAt: number }) | null {
  try {
    const claims = decodeJwt(token);
    if (typeof claims.sub !== 'string') return null;
    return {
      userId: claims.sub,
      tokenId: typeof claims.jti === 'string' ? claims.jti : null,
      issuedAt: typeof claims.iat === 'number' ? claims.iat : null,
      sessionId: null,
      expiresAt: typeof claims.exp === 'number' ? claims.exp : Number.MAX_SAFE_INTEGER,
    };
  } catch {
    return null;
  }
}
