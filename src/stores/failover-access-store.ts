import { randomUUID } from 'node:crypto';
import type { Cluster, Redis } from 'ioredis';
import type { Logger } from '../observability/logger.js';
import { REVOCATION_CHANNEL, REVOKED, type AccessAnswer, type AccessQuery, type CountMode, type Revocation, type SharedAccessStore, type TokenFacts } from './access-store.js';
import { within } from './command-deadline.js';
import type { MemoryAccessStore } from './memory-access-store.js';
import { parseRevocation } from './redis-access-store.js';
import type { RateLimitDecision } from './rate-limit-store.js';

/** The shared store is down and the request's route fails closed. */
export const UNAVAILABLE = null;

const RESYNC_ATTEMPTS = 20;
/** How often the store's epoch is read: a Redis that lost its data is given back its revocations within this. */
const EPOCH_CHECK_MS = 2_000;
/** A refused subscription to the revocation announcements is tried again after this long. */
const SUBSCRIBE_RETRY_MS = 1_000;
/** Reading the epoch and writing revocations back are not on any request's path. */
const EPOCH_TIMEOUT_MS = 5_000;
const RESYNC_PAUSE_MS = 500;

/**
 * The shared store (Redis) with a per-process fallback. Every call waits at most the command
 * timeout, measured from when the command was written (command-deadline.ts). While Redis fails,
 * each process limits on its own, carrying on from the count Redis last gave it for the key (a
 * key it never had an answer for starts a full budget): N processes admit at most N x what was
 * left of a budget, never N fresh budgets of L for a user they have served. Revocations are
 * checked against the mirror: every revocation this process made or heard announced before the
 * outage. A request that cannot accept that gets `UNAVAILABLE` instead: a PHI route with a token
 * (the spec fails closed where PHI is at stake) and a route whose rate limit fails closed. Redis
 * is tried on every request, so the gateway goes back to it by itself as soon as it answers; its
 * client never queues commands while disconnected, so a failed attempt costs no waiting.
 */
export class AccessControl {
  private failing = false;
  /** The epoch of the store as last read; null before the first read. */
  private epochSeen: string | null = null;
  private checkingEpoch = false;
  private epochTimer: NodeJS.Timeout | null = null;
  /** SUBSCRIBE succeeded once (ioredis renews it on every reconnect). */
  private subscribed = false;
  /** The subscription is in place on a live connection: announcements are heard. */
  private hearing = false;
  private subscribeRetry: NodeJS.Timeout | null = null;
  private readonly revocationListeners = new Set<(r: Revocation) => void>();

  constructor(
    private readonly shared: SharedAccessStore | null,
    readonly local: MemoryAccessStore,
    private readonly logger: Logger,
    /** REDIS_COMMAND_TIMEOUT_MS: the longest any call to the shared store may hold a request. */
    private readonly timeoutMs = 100,
  ) {}

  /** Hears the other replicas' revocations, for the mirror used during an outage. */
  listen(subscriber: Redis | Cluster): void {
    subscriber.on('message', (channel: string, message: string) => {
      if (channel !== REVOCATION_CHANNEL) return;
      const r = parseRevocation(message);
      if (r !== null) this.applyRevocation(r);
    });
    // Subscribed on every connection (the first and each reconnect), and tried again until it is
    // in place: a subscription refused once (a timeout during a stall) must not leave the replica
    // deaf for good. The mirror is filled from the revocation keys themselves once the
    // subscription is up: at the first connection (a replica started later knows what was revoked
    // before it), and after every reconnect (announcements made while it was away are lost;
    // nothing falls in between).
    subscriber.on('ready', () => this.subscribe(subscriber, false));
    subscriber.on('close', () => (this.hearing = false));
    this.epochTimer = setInterval(() => void this.checkEpoch(), EPOCH_CHECK_MS);
    this.epochTimer.unref();
  }

  /** For /health: whether this replica hears the other replicas' revocations; null without Redis. */
  get announcements(): 'subscribed' | 'not subscribed' | null {
    if (this.shared === null) return null;
    return this.hearing ? 'subscribed' : 'not subscribed';
  }

  private subscribe(subscriber: Redis | Cluster, retrying: boolean): void {
    if (this.subscribeRetry !== null) return;
    subscriber.subscribe(REVOCATION_CHANNEL).then(
      async () => {
        const again = this.subscribed;
        this.subscribed = true;
        this.hearing = true;
        if (retrying) this.logger.info('subscribed to revocation announcements');
        await this.resync(again ? 'revocation mirror resynced after a reconnect' : 'revocation mirror loaded');
        await this.checkEpoch();
      },
      (err: unknown) => {
        if (!retrying) this.logger.warn({ cause: (err as Error).message }, 'cannot subscribe to revocation announcements; trying again every second');
        this.subscribeRetry = setTimeout(() => {
          this.subscribeRetry = null;
          if (subscriber.status === 'ready') this.subscribe(subscriber, true);
        }, SUBSCRIBE_RETRY_MS);
        this.subscribeRetry.unref();
      },
    );
  }

  /**
   * A Redis that restarted without its data (no persistence, a failover to an empty replica, a
   * FLUSHALL) forgets every revocation: a replica started after that would serve revoked tokens.
   * Each replica remembers the store's epoch; when it changes, the replica writes back every
   * revocation its mirror still holds, so that every replica, old or new, refuses them again.
   */
  async checkEpoch(): Promise<void> {
    if (this.shared === null || this.checkingEpoch) return;
    this.checkingEpoch = true;
    try {
      const current = await within(this.shared.epoch(randomUUID()), EPOCH_TIMEOUT_MS);
      if (this.epochSeen !== null && current !== this.epochSeen) {
        const held = this.local.revocationsInForce();
        await within(this.shared.restore(held), EPOCH_TIMEOUT_MS);
        this.logger.warn({ revocations: held.length }, 'redis lost its data (its epoch changed): the revocations this replica holds were written back');
      }
      // Only once written back: a failed write-back is tried again at the next check.
      this.epochSeen = current;
    } catch {
      // Redis away: the request path notices and reports it; the next check tries again.
    } finally {
      this.checkingEpoch = false;
    }
  }

