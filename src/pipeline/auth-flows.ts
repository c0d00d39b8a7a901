import { createHash } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { decodeJwt } from 'jose';
import { z } from 'zod';
import type { Logger } from '../observability/logger.js';
import { keyPart, type Revocation, type TokenFacts } from '../stores/access-store.js';
import type { AccessControl } from '../stores/failover-access-store.js';
import { writeProblem, type ErrorCode } from '../errors.js';
import type { StageResult } from './authenticate.js';
import type { Exchange } from './exchange.js';
import { readBody, TOO_LARGE } from './read-body.js';

const EMAIL = z.email({ error: 'must be an email address' }).max(254, 'must be at most 254 characters');
const JWT_SHAPE = z
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
const ID = z.string({ error: 'must be a string' }).min(1, 'must not be empty').max(128, 'must be at most 128 characters');
const EPOCH = z.number({ error: 'must be a number (seconds since the epoch)' }).int('must be whole seconds since the epoch').positive('must be positive');
/** `{ "jti", "expires_at"? }` or `{ "user_id", "issued_before"? }`; each field checked on its own, so errors name it. */
const REVOKE = z
  .strictObject({ jti: ID.optional(), expires_at: EPOCH.optional(), user_id: ID.optional(), issued_before: EPOCH.optional() })
  .superRefine((b, ctx) => {
    const byToken = b.jti !== undefined;
    if (byToken === (b.user_id !== undefined)) {
      ctx.addIssue({ code: 'custom', path: [byToken ? 'user_id' : 'jti'], message: 'send exactly one of jti (one token) or user_id (every token of a user)' });
    } else if (byToken && b.issued_before !== undefined) {
      ctx.addIssue({ code: 'custom', path: ['issued_before'], message: 'goes with user_id, not jti' });
    } else if (!byToken && b.expires_at !== undefined) {
      ctx.addIssue({ code: 'custom', path: ['expires_at'], message: 'goes with jti, not user_id' });
    }
  });

export interface AuthFlowOptions {
  /** Failed logins per account (email) and per client IP in `failureWindowMs`, before 429. */
  maxFailuresPerAccount: number;
  maxFailuresPerIp: number;
  failureWindowMs: number;
  /** A user-wide revocation must outlive every token issued before it: the token lifetime cap. */
  maxTokenLifetimeSeconds: number;
  clockSkewSeconds: number;
}

/** A refusal, or the validated body to send on (undefined: no body). */
type Outcome = NonNullable<StageResult> | { send: unknown };

const EMPTY = Buffer.alloc(0);

/** Hands the validated body on to the upstream. */
export type ForwardBody = (ex: Exchange, body: Buffer) => void;

/** A refresh token lives longer than an access token; its revocation is kept this long at most. */
const MAX_REFRESH_TTL_SECONDS = 30 * 24 * 3600;

/**
 * The auth endpoints the gateway does more than proxy. Their bodies are small, so they are read
 * whole, validated (400 names the field), then sent on:
 * - login: failed attempts are counted per account and per client IP; past the limit the gateway
 *   answers 429 without asking the auth service. The password is never logged or stored; the
 *   account key is a hash of the address.
 * - refresh: a refresh token on the revocation list is refused (a logged-out session stays out).
 * - logout: the presented access token, its refresh token and its session are revoked for every
 *   replica before the auth service hears of it.
 * - revoke: the gateway's own endpoint for operators: a token by `jti`, or every token of a user
 *   issued at or before a time.
 */
export class AuthFlows {
  constructor(
    private readonly store: AccessControl,
    private readonly options: AuthFlowOptions,
    private readonly logger: Logger,
    private readonly now: () => number = Date.now,
  ) {}

