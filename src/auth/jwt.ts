import { webcrypto } from 'node:crypto';
import { errors, jwtVerify, type JWTPayload } from 'jose';
import type { Identity } from './identity.js';
import { isRole } from './roles.js';

export type AuthFailure =
  | 'GW_AUTH_TOKEN_MISSING'
  | 'GW_AUTH_TOKEN_MALFORMED'
  | 'GW_AUTH_TOKEN_INVALID'
  | 'GW_AUTH_TOKEN_EXPIRED'
  | 'GW_AUTH_TOKEN_NOT_YET_VALID'
  | 'GW_AUTH_CLAIMS_INVALID';

export type VerifyResult = { ok: true; identity: Identity } | { ok: false; reason: AuthFailure; detail: string };

export interface JwtVerifierOptions {
  secret: string;
  maxLifetimeSeconds: number;
  clockSkewSeconds: number;
  /** Milliseconds since the epoch; tests move it. */
  now?: () => number;
}

export const VERIFIED_CACHE_SIZE = 10_000;

const BEARER = /^Bearer +([A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+)$/;

/**
 * HS256 with the shared JWT_SECRET, as the spec's token validation describes. The algorithm is
 * pinned, so `none` and algorithm-confusion tokens fail by construction; exp is required, and a
 * token that claims a longer life than JWT_EXPIRES_IN (the HIPAA cap) is refused.
 */
export class JwtVerifier {
  private readonly now: () => number;

  private constructor(
    private readonly options: JwtVerifierOptions,
    private readonly key: webcrypto.CryptoKey,
  ) {
    this.now = options.now ?? Date.now;
  }

  /** Imports the HMAC key once: handing jose raw bytes would re-import it on every request. */
  static async create(options: JwtVerifierOptions): Promise<JwtVerifier> {
    const key = await webcrypto.subtle.importKey('raw', new TextEncoder().encode(options.secret), { name: 'HMAC', hash: 'SHA-256' }, false, ['verify']);
    return new JwtVerifier(options, key);
  }

  /**
   * Authorization header -> verified result, for tokens that passed every check. A signature
   * check costs tens of microseconds; a client sends the same token for its whole session. The
   * exact header bytes are the key, so a hit is a token already verified byte for byte; its
   * expiry is checked again on every hit. Bounded: the oldest entry makes room for a new one.
   */
  private readonly verified = new Map<string, VerifyResult & { ok: true }>();

  /**
   * The verdict on an Authorization header: at once for a token verified before and not
   * expired since (the common case), after a signature check otherwise.
   */
  verify(authorization: string | undefined): VerifyResult | Promise<VerifyResult> {
    if (authorization !== undefined) {
      const hit = this.verified.get(authorization);
      if (hit !== undefined) {
        if (hit.identity.expiresAt + this.options.clockSkewSeconds > this.now() / 1000) return hit;
        this.verified.delete(authorization);
      }
    }
    return this.verifyAndRemember(authorization);
  }

  private async verifyAndRemember(authorization: string | undefined): Promise<VerifyResult> {
    const result = await this.verifyToken(authorization);
    if (result.ok) {
      if (this.verified.size >= VERIFIED_CACHE_SIZE) this.evictOldest();
      this.verified.set(authorization!, result);
    }
    return result;
  }

  /** Makes room a tenth of the cache at a time: one iterator walk instead of one per new token. */
  private evictOldest(): void {
    let n = Math.ceil(VERIFIED_CACHE_SIZE / 10);
    for (const key of this.verified.keys()) {
      this.verified.delete(key);
      if (--n === 0) break;
    }
  }

  private async verifyToken(authorization: string | undefined): Promise<VerifyResult> {
    if (authorization === undefined || authorization === '') {
      return { ok: false, reason: 'GW_AUTH_TOKEN_MISSING', detail: 'send Authorization: Bearer <token>' };
    }
    const m = BEARER.exec(authorization);
    if (m === null) {
      return { ok: false, reason: 'GW_AUTH_TOKEN_MALFORMED', detail: 'the Authorization header is not a Bearer JWT' };
    }
    let payload: JWTPayload;
    try {
      ({ payload } = await jwtVerify(m[1]!, this.key, {
        algorithms: ['HS256'],
        requiredClaims: ['exp', 'sub'],
        clockTolerance: this.options.clockSkewSeconds,
        currentDate: new Date(this.now()),
      }));
    } catch (err) {
      return mapJoseError(err);
    }
    const exp = payload.exp!;
    const role = payload.role;
    if (!isRole(role)) {
      return { ok: false, reason: 'GW_AUTH_CLAIMS_INVALID', detail: 'the token carries no known healthcare role' };
    }
    if (typeof payload.iat === 'number' && exp - payload.iat > this.options.maxLifetimeSeconds) {
      return { ok: false, reason: 'GW_AUTH_CLAIMS_INVALID', detail: 'the token lives longer than the allowed maximum' };
    }
    if (typeof payload.iat !== 'number' && exp - this.now() / 1000 > this.options.maxLifetimeSeconds + this.options.clockSkewSeconds) {
      return { ok: false, reason: 'GW_AUTH_CLAIMS_INVALID', detail: 'the token lives longer than the allowed maximum' };
    }
    const level = payload.phi_access_level;
    return {
      ok: true,
      identity: Object.freeze({
        userId: payload.sub!,
        role,
        phiAccessLevel: typeof level === 'string' && /^[a-z_]{1,32}$/.test(level) ? level : 'none',
        tokenId: typeof payload.jti === 'string' ? payload.jti : null,
        expiresAt: exp,
      }),
    };
  }
}

function mapJoseError(err: unknown): VerifyResult {
  if (err instanceof errors.JWTExpired) {
    return { ok: false, reason: 'GW_AUTH_TOKEN_EXPIRED', detail: 'the token has expired' };
  }
  if (err instanceof errors.JWTClaimValidationFailed) {
    if (err.claim === 'nbf' || err.claim === 'iat') {
      return { ok: false, reason: 'GW_AUTH_TOKEN_NOT_YET_VALID', detail: 'the token is not valid yet' };
    }
    return { ok: false, reason: 'GW_AUTH_CLAIMS_INVALID', detail: `the token's ${err.claim} claim is missing or invalid` };
  }
  if (err instanceof errors.JWSSignatureVerificationFailed || err instanceof errors.JOSEAlgNotAllowed) {
    return { ok: false, reason: 'GW_AUTH_TOKEN_INVALID', detail: 'the token signature or algorithm is not accepted' };
  }
  return { ok: false, reason: 'GW_AUTH_TOKEN_MALFORMED', detail: 'the token cannot be decoded' };
}
