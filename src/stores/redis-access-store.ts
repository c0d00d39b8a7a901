import { createHash } from 'node:crypto';
import type { Cluster, Redis } from 'ioredis';
import { EPOCH_KEY, keys, legacyKeys, REVOCATION_CHANNEL, unescapeKeyPart, REVOKED, type AccessAnswer, type AccessQuery, type CountMode, type Revocation, type SharedAccessStore, type TokenFacts } from './access-store.js';
import type { RateLimitDecision } from './rate-limit-store.js';
import type { LuaScript, RespValue } from './resp-pipe.js';

/**
 * GCRA (mirrors `gcra()` in rate-limit-store.ts). The clock is Redis's own (TIME), so replicas
 * with drifting clocks share one timeline. Expects `interval`, `window` and `dry` set, and the
 * rate key in KEYS[1]; returns {allowed, remaining, reset_ms, retry_after_ms, ...}.
 */
const GCRA = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local tat = tonumber(redis.call('GET', KEYS[1]))
if tat == nil or tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - window
if now < allow_at then
  return {0, 0, math.ceil(tat - now), math.ceil(allow_at - now), session}
end
if not dry then
  redis.call('SET', KEYS[1], string.format('%.3f', new_tat), 'PX', math.max(1, math.ceil(new_tat - now)))
end
return {1, math.floor((window - (new_tat - now)) / interval), math.ceil(new_tat - now), 0, session}
`;

/** ARGV: interval, window, mode ('take', 'check' or 'refund'; see CountMode). */
const COUNT = `
local interval = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local dry = ARGV[3] == 'check'
local session = false
if ARGV[3] == 'refund' then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
  local tat = tonumber(redis.call('GET', KEYS[1]))
  if tat ~= nil then
    local back = tat - interval
    if back <= now then redis.call('DEL', KEYS[1])
    else redis.call('SET', KEYS[1], string.format('%.3f', back), 'PX', math.max(1, math.ceil(back - now))) end
  end
  return {1, 0, 0, 0}
end
${GCRA}`;

/**
 * A request with a verified token: revocation, session and rate limit, read and decided
 * atomically in one round trip. KEYS: rate, revoked jti, revoked user, session, and on one Redis
 * the two revocation keys of the earlier layout (access-store.ts, legacyKeys).
 * ARGV: interval, window, has_jti ('1'/'0'), iat ('' when none), has_session ('1'/'0'), and
 * 'dry' to answer without counting (the operator's explain command).
 * A revoked token returns {2} and counts nothing.
 */
const ACCESS = `
local interval = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local dry = ARGV[6] == 'dry'
if ARGV[3] == '1' and (redis.call('EXISTS', KEYS[2]) == 1 or (KEYS[5] and redis.call('EXISTS', KEYS[5]) == 1)) then return {2} end
local before = tonumber(redis.call('GET', KEYS[3]))
if KEYS[6] then
  local earlier = tonumber(redis.call('GET', KEYS[6]))
  if earlier and (before == nil or earlier > before) then before = earlier end
end
if before and (ARGV[4] == '' or tonumber(ARGV[4]) <= before) then return {2} end
local session = false
if ARGV[5] == '1' then session = redis.call('GET', KEYS[4]) end
${GCRA}`;

/** KEYS: revoked jti, revoked user (and the earlier layout's two, as ACCESS). ARGV: has_jti, iat. */
const IS_REVOKED = `
if ARGV[1] == '1' and (redis.call('EXISTS', KEYS[1]) == 1 or (KEYS[3] and redis.call('EXISTS', KEYS[3]) == 1)) then return 1 end
local before = tonumber(redis.call('GET', KEYS[2]))
if KEYS[4] then
  local earlier = tonumber(redis.call('GET', KEYS[4]))
  if earlier and (before == nil or earlier > before) then before = earlier end
