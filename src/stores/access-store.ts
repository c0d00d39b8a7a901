import type { RateLimitDecision } from './rate-limit-store.js';

/**
 * What one request asks the shared store: its rate-limit key and, when it carries a verified
 * token, whether that token is revoked and whether its session is known. Both answers travel in
 * one round trip (one Lua script in Redis).
 */
export interface AccessQuery {
  readonly rateKey: string;
  readonly limit: number;
  readonly windowMs: number;
  readonly token: TokenFacts | null;
}

export interface TokenFacts {
  readonly userId: string;
  readonly tokenId: string | null;
  /** `iat` in seconds; a token without one falls under any user-wide revocation. */
  readonly issuedAt: number | null;
  readonly sessionId: string | null;
}

export interface AccessAnswer {
  /** The token is revoked: nothing was counted. */
  readonly revoked: boolean;
  /** The user id cached for the token's session, or null when none is cached (or none asked). */
  readonly sessionUser: string | null;
  readonly decision: RateLimitDecision;
}

export const REVOKED: AccessAnswer = Object.freeze({
  revoked: true,
  sessionUser: null,
  decision: Object.freeze({ allowed: false, limit: 0, remaining: 0, resetMs: 0, retryAfterMs: 0 }),
});

/** One revocation, as stored and as announced to the other replicas. */
export type Revocation =
  | { readonly kind: 'token'; readonly userId: string; readonly tokenId: string; readonly ttlSeconds: number }
  | { readonly kind: 'user'; readonly userId: string; readonly before: number; readonly ttlSeconds: number }
  | { readonly kind: 'session'; readonly userId: string; readonly sessionId: string };

/**
 * A store shared by every replica (Redis, redis-access-store.ts). Each method is one round trip;
 * a rejected promise means the store could not answer (failover-access-store.ts then falls back
 * to the per-process store).
 */
export interface SharedAccessStore {
  /** Revocation, session and rate limit of one request, together. */
  check(q: AccessQuery): Promise<AccessAnswer>;
  /** The same answer, counting nothing (what a request would get). */
  peek(q: AccessQuery): Promise<AccessAnswer>;
  isRevoked(token: TokenFacts): Promise<boolean>;
  count(key: string, limit: number, windowMs: number, mode: CountMode): Promise<RateLimitDecision>;
  /** Recorded for every replica, and announced to them. */
  revoke(r: Revocation): Promise<void>;
  cacheSession(sessionId: string, userId: string, ttlSeconds: number): Promise<void>;
  /** Every revocation in force (for a replica whose mirror may have missed announcements). */
  revocations(): Promise<Revocation[]>;
  /**
   * The store's epoch: an id written once into a store that has none. A different one than last
   * time means the store lost its data (restarted empty, or failed over to an empty replica).
   */
  epoch(candidate: string): Promise<string>;
  /** Writes revocations back, never shortening or lowering one the store already has. */
  restore(revocations: readonly Revocation[]): Promise<void>;
}

/**
 * `take` counts one if it passes; `check` answers whether one more would pass without counting;
 * `refund` gives back one counted earlier (a login attempt that turned out to succeed).
 */
export type CountMode = 'take' | 'check' | 'refund';

/**
 * An id as part of a key. ':' and '%' are escaped so that an id can never pose as another key's
 * prefix, and '{' and '}' so that it cannot end a hash tag early. UUIDs pass unchanged.
 */
export function keyPart(id: string): string {
  return NEEDS_ESCAPE.test(id) ? id.replace(/%/g, '%25').replace(/:/g, '%3A').replace(/\{/g, '%7B').replace(/\}/g, '%7D') : id;
}

const NEEDS_ESCAPE = /[:%{}]/;

/** The inverse of keyPart. */
export function unescapeKeyPart(part: string): string {
  return part.includes('%') ? part.replace(/%3A/g, ':').replace(/%7B/g, '{').replace(/%7D/g, '}').replace(/%25/g, '%') : part;
}

/**
 * Every key one request reads carries its subject as a hash tag (`{...}`): on a Redis Cluster
 * they share one hash slot, so one script reads them all in one round trip, and users spread
 * over the primaries. The spec's `rate_limit:{user_id}` is read literally: the user's budget is
 * `rate_limit:{<user id>}` (`redis-cli GET "rate_limit:{7c9e6679-...}"`). `subject` is an escaped
 * user id (keyPart) or `ip:<address>` for anonymous traffic.
 */
export const keys = {
  /** The rate-limit subject of anonymous traffic (and of failed authentications): the client address. */
  client: (ip: string) => `ip:${ip}`,
  rate: (subject: string) => `rate_limit:{${subject}}`,
  /** A route with a limit of its own counts apart from the subject's shared budget. */
  routeRate: (route: string, subject: string) => `rate_limit:{${subject}}:${route}`,
  revokedToken: (userId: string, tokenId: string) => `revoked:jti:{${keyPart(userId)}}:${keyPart(tokenId)}`,
  revokedUser: (userId: string) => `revoked:user:{${keyPart(userId)}}`,
  session: (userId: string, sessionId: string) => `session:{${keyPart(userId)}}:${keyPart(sessionId)}`,
};

/**
 * The revocation keys of releases before the hash-tagged layout (`revoked:jti:<jti>`,
 * `revoked:user:<user>`). On one Redis (or Sentinel) they are still honoured, so that a rolling
 * upgrade, with replicas of both releases writing, lets no revoked token back in; a Redis Cluster
 * has no such keys (it was not supported before).
 */
export const legacyKeys = {
  revokedToken: (tokenId: string) => `revoked:jti:${legacyKeyPart(tokenId)}`,
  revokedUser: (userId: string) => `revoked:user:${legacyKeyPart(userId)}`,
};

/** keyPart as those releases had it: braces were not escaped. */
function legacyKeyPart(id: string): string {
  return id.includes(':') || id.includes('%') ? id.replace(/%/g, '%25').replace(/:/g, '%3A') : id;
}

/** The key holding the store's epoch (SharedAccessStore.epoch). */
export const EPOCH_KEY = 'gateway:epoch';

/** The channel on which a replica announces a revocation to the others. */
export const REVOCATION_CHANNEL = 'gateway:revocations';