  run(ex: Exchange, req: IncomingMessage, res: ServerResponse, forwardBody: ForwardBody): Promise<void> {
    return readBody(req, ex.route!.maxBodyBytes).then(async (body) => {
      if (body === TOO_LARGE) return answer(res, ex, 'GW_BODY_TOO_LARGE', `request body exceeds ${ex.route!.maxBodyBytes} bytes`, { connection: 'close' });
      const route = ex.route!;
      let json: unknown = {};
      if (body.length > 0 || route.action !== 'logout') {
        const type = req.headers['content-type'];
        if (type === undefined || !/^application\/json\s*(;|$)/i.test(type)) {
          return answer(res, ex, 'GW_INVALID_BODY', 'send the body as Content-Type: application/json');
        }
        try {
          json = JSON.parse(body.toString('utf8'));
        } catch {
          return answer(res, ex, 'GW_INVALID_BODY', 'the body is not valid JSON');
        }
      }
      let outcome: Outcome;
      switch (route.action) {
        case 'login':
          outcome = await this.login(ex, json);
          break;
        case 'refresh':
          outcome = await this.refresh(json);
          break;
        case 'logout':
          outcome = await this.logout(ex, json, body.length === 0);
          break;
        default:
          return this.revoke(ex, res, json);
      }
      if (!('send' in outcome)) return answer(res, ex, outcome.code, outcome.detail, outcome.headers);
      // The upstream gets the object that was validated, re-serialised: never bytes that another
      // JSON parser could read differently (a duplicated field, say).
      forwardBody(ex, outcome.send === undefined ? EMPTY : Buffer.from(JSON.stringify(outcome.send)));
    });
  }

  private async login(ex: Exchange, json: unknown): Promise<Outcome> {
    const parsed = LOGIN.safeParse(json);
    if (!parsed.success) return invalid(parsed.error, json);
    const accountKey = `login_failures:account:${createHash('sha256').update(parsed.data.email.toLowerCase()).digest('base64url').slice(0, 32)}`;
    const ipKey = `login_failures:ip:${keyPart(ex.clientIp)}`;
    const { maxFailuresPerAccount, maxFailuresPerIp, failureWindowMs } = this.options;
    // Every attempt is counted before it is sent (so concurrent guesses cannot all slip past the
    // check) and given back once the answer shows it was not a failed sign-in.
    const [account, ip] = await Promise.all([
      this.store.count(accountKey, maxFailuresPerAccount, failureWindowMs, 'take'),
      this.store.count(ipKey, maxFailuresPerIp, failureWindowMs, 'take'),
    ]);
    const giveBack = (taken: Array<[string, number]>) => {
      for (const [key, limit] of taken) {
        this.store.count(key, limit, failureWindowMs, 'refund').catch((err: unknown) => this.logger.warn({ cause: (err as Error).message }, 'cannot give back a login attempt'));
      }
    };
    const taken: Array<[string, number]> = [];
    if (account.allowed) taken.push([accountKey, maxFailuresPerAccount]);
    if (ip.allowed) taken.push([ipKey, maxFailuresPerIp]);
    const blocked = !account.allowed ? account : !ip.allowed ? ip : null;
    if (blocked !== null) {
      giveBack(taken);
      this.logger.warn({ request_id: ex.id, ip_address: ex.clientIp, scope: blocked === account ? 'account' : 'ip' }, 'login refused: too many failed attempts');
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
    if (facts !== null && (await this.store.isRevoked(facts))) {
      return { code: 'GW_AUTH_TOKEN_REVOKED', detail: 'the refresh token has been revoked; sign in again' };
    }
    return { send: parsed.data };
  }

  private async logout(ex: Exchange, json: unknown, emptyBody: boolean): Promise<Outcome> {
    const parsed = LOGOUT.safeParse(json);
    if (!parsed.success) return invalid(parsed.error, json);
    const who = ex.identity!;
    const nowS = Math.floor(this.now() / 1000);
    const revocations: Revocation[] = [
      // A token without a jti can only be revoked with every other token of its user.
      who.tokenId !== null
        ? { kind: 'token', tokenId: who.tokenId, ttlSeconds: Math.max(1, who.expiresAt - nowS + this.options.clockSkewSeconds) }
        : { kind: 'user', userId: who.userId, before: nowS, ttlSeconds: this.userRevocationTtl() },
    ];
    const refresh = parsed.data.refresh_token !== undefined ? tokenFacts(parsed.data.refresh_token) : null;
    if (parsed.data.refresh_token !== undefined && refresh?.userId !== who.userId) {
      // Only the holder's own refresh token: a logout neither revokes nor forwards somebody else's.
      return { code: 'GW_INVALID_BODY', detail: 'refresh_token: is not a token of the signed-in user' };
    }
    if (refresh?.tokenId) {
      revocations.push({ kind: 'token', tokenId: refresh.tokenId, ttlSeconds: Math.min(MAX_REFRESH_TTL_SECONDS, Math.max(1, refresh.expiresAt - nowS)) });
    }
    if (who.sessionId !== null) revocations.push({ kind: 'session', sessionId: who.sessionId });
    try {
      await Promise.all(revocations.map((r) => this.store.revoke(r)));
    } catch {
      return { code: 'GW_DEPENDENCY_UNAVAILABLE', detail: 'the logout cannot reach every gateway replica right now; retry shortly', headers: { 'retry-after': '1' } };
    }
    this.logger.info({ request_id: ex.id, user_id: who.userId }, 'tokens revoked at logout');
    return { send: emptyBody ? undefined : parsed.data };
  }

  private async revoke(ex: Exchange, res: ServerResponse, json: unknown): Promise<void> {
    const parsed = REVOKE.safeParse(json);
    if (!parsed.success) return answer(res, ex, 'GW_INVALID_BODY', describe(parsed.error, json));
    const nowS = Math.floor(this.now() / 1000);
    const data = parsed.data;
    let revocation: Revocation;
    if (data.jti !== undefined) {
      const ttl = data.expires_at !== undefined ? data.expires_at - nowS + this.options.clockSkewSeconds : this.userRevocationTtl();
      if (ttl <= 0) return answer(res, ex, 'GW_INVALID_BODY', 'expires_at: the token has already expired');
      revocation = { kind: 'token', tokenId: data.jti, ttlSeconds: Math.min(ttl, MAX_REFRESH_TTL_SECONDS) };
    } else {
      revocation = { kind: 'user', userId: data.user_id!, before: Math.min(data.issued_before ?? nowS, nowS), ttlSeconds: this.userRevocationTtl() };
    }
    try {
      await this.store.revoke(revocation);
    } catch {
      return answer(res, ex, 'GW_DEPENDENCY_UNAVAILABLE', 'the revocation cannot reach every gateway replica right now; retry shortly', { 'retry-after': '1' });
    }
    this.logger.warn({ request_id: ex.id, user_id: ex.identity!.userId, revocation: revocation.kind, target: data.jti !== undefined ? 'token' : data.user_id }, 'revocation recorded');
    const body = JSON.stringify({ revoked: revocation.kind === 'token' ? { jti: revocation.tokenId } : { user_id: revocation.userId, issued_before: revocation.before } });
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body), 'x-request-id': ex.id, 'cache-control': 'no-store' });
    res.end(body);
  }

  /**
   * A revocation without a known expiry must outlive every token it covers, refresh tokens
   * included, which live longer than the access-token cap.
   */
  private userRevocationTtl(): number {
    return Math.max(MAX_REFRESH_TTL_SECONDS, this.options.maxTokenLifetimeSeconds + this.options.clockSkewSeconds);
  }
}