end
if before and (ARGV[2] == '' or tonumber(ARGV[2]) <= before) then return 1 end
return 0
`;

/** Keeps the latest "revoked before" time of a user: a later revocation never shortens an earlier one. */
const REVOKE_USER = `
local current = tonumber(redis.call('GET', KEYS[1]))
if current == nil or tonumber(ARGV[1]) > current then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
end
return 1
`;

/** The epoch, written if there is none. */
const EPOCH = `
local current = redis.call('GET', KEYS[1])
if current then return current end
redis.call('SET', KEYS[1], ARGV[1])
return ARGV[1]
`;

/** Revocations written back at most this many per round trip. */
const RESTORE_CHUNK = 500;

const script = (body: string): LuaScript => ({ body, sha: createHash('sha1').update(body).digest('hex') });
const COUNT_SCRIPT = script(COUNT);
const ACCESS_SCRIPT = script(ACCESS);
const IS_REVOKED_SCRIPT = script(IS_REVOKED);

type Reply = [number, number?, number?, number?, (string | null)?];
type Scripted = { gatewayRevokeUser(key: string, before: string, ttl: string): Promise<number>; gatewayEpoch(key: string, candidate: string): Promise<string> };

/** What carries the request path's scripts: one pipelined connection (resp-pipe.ts), or one per primary of a cluster (cluster-pipe.ts). */
export interface ScriptRunner {
  run(script: LuaScript, keys: readonly string[], args: readonly string[]): Promise<RespValue>;
}

function decisionOf(reply: Reply, limit: number): RateLimitDecision {
  return { allowed: reply[0] === 1, limit, remaining: reply[1]!, resetMs: reply[2]!, retryAfterMs: reply[3]! };
}

/**
 * The shared store of every replica. Each request costs one script call; the calls of one
 * event-loop turn share one write. All keys of one request carry the same hash tag
 * (access-store.ts), so on a Redis Cluster the script still runs on one primary.
 */
export class RedisAccessStore implements SharedAccessStore {
  private readonly redis: (Redis | Cluster) & Scripted;
  /** On one Redis, the revocation keys of the earlier layout are read too (legacyKeys). */
  private readonly legacy: boolean;

  /**
   * `pipe` carries the scripts of the request path (a fraction of the client-side cost of the
   * same call through ioredis); `redis` carries the rest.
   */
  constructor(
    redis: Redis | Cluster,
    private readonly pipe: ScriptRunner,
  ) {
    redis.defineCommand('gatewayRevokeUser', { numberOfKeys: 1, lua: REVOKE_USER });
    redis.defineCommand('gatewayEpoch', { numberOfKeys: 1, lua: EPOCH });
    this.redis = redis as (Redis | Cluster) & Scripted;
    this.legacy = !isCluster(redis);
  }

  check(q: AccessQuery): Promise<AccessAnswer> {
    return this.access(q, false);
  }

  peek(q: AccessQuery): Promise<AccessAnswer> {
    return this.access(q, true);
  }

  private async access(q: AccessQuery, dry: boolean): Promise<AccessAnswer> {
    const interval = String(q.windowMs / q.limit);
    const window = String(q.windowMs);
    const token = q.token;
    if (token === null) {
      const counted = (await this.pipe.run(COUNT_SCRIPT, [q.rateKey], [interval, window, dry ? 'check' : 'take'])) as Reply;
      return { revoked: false, sessionUser: null, decision: decisionOf(counted, q.limit) };
    }
    const tokenId = token.tokenId ?? '';
    const access = [q.rateKey, keys.revokedToken(token.userId, tokenId), keys.revokedUser(token.userId), keys.session(token.userId, token.sessionId ?? '')];
    if (this.legacy) access.push(legacyKeys.revokedToken(tokenId), legacyKeys.revokedUser(token.userId));
    const args = [interval, window, token.tokenId !== null ? '1' : '0', token.issuedAt !== null ? String(token.issuedAt) : '', token.sessionId !== null ? '1' : '0'];
    if (dry) args.push('dry');
    const reply = (await this.pipe.run(ACCESS_SCRIPT, access, args)) as Reply;
    if (reply[0] === 2) return REVOKED;
    return { revoked: false, sessionUser: reply[4] ?? null, decision: decisionOf(reply, q.limit) };
  }

  async isRevoked(token: TokenFacts): Promise<boolean> {
    const tokenId = token.tokenId ?? '';
    const revocation = [keys.revokedToken(token.userId, tokenId), keys.revokedUser(token.userId)];
    if (this.legacy) revocation.push(legacyKeys.revokedToken(tokenId), legacyKeys.revokedUser(token.userId));
    const reply = await this.pipe.run(IS_REVOKED_SCRIPT, revocation, [token.tokenId !== null ? '1' : '0', token.issuedAt !== null ? String(token.issuedAt) : '']);
    return reply === 1;
  }

  async count(key: string, limit: number, windowMs: number, mode: CountMode): Promise<RateLimitDecision> {
    return decisionOf((await this.pipe.run(COUNT_SCRIPT, [key], [String(windowMs / limit), String(windowMs), mode])) as Reply, limit);
  }

  /** Stores the revocation, then announces it so that every replica's fallback mirrors it. */
  async revoke(r: Revocation): Promise<void> {
    if (r.kind === 'token') await this.redis.set(keys.revokedToken(r.userId, r.tokenId), '1', 'EX', Math.max(1, Math.ceil(r.ttlSeconds)));
    else if (r.kind === 'user') await this.redis.gatewayRevokeUser(keys.revokedUser(r.userId), String(r.before), String(Math.max(1, Math.ceil(r.ttlSeconds))));
    else await this.redis.del(keys.session(r.userId, r.sessionId));
    await this.redis.publish(REVOCATION_CHANNEL, JSON.stringify(r));
  }

  epoch(candidate: string): Promise<string> {
    return this.redis.gatewayEpoch(EPOCH_KEY, candidate);
  }

  /**
   * Token revocations are set only where absent (NX); a user's is raised, never lowered (the
   * revoke script). A token revocation that names no user (announced by an earlier release) goes
   * back under the earlier layout's key, where one Redis still reads it.
   */
  async restore(revocations: readonly Revocation[]): Promise<void> {
    for (let i = 0; i < revocations.length; i += RESTORE_CHUNK) {
      const writes: Array<Promise<unknown>> = [];
      for (const r of revocations.slice(i, i + RESTORE_CHUNK)) {
        const ttl = String(Math.max(1, Math.ceil(r.kind === 'session' ? 0 : r.ttlSeconds)));
        if (r.kind === 'token') {
          const key = r.userId !== '' ? keys.revokedToken(r.userId, r.tokenId) : this.legacy ? legacyKeys.revokedToken(r.tokenId) : null;
          if (key !== null) writes.push(this.redis.set(key, '1', 'EX', ttl, 'NX'));
        } else if (r.kind === 'user') writes.push(this.redis.gatewayRevokeUser(keys.revokedUser(r.userId), String(r.before), ttl));
      }
      await Promise.all(writes);
    }
  }

  /**
   * The revocation keys (of both layouts), read with SCAN (never blocking Redis) on every primary,
   * with what is left of their lifetime.
   */
  async revocations(): Promise<Revocation[]> {
    const out: Revocation[] = [];
    const servers = isCluster(this.redis) ? this.redis.nodes('master') : [this.redis];
    for (const server of servers) {
      let cursor = '0';
      do {
        const [next, found] = await server.scan(cursor, 'MATCH', 'revoked:*', 'COUNT', 1000);
        cursor = next;
        if (found.length === 0) continue;
        const batch = server.pipeline();
        for (const key of found) batch.get(key).pttl(key);
        const replies = (await batch.exec()) ?? [];
        found.forEach((key, i) => {
          const value = replies[2 * i]?.[1] as string | null;
          const ttlMs = replies[2 * i + 1]?.[1] as number;
          if (value === null || ttlMs <= 0) return;
          const r = revocationOf(key, value, Math.ceil(ttlMs / 1000));
          if (r !== null) out.push(r);
        });
      } while (cursor !== '0');
    }
    return out;
  }

  async cacheSession(sessionId: string, userId: string, ttlSeconds: number): Promise<void> {
    await this.redis.set(keys.session(userId, sessionId), userId, 'EX', Math.max(1, Math.ceil(ttlSeconds)));
  }
}

export function isCluster(redis: Redis | Cluster): redis is Cluster {
  return (redis as Cluster).isCluster === true;
}

/**
 * A revocation key read back: `revoked:jti:{<user>}:<jti>`, `revoked:user:{<user>}`, or the
 * earlier layout's `revoked:jti:<jti>` and `revoked:user:<user>` (whose token revocations name no
 * user: the mirror keys tokens by id alone).
 */
function revocationOf(key: string, value: string, ttlSeconds: number): Revocation | null {
  const tagged = /^revoked:(jti|user):\{([^}]*)\}(?::(.*))?$/.exec(key);
  if (tagged !== null) {
    const userId = unescapeKeyPart(tagged[2]!);
    if (tagged[1] === 'jti') return tagged[3] === undefined ? null : { kind: 'token', userId, tokenId: unescapeKeyPart(tagged[3]), ttlSeconds };
    return { kind: 'user', userId, before: Number(value), ttlSeconds };
  }
  if (key.startsWith('revoked:jti:')) return { kind: 'token', userId: '', tokenId: unescapeKeyPart(key.slice('revoked:jti:'.length)), ttlSeconds };
  if (key.startsWith('revoked:user:')) return { kind: 'user', userId: unescapeKeyPart(key.slice('revoked:user:'.length)), before: Number(value), ttlSeconds };
  return null;
}

/** Parses an announcement from another replica; anything malformed is ignored. */
export function parseRevocation(message: string): Revocation | null {
  try {
    const r = JSON.parse(message) as Record<string, unknown>;
    // Announcements of earlier releases name no user for a token or a session: the mirror needs none.
    const userId = typeof r.userId === 'string' ? r.userId : '';
    if (r.kind === 'token' && typeof r.tokenId === 'string' && typeof r.ttlSeconds === 'number') return { kind: 'token', userId, tokenId: r.tokenId, ttlSeconds: r.ttlSeconds };
    if (r.kind === 'user' && typeof r.userId === 'string' && typeof r.before === 'number' && typeof r.ttlSeconds === 'number') {
      return { kind: 'user', userId: r.userId, before: r.before, ttlSeconds: r.ttlSeconds };
    }
    if (r.kind === 'session' && typeof r.sessionId === 'string') return { kind: 'session', userId, sessionId: r.sessionId };
  } catch {
    // not ours
  }
  return null;
}
