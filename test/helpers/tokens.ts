import { randomUUID } from 'node:crypto';
import { SignJWT, type JWTPayload } from 'jose';

export const TEST_SECRET = 'test-secret-0123456789abcdef-0123456789abcdef';

export interface TokenOptions {
  sub?: string;
  role?: string;
  secret?: string;
  expiresInSeconds?: number;
  claims?: JWTPayload;
  /** The `jti` claim: a fresh UUID by default; null leaves the claim out. */
  jti?: string | null;
  /** The `iat` claim in seconds: now by default; null leaves the claim out. */
  issuedAt?: number | null;
}

export async function signToken(options: TokenOptions = {}): Promise<string> {
  const now = Math.floor(Date.now() / 1000);
  const jwt = new SignJWT({ role: options.role ?? 'health_provider', ...options.claims }).setProtectedHeader({ alg: 'HS256', typ: 'JWT' }).setSubject(options.sub ?? 'user-1');
  if (options.jti !== null) jwt.setJti(options.jti ?? randomUUID());
  if (options.issuedAt !== null) jwt.setIssuedAt(options.issuedAt ?? now);
  return jwt.setExpirationTime(now + (options.expiresInSeconds ?? 600)).sign(new TextEncoder().encode(options.secret ?? TEST_SECRET));
}
