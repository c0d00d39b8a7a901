import { REVOKED, type AccessAnswer, type AccessQuery, type CountMode, type Revocation, type TokenFacts } from './access-store.js';
import { MemoryRateLimitStore } from './memory-rate-limit.js';
import type { RateLimitDecision } from './rate-limit-store.js';

const MAX_ENTRIES = 100_000;

/** A bounded map of expiring entries: oldest insertions go first when full; expired ones are swept. */
class ExpiringMap<V> {
  private readonly entries = new Map<string, { value: V; expiresAt: number }>();
  constructor(private readonly now: () => number) {}

  get(key: string): V | undefined {
    const e = this.entries.get(key);
    if (e === undefined) return undefined;
    if (e.expiresAt <= this.now()) {
      this.entries.delete(key);
      return undefined;
    }
    return e.value;
  }

  set(key: string, value: V, ttlMs: number): void {
    this.entries.delete(key);
    this.entries.set(key, { value, expiresAt: this.now() + ttlMs });
    if (this.entries.size > MAX_ENTRIES) this.entries.delete(this.entries.keys().next().value!);
  }

  delete(key: string): void {
    this.entries.delete(key);
  }

  /** Every entry not yet expired, with what is left of its lifetime. */
  *live(): Generator<[string, V, number]> {
    const now = this.now();
    for (const [key, e] of this.entries) if (e.expiresAt > now) yield [key, e.value, e.expiresAt - now];
  }

  sweep(): void {
    const now = this.now();
    for (const [key, e] of this.entries) if (e.expiresAt <= now) this.entries.delete(key);
  }
}

/**
 * Rate limits, revocations and the session cache in process memory: the demo's store, and each
 * replica's fallback while Redis is away. The fallback also mirrors every revocation this replica
 * made or heard announced, so a token revoked before an outage stays revoked during it.
 */
export class MemoryAccessStore {
  readonly limits: MemoryRateLimitStore;
  /** Token id to the user it belongs to ('' for an announcement that named none). */
  private readonly revokedTokens: ExpiringMap<string>;
  private readonly revokedUsers: ExpiringMap<number>;
  private readonly sessions: ExpiringMap<string>;
  private readonly sweeper: NodeJS.Timeout;

  constructor(private readonly now: () => number = Date.now) {
    this.limits = new MemoryRateLimitStore(MAX_ENTRIES, now);
    this.revokedTokens = new ExpiringMap(now);
    this.revokedUsers = new ExpiringMap(now);
    this.sessions = new ExpiringMap(now);
    this.sweeper = setInterval(() => {
      this.revokedTokens.sweep();
      this.revokedUsers.sweep();
      this.sessions.sweep();
    }, 30_000);
    this.sweeper.unref();
  }

  isRevokedNow(token: TokenFacts): boolean {
    if (token.tokenId !== null && this.revokedTokens.get(token.tokenId) !== undefined) return true;
    const before = this.revokedUsers.get(token.userId);
    return before !== undefined && (token.issuedAt === null || token.issuedAt <= before);
  }

  checkNow(q: AccessQuery): AccessAnswer {
    const token = q.token;
    let sessionUser: string | null = null;
    if (token !== null) {
      if (this.isRevokedNow(token)) return REVOKED;
      if (token.sessionId !== null) sessionUser = this.sessions.get(token.sessionId) ?? null;
    }
    return { revoked: false, sessionUser, decision: this.limits.consumeNow(q.rateKey, q.limit, q.windowMs) };
  }

  /** Applies a revocation made here or announced by another replica. */
  apply(r: Revocation): void {
    if (r.kind === 'token') this.revokedTokens.set(r.tokenId, r.userId, r.ttlSeconds * 1000);
    else if (r.kind === 'user') {
      const current = this.revokedUsers.get(r.userId);
      if (current === undefined || r.before > current) this.revokedUsers.set(r.userId, r.before, r.ttlSeconds * 1000);
    } else this.sessions.delete(r.sessionId);
  }

  /** The token and user revocations held, with what is left of their lifetime: what a Redis that lost its data is given back. */
  revocationsInForce(): Revocation[] {
    const out: Revocation[] = [];
    for (const [tokenId, userId, ms] of this.revokedTokens.live()) out.push({ kind: 'token', userId, tokenId, ttlSeconds: Math.ceil(ms / 1000) });
    for (const [userId, before, ms] of this.revokedUsers.live()) out.push({ kind: 'user', userId, before, ttlSeconds: Math.ceil(ms / 1000) });
    return out;
  }

  cacheSessionNow(sessionId: string, userId: string, ttlSeconds: number): void {
    this.sessions.set(sessionId, userId, ttlSeconds * 1000);
  }

  countNow(key: string, limit: number, windowMs: number, mode: CountMode): RateLimitDecision {
    if (mode === 'refund') {
      this.limits.refund(key, limit, windowMs);
      return { allowed: true, limit, remaining: 0, resetMs: 0, retryAfterMs: 0 };
    }
    return this.limits.consumeNow(key, limit, windowMs, mode === 'check');
  }

  close(): void {
    clearInterval(this.sweeper);
    this.limits.close();
  }
}