/**
 * The revocation-relevant claims of a refresh token, read without verifying it: the auth service
 * may sign refresh tokens with a key the gateway never holds, and a forged token gains nothing
 * here (it can only be refused, and the auth service verifies it anyway).
 */
function tokenFacts(token: string): (TokenFacts & { expiresAt: number }) | null {
  try {
    const claims = decodeJwt(token);
    if (typeof claims.sub !== 'string') return null;
    return {
      userId: claims.sub,
      tokenId: typeof claims.jti === 'string' ? claims.jti : null,
      issuedAt: typeof claims.iat === 'number' ? claims.iat : null,
      sessionId: null,
      expiresAt: typeof claims.exp === 'number' ? claims.exp : Number.MAX_SAFE_INTEGER,
    };
  } catch {
    return null;
  }
}

/** The first problem, naming its field: `email: must be an email address`, `password: is required`. */
function describe(error: z.ZodError, json: unknown): string {
  const issue = error.issues[0]!;
  if (issue.code === 'unrecognized_keys') return `${issue.keys.join(', ')}: not an accepted field`;
  const field = issue.path.join('.');
  if (field === '') return `body: ${issue.code === 'invalid_type' ? 'must be a JSON object' : issue.message}`;
  const missing = issue.path.length === 1 && typeof json === 'object' && json !== null && !(String(issue.path[0]) in json);
  return `${field}: ${missing ? 'is required' : issue.message}`;
}

function invalid(error: z.ZodError, json: unknown): NonNullable<StageResult> {
  return { code: 'GW_INVALID_BODY', detail: describe(error, json) };
}

function answer(res: ServerResponse, ex: Exchange, code: ErrorCode, detail: string, headers?: Record<string, string>): void {
  ex.errorCode = code;
  writeProblem(res, code, ex.id, detail, headers, ex.answerHeaders);
}
