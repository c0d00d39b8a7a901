import { webcrypto } from 'node:crypto';
import {
  createLocalJWKSet,
  createRemoteJWKSet,
  decodeProtectedHeader,
  errors,
  jwtVerify,
  type JSONWebKeySet,
  type JWTPayload,
  type JWTVerifyGetKey,
  type ProtectedHeaderParameters,
} from 'jose';
import type { Identity } from './identity.js';
import { isRole } from './roles.js';

export type AuthFailure =
  | 'GW_AUTH_TOKEN_MISSING'
  | 'GW_AUTH_TOKEN_MALFORMED'
  | 'GW_AUTH_TOKEN_INVALID'
  | 'GW_AUTH_TOKEN_EXPIRED'
  | 'GW_AUTH_TOKEN_NOT_YET_VALID'
  | 'GW_AUTH_CLAIMS_INVALID'
  | 'GW_AUTH_TOKEN_TYPE'
  | 'GW_AUTH_UNAVAILABLE';

export type VerifyResult = { ok: true; identity: Identity } | { ok: false; reason: AuthFailure; detail: string };

/** A shared HMAC secret, optionally named by `kid`, accepted until `untilMs` (rotation overlap). */
export interface HmacKeyConfig {
  secret: string;
  kid?: string | undefined;
  untilMs?: number | undefined;
}

export interface JwtVerifierOptions {
  /** The current secret first, then secrets kept for the rotation overlap. */
  keys: readonly HmacKeyConfig[];
  maxLifetimeSeconds: number;
  clockSkewSeconds: number;
  issuer?: string | undefined;
  audience?: string | undefined;
  /** JSON Web Key Set for asymmetric tokens (RS256, ES256, EdDSA). */
  jwksUrl?: string | undefined;
  jwksAlgorithms?: readonly string[];
  jwksTimeoutMs?: number;
  /** Milliseconds since the epoch; tests move it. */
  now?: () => number;
}

export const VERIFIED_CACHE_SIZE = 10_000;
export const JWKS_ALGORITHMS = ['RS256', 'ES256', 'EdDSA'] as const;

