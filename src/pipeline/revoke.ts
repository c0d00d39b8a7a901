import { z } from 'zod';
import { MAX_REFRESH_TTL_SECONDS, userRevocationTtl } from '../auth/revocation.js';
import type { Revocation } from '../stores/access-store.js';
import { ANSWERED, stage, type RouteStage, type Verdict } from './exchange.js';
import type { AuthFlowDeps } from './auth-flow.js';
import { describe, isRefusal, readJson } from './json-body.js';

const ID = z.string({ error: 'must be a string' }).min(1, 'must not be empty').max(128, 'must be at most 128 characters');
const EPOCH = z.number({ error: 'must be a number (seconds since the epoch)' }).int('must be whole seconds since the epoch').positive('must be positive');
/**
 * `{ "jti", "user_id", "expires_at"? }` (one token: its id and its subject, since a revocation is
 * kept beside the user's other keys) or `{ "user_id", "issued_before"? }` (every token of a user);
 * each field checked on its own, so errors name it.
 */
const REVOKE = z
  .strictObject({ jti: ID.optional(), expires_at: EPOCH.optional(), user_id: ID.optional(), issued_before: EPOCH.optional() })
  .superRefine((b, ctx) => {
    const byToken = b.jti !== undefined;
    if (b.user_id === undefined) {
      ctx.addIssue({
        code: 'custom',
        path: ['user_id'],
        message: byToken ? "is required with jti: the token's subject (sub)" : 'send user_id (every token of a user), with jti for one token only',
      });
    } else if (byToken && b.issued_before !== undefined) {
      ctx.addIssue({ code: 'custom', path: ['issued_before'], message: 'goes with user_id alone, not with jti' });
    } else if (!byToken && b.expires_at !== undefined) {
      ctx.addIssue({ code: 'custom', path: ['expires_at'], message: 'goes with jti, not user_id alone' });
    }
  });

/**
 * Stage, the last of `action: revoke` routes: the gateway's own endpoint for operators. A token by
 * `jti` (with its `user_id`), or every token of a user issued at or before a time, is revoked for every replica, and
 * the gateway answers 200 itself; nothing is proxied.
 */
export const revoke: RouteStage<{ action?: string | undefined; maxBodyBytes: number; bodyTimeoutMs: number }, AuthFlowDeps> = {
  name: 'revoke',
  create(route, { store, authFlow, logger, now = Date.now }) {
    if (route.action !== 'revoke') return null;
    const { maxBodyBytes, bodyTimeoutMs } = route;
    const userTtl = userRevocationTtl(authFlow.maxTokenLifetimeSeconds, authFlow.clockSkewSeconds);
    return stage('revoke', async (ex, req, res): Promise<Verdict> => {
      const read = await readJson(req, maxBodyBytes, bodyTimeoutMs, false);
      if (isRefusal(read)) return read;
      const parsed = REVOKE.safeParse(read.json);
      if (!parsed.success) return { code: 'GW_INVALID_BODY', detail: describe(parsed.error, read.json) };
      const nowS = Math.floor(now() / 1000);
      const data = parsed.data;
      let revocation: Revocation;
      if (data.jti !== undefined) {
        const ttl = data.expires_at !== undefined ? data.expires_at - nowS + authFlow.clockSkewSeconds : userTtl;
        if (ttl <= 0) return { code: 'GW_INVALID_BODY', detail: 'expires_at: the token has already expired' };
        revocation = { kind: 'token', userId: data.user_id!, tokenId: data.jti, ttlSeconds: Math.min(ttl, MAX_REFRESH_TTL_SECONDS) };
      } else {
        revocation = { kind: 'user', userId: data.user_id!, before: Math.min(data.issued_before ?? nowS, nowS), ttlSeconds: userTtl };
      }
      try {
        await store.revoke(revocation);
      } catch {
        return { code: 'GW_DEPENDENCY_UNAVAILABLE', detail: 'the revocation cannot reach every gateway replica right now; retry shortly', headers: { 'retry-after': '1' } };
      }
      logger.warn({ request_id: ex.id, user_id: ex.identity!.userId, revocation: revocation.kind, target: data.jti !== undefined ? 'token' : data.user_id }, 'revocation recorded');
      const body = JSON.stringify({ revoked: revocation.kind === 'token' ? { jti: revocation.tokenId, user_id: revocation.userId } : { user_id: revocation.userId, issued_before: revocation.before } });
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body), 'x-request-id': ex.id, 'cache-control': 'no-store' });
      res.end(body);
      return ANSWERED;
    });
  },
};
