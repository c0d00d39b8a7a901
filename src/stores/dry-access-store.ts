import type { AccessAnswer, AccessQuery, CountMode, Revocation, SharedAccessStore, TokenFacts } from './access-store.js';
import type { RateLimitDecision } from './rate-limit-store.js';

/**
 * The shared store as the operator's `explain` command sees it: every answer a request would get
 * (revoked or not, its session, its budget), and nothing changed. Counting becomes asking whether
 * one more would pass; revoking is refused; a session is not cached.
 */
export class DryAccessStore implements SharedAccessStore {
  /** The rate-limit keys asked about, in order (explain names the budget a request draws from). */
  readonly asked: string[] = [];

  constructor(private readonly store: SharedAccessStore) {}

  check(q: AccessQuery): Promise<AccessAnswer> {
    return this.peek(q);
  }

  peek(q: AccessQuery): Promise<AccessAnswer> {
    this.asked.push(q.rateKey);
    return this.store.peek(q);
  }

  isRevoked(token: TokenFacts): Promise<boolean> {
    return this.store.isRevoked(token);
  }

  count(key: string, limit: number, windowMs: number, _mode: CountMode): Promise<RateLimitDecision> {
    return this.store.count(key, limit, windowMs, 'check');
  }

  revoke(_r: Revocation): Promise<void> {
    return Promise.reject(new Error('explain changes nothing: no revocation is recorded'));
  }

  cacheSession(): Promise<void> {
    return Promise.resolve();
  }

  revocations(): Promise<Revocation[]> {
    return this.store.revocations();
  }

  epoch(_candidate: string): Promise<string> {
    return Promise.reject(new Error('explain changes nothing: no epoch is written'));
  }

  restore(): Promise<void> {
    return Promise.resolve();
  }
}
