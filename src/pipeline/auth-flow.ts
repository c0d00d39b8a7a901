import { createHash } from 'node:crypto';
import { z } from 'zod';
import { MAX_REFRESH_TTL_SECONDS, tokenFacts, userRevocationTtl } from '../auth/revocation.js';
import type { Logger } from '../observability/logger.js';
import { keyPart, type Revocation } from '../stores/access-store.js';
import type { AccessControl } from '../stores/failover-access-store.js';
import { PASS, stage, type Exchange, type Refusal, type RouteStage, type Verdict } from './exchange.js';
import { invalid, isRefusal, readJson, type JsonBody } from './json-body.js';

/** The routes-file slice: what the gateway does besides proxying. */
export const authFlowSchema = {
  /**
   * login, refresh and logout validate the body first (and logout revokes the tokens); revoke is
   * the gateway's own revocation endpoint (revoke.ts).
   */
  action: z.enum(['login', 'refresh', 'logout', 'revoke'], { error: 'action is login, refresh, logout or revoke' }).optional(),
};

const EMAIL = z.email({ error: 'must be an email address' }).max(254, 'must be at most 254 characters');
export const JWT_SHAPE = z
  .string({ error: 'must be a string' })
  .max(8192, 'must be at most 8192 characters')
  .regex(/^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$/, 'must be a JWT');

/** The spec's login body. Unknown fields are refused: nothing unexpected reaches the auth service. */
const LOGIN = z.strictObject({
  email: EMAIL,
  password: z.string({ error: 'must be a string' }).min(1, 'must not be empty').max(1024, 'must be at most 1024 characters'),
  mfa_token: z.string({ error: 'must be a string of 6 digits' }).regex(/^\d{6}$/, 'must be 6 digits').optional(),
});
const REFRESH = z.strictObject({ refresh_token: JWT_SHAPE });
const LOGOUT = z.strictObject({ refresh_token: JWT_SHAPE.optional() });

export interface AuthFlowOptions {
  /** Failed logins per account (email) and per client IP in `failureWindowMs`, before 429. */
  maxFailuresPerAccount: number;
  maxFailuresPerIp: number;
  failureWindowMs: number;
  /** A user-wide revocation must outlive every token issued before it: the token lifetime cap. */
  maxTokenLifetimeSeconds: number;
  clockSkewSeconds: number;
}

export interface AuthFlowDeps {
  readonly store: AccessControl;
  readonly authFlow: AuthFlowOptions;
  readonly logger: Logger;
  /** Milliseconds since the epoch; tests move it. */
  readonly now?: () => number;
}

/** A refusal, or the validated body to send on (undefined: no body). */
type Outcome = Refusal | { send: unknown };

const EMPTY = Buffer.alloc(0);

/**
 * The auth endpoints the gateway does more than proxy. Their bodies are small, so they are read
 * whole, validated (400 names the field), then sent on as the object that was validated:
 * - login: failed attempts are counted per account and per client IP; past the limit the gateway
 *   answers 429 without asking the auth service. The password is never logged or stored; the
 *   account key is a hash of the address.
 * - refresh: a refresh token on the revocation list is refused (a logged-out session stays out).
 * - logout: the presented access token, its refresh token and its session are revoked for every
 *   replica before the auth service hears of it.
 */
class AuthFlows {
  private readonly now: () => number;
  constructor(private readonly deps: AuthFlowDeps) {
    this.now = deps.now ?? Date.now;
  }

  async run(ex: Exchange, action: 'login' | 'refresh' | 'logout', read: JsonBody | Refusal): Promise<Verdict> {
    if (isRefusal(read)) return read;
    const outcome = action === 'login' ? await this.login(ex, read.json) : action === 'refresh' ? await this.refresh(read.json) : await this.logout(ex, read.json, read.empty);
    if (!('send' in outcome)) return outcome;
    // The upstream gets the object that was validated, re-serialised: never bytes that another
    // JSON parser could read differently (a duplicated field, say).
    ex.body = outcome.send === undefined ? EMPTY : Buffer.from(JSON.stringify(outcome.send));
    return PASS;
  }

