import { webcrypto } from 'node:crypto';
import { compactVerify, decodeJwt, decodeProtectedHeader, type JWTPayload, type ProtectedHeaderParameters } from 'jose';
import type { GatewayConfig } from '../config/load.js';
import { createVerifier, openRedisStore, redisConnection } from '../resources.js';
import { quietLogger } from './context.js';

export interface TokenReport {
  header: ProtectedHeaderParameters | null;
  claims: JWTPayload | null;
  /** Times and lifetime read from the claims, as an operator compares them. */
  facts: string[];
  /** Which configured HMAC key's signature matches: current, previous, or none. */
  signature: Array<{ key: 'current' | 'previous'; kid: string | null; matches: boolean; retired: boolean }>;
  /** The gateway's verdict: it would pass, or its refusal code and reason. */
  verdict: { passes: boolean; code: string | null; detail: string };
}

/**
 * A token decoded and judged exactly as the gateway judges it (the same verifier with the same
 * keys), plus what the verdict rests on: the times in its claims against now and the lifetime cap,
 * and which of the configured keys signed it. A revocation is looked up too when Redis is
 * configured. The token itself is never printed.
 */
export async function inspectToken(config: GatewayConfig, token: string, now = Date.now()): Promise<TokenReport> {
  const { env } = config;
  let header: ProtectedHeaderParameters | null = null;
  let claims: JWTPayload | null = null;
  try {
    header = decodeProtectedHeader(token);
    claims = decodeJwt(token);
  } catch {
    // undecodable: the verifier says so
  }
  const facts: string[] = [];
  const nowS = Math.floor(now / 1000);
  const at = (s: number) => `${new Date(s * 1000).toISOString()} (${s <= nowS ? `${nowS - s} s ago` : `in ${s - nowS} s`})`;
  if (claims !== null) {
    if (typeof claims.iat === 'number') facts.push(`issued ${at(claims.iat)}`);
    if (typeof claims.nbf === 'number') facts.push(`not before ${at(claims.nbf)}`);
    if (typeof claims.exp === 'number') facts.push(`expires ${at(claims.exp)}${claims.exp + env.JWT_CLOCK_SKEW_SECONDS < nowS ? `: expired, past the ${env.JWT_CLOCK_SKEW_SECONDS} s of clock skew allowed` : ''}`);
    else facts.push('no exp claim: refused (exp is required)');
    if (typeof claims.exp === 'number' && typeof claims.iat === 'number') {
      const life = claims.exp - claims.iat;
      facts.push(`lifetime ${life} s; the cap (JWT_EXPIRES_IN) is ${env.JWT_EXPIRES_IN} s${life > env.JWT_EXPIRES_IN ? ': over the cap' : ''}`);
    }
  }
  const signature: TokenReport['signature'] = [];
  const keys = [
    { key: 'current' as const, secret: env.JWT_SECRET, kid: env.JWT_KID ?? null, untilMs: Infinity },
    ...(env.JWT_PREVIOUS_SECRET === undefined ? [] : [{ key: 'previous' as const, secret: env.JWT_PREVIOUS_SECRET, kid: env.JWT_PREVIOUS_KID ?? null, untilMs: env.JWT_PREVIOUS_SECRET_EXPIRES_AT ?? Infinity }]),
  ];
  if (header?.alg === 'HS256') {
    for (const k of keys) {
      const key = await webcrypto.subtle.importKey('raw', new TextEncoder().encode(k.secret), { name: 'HMAC', hash: 'SHA-256' }, false, ['verify']);
      const matches = await compactVerify(token, key, { algorithms: ['HS256'] }).then(
        () => true,
        () => false,
      );
      signature.push({ key: k.key, kid: k.kid, matches, retired: k.untilMs <= now });
    }
  } else if (header !== null) {
    facts.push(`alg ${String(header.alg)}: ${env.JWT_JWKS_URL === undefined ? 'the gateway accepts HS256 only (no JWT_JWKS_URL)' : `verified against the keys of ${env.JWT_JWKS_URL}`}`);
  }
  const verifier = await createVerifier(env);
  const result = await verifier.verifyUncached(`Bearer ${token}`);
  let verdict: TokenReport['verdict'] = result.ok ? { passes: true, code: null, detail: 'the gateway would accept this token' } : { passes: false, code: result.reason, detail: result.detail };
  // The verifier speaks of the Authorization header; here there is only the token.
  if (!result.ok && result.reason === 'GW_AUTH_TOKEN_MALFORMED') verdict = { ...verdict, detail: 'the token cannot be decoded: a JWT is three base64url parts joined by dots' };
  if (result.ok) verdict = await revocationVerdict(config, result.identity, verdict);
  return { header, claims, facts, signature, verdict };
}

/** A token that verifies may still be revoked: asked of Redis when the gateway has one. */
async function revocationVerdict(config: GatewayConfig, identity: { userId: string; tokenId: string | null; issuedAt: number | null; sessionId: string | null }, passing: TokenReport['verdict']): Promise<TokenReport['verdict']> {
  const connection = await redisConnection(config.env);
  if (connection === null) return { ...passing, detail: `${passing.detail} (no REDIS_URL: revocations are not looked up)` };
  const redis = openRedisStore(connection, config.env.REDIS_COMMAND_TIMEOUT_MS, quietLogger());
  try {
    const until = Date.now() + 5_000;
    while (redis.pipe.state().state !== 'connected' && Date.now() < until) await new Promise((resolve) => setTimeout(resolve, 20));
    const revoked = await redis.store.isRevoked(identity);
    return revoked ? { passes: false, code: 'GW_AUTH_TOKEN_REVOKED', detail: 'the token has been revoked (by its jti, or every token of its user)' } : { ...passing, detail: `${passing.detail}; not revoked` };
  } catch (err) {
    return { ...passing, detail: `${passing.detail}; revocations could not be looked up (${(err as Error).message})` };
  } finally {
    redis.redis.disconnect();
    redis.pipe.close();
  }
}

export function tokenReportText(r: TokenReport): string {
  const lines: string[] = [];
  lines.push(`header: ${r.header === null ? '(cannot be decoded)' : JSON.stringify(r.header)}`);
  lines.push(`claims: ${r.claims === null ? '(cannot be decoded)' : JSON.stringify(r.claims)}`);
  for (const f of r.facts) lines.push(`  ${f}`);
  for (const s of r.signature) lines.push(`signature with the ${s.key} secret${s.kid === null ? '' : ` (kid ${s.kid})`}: ${s.matches ? 'matches' : 'does not match'}${s.retired ? ' (that secret is retired)' : ''}`);
  lines.push(r.verdict.passes ? `verdict: passes: ${r.verdict.detail}` : `verdict: refused, ${r.verdict.code}: ${r.verdict.detail}`);
  return `${lines.join('\n')}\n`;
}