  close(): void {
    if (this.epochTimer !== null) clearInterval(this.epochTimer);
    if (this.subscribeRetry !== null) clearTimeout(this.subscribeRetry);
  }

  /** Applies every revocation in force to the mirror (after the subscriber missed some). */
  private async resync(done: string): Promise<void> {
    if (this.shared === null) return;
    // The subscriber may be back before the connection that reads the keys (after a failover).
    for (let attempt = 1; ; attempt++) {
      try {
        const all = await this.shared.revocations();
        for (const r of all) this.applyRevocation(r);
        this.logger.info({ revocations: all.length }, done);
        return;
      } catch (err) {
        if (attempt === RESYNC_ATTEMPTS) {
          this.logger.warn({ cause: (err as Error).message }, 'cannot resync the revocation mirror; announcements from now on are heard');
          return;
        }
        // Unref'd: a gateway shutting down while Redis is away does not wait for these retries.
        await new Promise((resolve) => setTimeout(resolve, RESYNC_PAUSE_MS).unref());
      }
    }
  }

  /** True while decisions come from the per-process fallback. */
  get degraded(): boolean {
    return this.failing;
  }

  /**
   * One call to the shared store outside any client's budget, while the fallback is in use: an
   * idle gateway has no traffic that would notice Redis is back.
   */
  async probe(): Promise<void> {
    if (this.shared === null || !this.failing) return;
    try {
      await within(this.shared.count('rate_limit:gateway:probe', 1_000_000, 60_000, 'check'), this.timeoutMs);
      this.recovered();
    } catch {
      // still failing; the next request or probe tries again
    }
  }

  /** At once without Redis (one process, the demo); one Redis round trip otherwise. */
  check(q: AccessQuery, failClosed: boolean): AccessAnswer | Promise<AccessAnswer | typeof UNAVAILABLE> {
    if (this.shared === null) return this.local.checkNow(q);
    return within(this.shared.check(q), this.timeoutMs).then(
      (answer) => {
        if (this.failing) this.recovered();
        // A fallback later carries on from this count, not from a fresh budget.
        if (!answer.revoked) this.local.limits.mirror(q.rateKey, answer.decision.resetMs);
        // The mirror as well: a Redis that restarted without its data forgets revocations that
        // this replica made or heard of; a map lookup keeps them refused.
        return q.token !== null && !answer.revoked && this.local.isRevokedNow(q.token) ? REVOKED : answer;
      },
      (err: unknown) => {
        this.failed(err);
        return failClosed ? UNAVAILABLE : this.local.checkNow(q);
      },
    );
  }

  /**
   * Whether a token outside the request path (a refresh token) is revoked. While Redis is away
   * the mirror answers: it holds every revocation this replica made or heard of.
   */
  async isRevoked(token: TokenFacts): Promise<boolean> {
    if (this.shared === null) return this.local.isRevokedNow(token);
    try {
      return await within(this.shared.isRevoked(token), this.timeoutMs);
    } catch (err) {
      this.failed(err);
      return this.local.isRevokedNow(token);
    }
  }

  /** A counter outside the request path (failed logins); the local one while Redis is away. */
  async count(key: string, limit: number, windowMs: number, mode: CountMode): Promise<RateLimitDecision> {
    if (this.shared === null) return this.local.countNow(key, limit, windowMs, mode);
    try {
      const decision = await within(this.shared.count(key, limit, windowMs, mode), this.timeoutMs);
      if (mode === 'take') this.local.limits.mirror(key, decision.resetMs);
      return decision;
    } catch (err) {
      this.failed(err);
      return this.local.countNow(key, limit, windowMs, mode);
    }
  }

  /**
   * Records a revocation in Redis for every replica, then in this replica's mirror. Throws when
   * Redis cannot take it: the caller must not report a logout that other replicas would not
   * honour, and a refused revocation changes nothing anywhere (the client retries it whole).
   */
  async revoke(r: Revocation): Promise<void> {
    if (this.shared !== null) {
      try {
        await within(this.shared.revoke(r), this.timeoutMs);
      } catch (err) {
        this.failed(err);
        throw err;
      }
    }
    this.applyRevocation(r);
  }

  /** Best effort: a session missing from the cache is validated again, never trusted. */
  cacheSession(sessionId: string, userId: string, ttlSeconds: number): void {
    this.local.cacheSessionNow(sessionId, userId, ttlSeconds);
    if (this.shared !== null) within(this.shared.cacheSession(sessionId, userId, ttlSeconds), this.timeoutMs).catch((err: unknown) => this.failed(err));
  }

  /**
   * Told of every revocation this replica makes, hears announced, or finds at a resync: open
   * WebSockets of a revoked token are closed by it (websocket.ts). Returns the unsubscribe.
   */
  onRevocation(listener: (r: Revocation) => void): () => void {
    this.revocationListeners.add(listener);
    return () => this.revocationListeners.delete(listener);
  }

  private applyRevocation(r: Revocation): void {
    this.local.apply(r);
    for (const listener of this.revocationListeners) listener(r);
  }

  private failed(err: unknown): void {
    if (this.failing) return;
    this.failing = true;
    this.logger.warn({ cause: (err as Error).message }, 'redis unreachable: rate limits and revocations fall back to this process until it returns');
  }

  private recovered(): void {
    this.failing = false;
    this.logger.info('rate limits and revocations are shared across replicas again');
  }
}