  private async login(ex: Exchange, json: unknown): Promise<Outcome> {
    const parsed = LOGIN.safeParse(json);
    if (!parsed.success) return invalid(parsed.error, json);
    const { store, logger } = this.deps;
    const { maxFailuresPerAccount, maxFailuresPerIp, failureWindowMs } = this.deps.authFlow;
    const accountKey = `login_failures:account:${createHash('sha256').update(parsed.data.email.toLowerCase()).digest('base64url').slice(0, 32)}`;
    const ipKey = `login_failures:ip:${keyPart(ex.clientIp)}`;
    // Every attempt is counted before it is sent (so concurrent guesses cannot all slip past the
    // check) and given back once the answer shows it was not a failed sign-in.
    const [account, ip] = await Promise.all([
      store.count(accountKey, maxFailuresPerAccount, failureWindowMs, 'take'),
      store.count(ipKey, maxFailuresPerIp, failureWindowMs, 'take'),
    ]);
    const giveBack = (taken: Array<[string, number]>) => {
      for (const [key, limit] of taken) {
        store.count(key, limit, failureWindowMs, 'refund').catch((err: unknown) => logger.warn({ cause: (err as Error).message }, 'cannot give back a login attempt'));
      }
    };
    const taken: Array<[string, number]> = [];
    if (account.allowed) taken.push([accountKey, maxFailuresPerAccount]);
    if (ip.allowed) taken.push([ipKey, maxFailuresPerIp]);
    const blocked = !account.allowed ? account : !ip.allowed ? ip : null;
    if (blocked !== null) {
      giveBack(taken);
      logger.warn({ request_id: ex.id, ip_address: ex.clientIp, scope: blocked === account ? 'account' : 'ip' }, 'login refused: too many failed attempts');
      return { code: 'GW_RATE_LIMITED', detail: 'too many failed sign-in attempts; wait before trying again', headers: { 'retry-after': String(Math.max(1, Math.ceil(blocked.retryAfterMs / 1000))) } };
    }
    ex.after = (done) => {
      const status = done.upstreamStatus;
      if (status !== 401 && status !== 403) giveBack(taken);
    };
    return { send: parsed.data };
  }

  private async refresh(json: unknown): Promise<Outcome> {
    const parsed = REFRESH.safeParse(json);
    if (!parsed.success) return invalid(parsed.error, json);
    const facts = tokenFacts(parsed.data.refresh_token);
    if (facts !== null && (await this.deps.store.isRevoked(facts))) {
      return { code: 'GW_AUTH_TOKEN_REVOKED', detail: 'the refresh token has been revoked; sign in again' };
    }
    return { send: parsed.data };
  }

  private async logout(ex: Exchange, json: unknown, emptyBody: boolean): Promise<Outcome> {
    const parsed = LOGOUT.safeParse(json);
    if (!parsed.success) return invalid(parsed.error, json);
    const who = ex.identity!;
    const { maxTokenLifetimeSeconds, clockSkewSeconds } = this.deps.authFlow;
    const nowS = Math.floor(this.now() / 1000);
    const revocations: Revocation[] = [
      // A token without a jti can only be revoked with every other token of its user.
      who.tokenId !== null
        ? { kind: 'token', userId: who.userId, tokenId: who.tokenId, ttlSeconds: Math.max(1, who.expiresAt - nowS + clockSkewSeconds) }
        : { kind: 'user', userId: who.userId, before: nowS, ttlSeconds: userRevocationTtl(maxTokenLifetimeSeconds, clockSkewSeconds) },
    ];
    const refresh = parsed.data.refresh_token !== undefined ? tokenFacts(parsed.data.refresh_token) : null;
    if (parsed.data.refresh_token !== undefined && refresh?.userId !== who.userId) {
      // Only the holder's own refresh token: a logout neither revokes nor forwards somebody else's.
      return { code: 'GW_INVALID_BODY', detail: 'refresh_token: is not a token of the signed-in user' };
    }
    if (refresh?.tokenId) {
      revocations.push({ kind: 'token', userId: who.userId, tokenId: refresh.tokenId, ttlSeconds: Math.min(MAX_REFRESH_TTL_SECONDS, Math.max(1, refresh.expiresAt - nowS)) });
    }
    if (who.sessionId !== null) revocations.push({ kind: 'session', userId: who.userId, sessionId: who.sessionId });
    try {
      await Promise.all(revocations.map((r) => this.deps.store.revoke(r)));
    } catch {
      return { code: 'GW_DEPENDENCY_UNAVAILABLE', detail: 'the logout cannot reach every gateway replica right now; retry shortly', headers: { 'retry-after': '1' } };
    }
    this.deps.logger.info({ request_id: ex.id, user_id: who.userId }, 'tokens revoked at logout');
    return { send: emptyBody ? undefined : parsed.data };
  }
}

/**
 * Stage: on login, refresh and logout routes, the body is read and validated before anything is
 * sent; the transform and forward stages then send the validated body.
 */
export const authFlow: RouteStage<z.output<z.ZodObject<typeof authFlowSchema>> & { maxBodyBytes: number; bodyTimeoutMs: number }, AuthFlowDeps> = {
  name: 'auth-flow',
  create(route, deps) {
    const action = route.action;
    if (action === undefined || action === 'revoke') return null;
    const flows = new AuthFlows(deps);
    const { maxBodyBytes, bodyTimeoutMs } = route;
    return stage('auth-flow', (ex, req) => readJson(req, maxBodyBytes, bodyTimeoutMs, action === 'logout').then((read) => flows.run(ex, action, read)));
  },
};