// The scheme name is case-insensitive (RFC 9110 11.1).
const BEARER = /^bearer +([A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+)$/i;
const PHI_LEVEL = /^[a-z_]{1,32}$/;
const CLAIM_ID = /^[\x21-\x7e]{1,128}$/;

interface HmacKey {
  readonly kid: string | null;
  readonly key: webcrypto.CryptoKey;
  readonly untilMs: number;
}

interface Verified {
  readonly result: VerifyResult & { ok: true };
  /** Seconds since the epoch after which the cached verdict no longer holds: expiry or key retirement. */
  readonly validUntil: number;
}

/** The key source could not be reached: a dependency failure, never the caller's fault. */
class KeySourceUnavailable extends Error {}

const MISSING: VerifyResult = { ok: false, reason: 'GW_AUTH_TOKEN_MISSING', detail: 'send Authorization: Bearer <token>' };
const NOT_BEARER: VerifyResult = { ok: false, reason: 'GW_AUTH_TOKEN_MALFORMED', detail: 'the Authorization header is not a Bearer JWT' };
const UNDECODABLE: VerifyResult = { ok: false, reason: 'GW_AUTH_TOKEN_MALFORMED', detail: 'the token cannot be decoded' };
const BAD_SIGNATURE: VerifyResult = { ok: false, reason: 'GW_AUTH_TOKEN_INVALID', detail: 'the token signature or algorithm is not accepted' };
const UNKNOWN_KID: VerifyResult = { ok: false, reason: 'GW_AUTH_TOKEN_INVALID', detail: 'the token names a key the gateway does not accept' };
const NOT_ACCESS_TYPE: VerifyResult = { ok: false, reason: 'GW_AUTH_TOKEN_TYPE', detail: 'the token is not an access token (its typ header)' };
const NOT_ACCESS_CLAIM: VerifyResult = { ok: false, reason: 'GW_AUTH_TOKEN_TYPE', detail: 'the token is not an access token (its typ claim)' };
const KEYS_UNAVAILABLE: VerifyResult = { ok: false, reason: 'GW_AUTH_UNAVAILABLE', detail: 'the signing keys cannot be fetched right now; retry shortly' };

/**
 * Token validation as the spec lays it out. Each key pins its algorithm: HMAC secrets verify
 * HS256 only, keys from the JWKS only the asymmetric algorithms, so `none` (in any spelling) and
 * algorithm confusion (an HS256 token "signed" with a public key) have no key to verify against.
 * exp and sub are required, nbf/iat are checked with a small skew, a token that claims a longer
 * life than JWT_EXPIRES_IN (the HIPAA cap) is refused. Rotation keeps the previous secret valid
 * until a configured time; a token's `kid` selects its key.
 */
export class JwtVerifier {
  private readonly now: () => number;
  private readonly jwks: JWTVerifyGetKey | null;
  private readonly jwksAlgorithms: readonly string[];

  private constructor(
    private readonly options: JwtVerifierOptions,
    private readonly hmacKeys: readonly HmacKey[],
  ) {
    this.now = options.now ?? Date.now;
    this.jwksAlgorithms = options.jwksAlgorithms ?? JWKS_ALGORITHMS;
    this.jwks = options.jwksUrl ? guardedKeySet(options.jwksUrl, options.jwksTimeoutMs ?? 2_000) : null;
  }

  /** Imports the HMAC keys once: handing jose raw bytes would re-import them on every request. */
  static async create(options: JwtVerifierOptions): Promise<JwtVerifier> {
    const keys = await Promise.all(
      options.keys.map(async (k) => ({
        kid: k.kid ?? null,
        key: await webcrypto.subtle.importKey('raw', new TextEncoder().encode(k.secret), { name: 'HMAC', hash: 'SHA-256' }, false, ['verify']),
        untilMs: k.untilMs ?? Infinity,
      })),
    );
    return new JwtVerifier(options, keys);
  }

  /**
   * Authorization header -> verified result, for tokens that passed every check. A signature
   * check costs tens of microseconds; a client sends the same token for its whole session. The
   * exact header bytes are the key, so a hit is a token already verified byte for byte; expiry
   * and the retirement of its key are checked again on every hit. Revocation is not a property
   * of the token: it is checked per request with the rate limit (access-check.ts). Bounded: the
   * oldest entries make room for new ones.
   */
  private readonly verified = new Map<string, Verified>();

  /**
   * The verdict on an Authorization header: at once for a token verified before and still
   * valid (the common case), after a signature check otherwise.
   */
  verify(authorization: string | undefined): VerifyResult | Promise<VerifyResult> {
    return this.cached(authorization) ?? this.verifyUncached(authorization);
  }

  /** The verdict on a header verified before and still valid, if there is one. */
  cached(authorization: string | undefined): (VerifyResult & { ok: true }) | undefined {
    if (authorization === undefined) return undefined;
    const hit = this.verified.get(authorization);
    if (hit === undefined) return undefined;
    if (hit.validUntil > this.now() / 1000) return hit.result;
    this.verified.delete(authorization);
    return undefined;
  }

  /** A full check of the header (and a cache entry when it passes). */
  async verifyUncached(authorization: string | undefined): Promise<VerifyResult> {
    if (authorization === undefined || authorization === '') return MISSING;
    const m = BEARER.exec(authorization);
    if (m === null) return NOT_BEARER;
    const { result, keyUntilMs } = await this.verifyJwt(m[1]!);
    if (result.ok) {
      if (this.verified.size >= VERIFIED_CACHE_SIZE) this.evictOldest();
      const validUntil = Math.min(result.identity.expiresAt + this.options.clockSkewSeconds, keyUntilMs / 1000);
      this.verified.set(authorization, { result, validUntil });
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

  private async verifyJwt(token: string): Promise<{ result: VerifyResult; keyUntilMs: number }> {
    let header: ProtectedHeaderParameters;
    try {
      header = decodeProtectedHeader(token);
    } catch {
      return { result: UNDECODABLE, keyUntilMs: 0 };
    }
    // RFC 8725 3.11: a refresh token (or any other JWT) signed with the same key must not pass as
    // an access token. A typ header, when present, names an access token.
    if (header.typ !== undefined && !isAccessTokenType(header.typ)) return { result: NOT_ACCESS_TYPE, keyUntilMs: 0 };
    const alg = header.alg;
    if (alg === 'HS256') return this.verifyHmac(token, header.kid);
    if (this.jwks !== null && typeof alg === 'string' && this.jwksAlgorithms.includes(alg)) {
      return { result: await this.verifyWith(token, this.jwks, [alg]), keyUntilMs: Infinity };
    }
    return { result: BAD_SIGNATURE, keyUntilMs: 0 };
  }

  private async verifyHmac(token: string, kid: string | undefined): Promise<{ result: VerifyResult; keyUntilMs: number }> {
    const nowMs = this.now();
    let tried = false;
    for (const k of this.hmacKeys) {
      if (k.untilMs <= nowMs) continue;
      // A key without an id takes any token; a key with one only the tokens that name it.
      if (kid !== undefined && k.kid !== null && k.kid !== kid) continue;
      tried = true;
      const result = await this.verifyWith(token, k.key, ['HS256']);
      // Another key may have signed it (rotation without kids); every other verdict is final.
      if (result === BAD_SIGNATURE) continue;
      return { result, keyUntilMs: k.untilMs };
    }
    return { result: tried || kid === undefined ? BAD_SIGNATURE : UNKNOWN_KID, keyUntilMs: 0 };
  }

  private async verifyWith(token: string, key: webcrypto.CryptoKey | JWTVerifyGetKey, algorithms: string[]): Promise<VerifyResult> {
    let payload: JWTPayload;
    try {
      ({ payload } =
        typeof key === 'function'
          ? await jwtVerify(token, key, this.claimOptions(algorithms))
          : await jwtVerify(token, key, this.claimOptions(algorithms)));
    } catch (err) {
      return mapJoseError(err);
    }
    return this.identityOf(payload);
  }

  private claimOptions(algorithms: string[]) {
    return {
      algorithms,
      requiredClaims: ['exp', 'sub'],
      clockTolerance: this.options.clockSkewSeconds,
      currentDate: new Date(this.now()),
      ...(this.options.issuer !== undefined ? { issuer: this.options.issuer } : undefined),
      ...(this.options.audience !== undefined ? { audience: this.options.audience } : undefined),
    };
  }

  private identityOf(payload: JWTPayload): VerifyResult {
    const { maxLifetimeSeconds, clockSkewSeconds } = this.options;
    const exp = payload.exp!;
    // The auth service marks its tokens with a typ claim; only `access` (or none) authenticates a request.
    if (payload.typ !== undefined && payload.typ !== 'access') return NOT_ACCESS_CLAIM;
    const role = payload.role;
    if (!isRole(role)) {
      return { ok: false, reason: 'GW_AUTH_CLAIMS_INVALID', detail: 'the token carries no known healthcare role' };
    }
    if (typeof payload.sub !== 'string' || !CLAIM_ID.test(payload.sub)) {
      return { ok: false, reason: 'GW_AUTH_CLAIMS_INVALID', detail: "the token's sub claim is not a valid user id" };
    }
    const iat = typeof payload.iat === 'number' ? payload.iat : null;
    if (iat !== null && iat > this.now() / 1000 + clockSkewSeconds) {
      return { ok: false, reason: 'GW_AUTH_TOKEN_NOT_YET_VALID', detail: 'the token is issued in the future' };
    }
    if (iat !== null ? exp - iat > maxLifetimeSeconds : exp - this.now() / 1000 > maxLifetimeSeconds + clockSkewSeconds) {
      return { ok: false, reason: 'GW_AUTH_CLAIMS_INVALID', detail: 'the token lives longer than the allowed maximum' };
    }
    const jti = payload.jti;
    const sid = payload.sid ?? payload.session_id;
    if ((jti !== undefined && !(typeof jti === 'string' && CLAIM_ID.test(jti))) || (sid !== undefined && !(typeof sid === 'string' && CLAIM_ID.test(sid)))) {
      return { ok: false, reason: 'GW_AUTH_CLAIMS_INVALID', detail: "the token's jti or sid claim is not a valid identifier" };
    }
    const level = payload.phi_access_level;
    return {
      ok: true,
      identity: Object.freeze({
        userId: payload.sub,
        role,
        phiAccessLevel: typeof level === 'string' && PHI_LEVEL.test(level) ? level : 'none',
        tokenId: jti ?? null,
        sessionId: sid ?? null,
        issuedAt: iat,
        expiresAt: exp,
      }),
    };
  }
}

/**
 * The typ header values of an access token: `JWT` (RFC 7519 5.1) and `at+jwt` (RFC 9068 2.1),
 * compared as media types: any letter case, with or without the `application/` prefix.
 */
function isAccessTokenType(typ: unknown): boolean {
  if (typeof typ !== 'string') return false;
  const t = typ.toLowerCase();
  const name = t.startsWith('application/') ? t.slice(12) : t;
  return name === 'jwt' || name === 'at+jwt';
}

/**
 * jose's remote key set (cached; an unknown kid triggers a refetch at most once per cooldown),
 * with its transport failures told apart from "no such key". While the endpoint is down, the
 * last key set fetched keeps verifying: an outage longer than the cache age must not turn every
 * token into a 503. Only a token needing a key never seen gets one.
 */
function guardedKeySet(url: string, timeoutMs: number): JWTVerifyGetKey {
  const remote = createRemoteJWKSet(new URL(url), { timeoutDuration: timeoutMs, cooldownDuration: 30_000, cacheMaxAge: 600_000 });
  let lastKnown: { source: JSONWebKeySet; keys: JWTVerifyGetKey } | null = null;
  return async (header, token) => {
    try {
      return await remote(header, token);
    } catch (err) {
      if (err instanceof errors.JWKSNoMatchingKey || err instanceof errors.JWKSMultipleMatchingKeys) throw err;
      const last = remote.jwks();
      if (last !== undefined) {
        if (lastKnown?.source !== last) lastKnown = { source: last, keys: createLocalJWKSet(last) };
        try {
          return await lastKnown.keys(header, token);
        } catch {
          // not among the keys fetched before: only the endpoint could say
        }
      }
      throw new KeySourceUnavailable('the JWKS endpoint cannot be reached', { cause: err });
    }
  };
}

function mapJoseError(err: unknown): VerifyResult {
  if (err instanceof KeySourceUnavailable) return KEYS_UNAVAILABLE;
  if (err instanceof errors.JWTExpired) {
    return { ok: false, reason: 'GW_AUTH_TOKEN_EXPIRED', detail: 'the token has expired' };
  }
  if (err instanceof errors.JWTClaimValidationFailed) {
    if (err.claim === 'nbf' || (err.claim === 'iat' && err.reason === 'check_failed')) {
      return { ok: false, reason: 'GW_AUTH_TOKEN_NOT_YET_VALID', detail: 'the token is not valid yet' };
    }
    return { ok: false, reason: 'GW_AUTH_CLAIMS_INVALID', detail: `the token's ${err.claim} claim is missing or invalid` };
  }
  if (err instanceof errors.JWKSNoMatchingKey) return UNKNOWN_KID;
  if (err instanceof errors.JWSSignatureVerificationFailed || err instanceof errors.JOSEAlgNotAllowed) return BAD_SIGNATURE;
  return UNDECODABLE;
}
