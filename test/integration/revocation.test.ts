import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import { decodeJwt } from 'jose';
import { TEST_USERS } from '../../dev/stand-ins/auth-rbac.js';
import { login, startAuthService, type AuthService } from '../helpers/auth-service.js';
import { shippedRoutes, startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { expectProblem, send, type Answer } from '../helpers/http.js';
import { untilDatabase } from '../helpers/poll.js';
import { startRedis, type TestRedis } from '../helpers/redis.js';
import { signToken } from '../helpers/tokens.js';
import { startUpstream, type TestUpstream } from '../helpers/upstream.js';

/**
 * Logout and the gateway's revocation endpoint, end to end: config/routes.yaml as shipped (the
 * auth routes go to the auth-rbac stand-in, chat-history to a recording upstream) plus two routes
 * of the test's own: a plain proxied route and a logout route whose service is a plain upstream.
 * Every test runs against the in-memory store (one process) and against a real redis-server.
 */

const REFRESH = '/api/v1/auth/refresh';
const LOGOUT = '/api/v1/auth/logout';
const REVOCATIONS = '/api/v1/gateway/revocations';
const PLAIN_LOGOUT = '/api/plain/logout';

const provider = TEST_USERS.find((u) => u.role === 'health_provider')!;
const resident = TEST_USERS.find((u) => u.email === 'resident@home.com')!;

/** The refusal of a revoked token: 401 GW_AUTH_TOKEN_REVOKED with an RFC 6750 challenge. */
function expectRevoked(answer: Answer): void {
  expectProblem(answer, 401, 'GW_AUTH_TOKEN_REVOKED');
  assert.match(String(answer.headers['www-authenticate']), /^Bearer realm="api-gateway", error="invalid_token"$/);
}

let nextId = 0;
function freshUserId(label: string): string {
  return `${label}-${process.pid}-${++nextId}`;
}

/** A refresh token as the gateway sees one: a JWT it decodes but never verifies. */
function refreshTokenOf(sub: string, options: { jti?: string | null; issuedAt?: number | null } = {}): Promise<string> {
  return signToken({ sub, claims: { typ: 'refresh' }, expiresInSeconds: 3600, ...options });
}

for (const store of ['in-memory', 'redis'] as const) {
  describe(`revocation with the ${store} store`, () => {
    let redis: TestRedis | null = null;
    let auth: AuthService;
    let upstream: TestUpstream;
    let gw: TestGateway;

    before(async () => {
      if (store === 'redis') redis = await startRedis();
      auth = await startAuthService();
      upstream = await startUpstream();
      gw = await startTestGateway(
        shippedRoutes({
          services: { backend: { instances: [upstream.url] } },
          routes: [
            { name: 'records', prefix: '/api/records', service: 'backend' },
            { name: 'plain-logout', path: PLAIN_LOGOUT, methods: ['POST'], service: 'backend', action: 'logout' },
          ],
        }),
        { AUTH_SERVICE_URL: auth.url, CHAT_HISTORY_URL: upstream.url, HEALTH_CACHE_MS: '0', ...(redis !== null ? { REDIS_URL: redis.url } : {}) },
      );
      if (redis !== null) await untilDatabase(gw.url, 'healthy');
    });
    after(async () => {
      await gw?.close();
      await upstream?.close();
      await auth?.stop();
      await redis?.stop();
    });

    /** Asserts that a request was refused before the upstream: nothing with this path arrived. */
    async function refusedBeforeUpstream(token: string, what: string): Promise<void> {
      const path = `/api/records/${randomUUID()}`;
      const reached = upstream.received.length;
      expectRevoked(await send(`${gw.url}${path}`, { token }));
      assert.equal(upstream.received.length, reached, `${what}: a refused request must not reach the upstream`);
      assert.ok(!upstream.received.some((r) => r.url === path));
    }

    async function passes(token: string, what: string): Promise<void> {
      const res = await send(`${gw.url}/api/records/${randomUUID()}`, { token });
      assert.equal(res.statusCode, 200, `${what}: ${res.text}`);
    }

    describe('logout', () => {
      it('revokes the presented access token on every route and its refresh token, before the upstream hears of them; the user\'s other session goes on', async () => {
        const first = await login(gw.url, provider);
        const second = await login(gw.url, provider);
        await passes(first.accessToken, 'the first session before its logout');
        const chatBefore = await send(`${gw.url}/api/v1/chat/history?session_id=${randomUUID()}`, { token: first.accessToken });
        assert.equal(chatBefore.statusCode, 200, chatBefore.text);

        const out = await send(`${gw.url}${LOGOUT}`, { token: first.accessToken, json: { refresh_token: first.refreshToken } });
        assert.equal(out.statusCode, 200, `logout: ${out.text}`);
        assert.deepEqual(JSON.parse(out.text), { logged_out: true }, 'the answer is the auth service\'s');
        assert.equal(auth.callsTo('POST', LOGOUT), 1, 'the auth service hears of the logout once');

        await refusedBeforeUpstream(first.accessToken, 'the logged-out access token on a proxied route');
        const reached = upstream.received.length;
        expectRevoked(await send(`${gw.url}/api/v1/chat/history?session_id=${randomUUID()}`, { token: first.accessToken }));
        assert.equal(upstream.received.length, reached, 'the PHI route refuses it before the upstream too');
        expectRevoked(await send(`${gw.url}${LOGOUT}`, { token: first.accessToken, json: {} }));
        assert.equal(auth.callsTo('POST', LOGOUT), 1, 'a second logout with a revoked token reaches nobody');

        const refreshes = auth.callsTo('POST', REFRESH);
        const refused = await send(`${gw.url}${REFRESH}`, { json: { refresh_token: first.refreshToken } });
        expectProblem(refused, 401, 'GW_AUTH_TOKEN_REVOKED');
        assert.equal(auth.callsTo('POST', REFRESH), refreshes, 'the revoked refresh token is refused before the auth service');

        await passes(second.accessToken, 'the same user\'s other session');
        const renewed = await send(`${gw.url}${REFRESH}`, { json: { refresh_token: second.refreshToken } });
        assert.equal(renewed.statusCode, 200, `the other session's refresh token still works: ${renewed.text}`);
      });

      it('with a plain upstream as its service: the token and the refresh token in the body are revoked, another token of the user passes', async () => {
        const user = freshUserId('plain');
        const token = await signToken({ sub: user, role: 'resident' });
        const other = await signToken({ sub: user, role: 'resident' });
        const refreshToken = await refreshTokenOf(user);
        await passes(token, 'before the logout');

        const reached = upstream.received.length;
        const out = await send(`${gw.url}${PLAIN_LOGOUT}`, { token, json: { refresh_token: refreshToken } });
        assert.equal(out.statusCode, 200, out.text);
        assert.equal(upstream.received.length, reached + 1, 'the logout itself is forwarded once');
        assert.equal(upstream.received.at(-1)!.url, PLAIN_LOGOUT);

        await refusedBeforeUpstream(token, 'the logged-out token');
        const refreshes = auth.callsTo('POST', REFRESH);
        expectProblem(await send(`${gw.url}${REFRESH}`, { json: { refresh_token: refreshToken } }), 401, 'GW_AUTH_TOKEN_REVOKED');
        assert.equal(auth.callsTo('POST', REFRESH), refreshes);
        await passes(other, 'another token of the same user');
      });

      it('without a body revokes the access token alone', async () => {
        const user = freshUserId('bodiless');
        const token = await signToken({ sub: user });
        const res = await send(`${gw.url}${PLAIN_LOGOUT}`, { method: 'POST', token });
        assert.equal(res.statusCode, 200, res.text);
        await refusedBeforeUpstream(token, 'after a logout without a body');
        await passes(await signToken({ sub: user }), 'another token of the same user');
      });

      it('is 400 when the body names a refresh token of another user, and revokes nothing', async () => {
        const holder = await login(gw.url, provider);
        const victim = await login(gw.url, resident);
        const logouts = auth.callsTo('POST', LOGOUT);

        const res = await send(`${gw.url}${LOGOUT}`, { token: holder.accessToken, json: { refresh_token: victim.refreshToken } });
        const problem = expectProblem(res, 400, 'GW_INVALID_BODY');
        assert.match(problem.detail, /^refresh_token: /, 'the detail names the field');
        assert.equal(auth.callsTo('POST', LOGOUT), logouts, 'the auth service never hears of it');

        await passes(holder.accessToken, 'the holder\'s token after the refused logout');
        const renewed = await send(`${gw.url}${REFRESH}`, { json: { refresh_token: victim.refreshToken } });
        assert.equal(renewed.statusCode, 200, `the other user's refresh token is untouched: ${renewed.text}`);
      });

      it('is 400 when the body names a refresh token of another user that carries no jti', async () => {
        const holder = freshUserId('holder');
        const token = await signToken({ sub: holder });
        const foreign = await refreshTokenOf(freshUserId('victim'), { jti: null });
        const reached = upstream.received.length;

        const res = await send(`${gw.url}${PLAIN_LOGOUT}`, { token, json: { refresh_token: foreign } });
        const problem = expectProblem(res, 400, 'GW_INVALID_BODY');
        assert.match(problem.detail, /^refresh_token: /);
        assert.equal(upstream.received.length, reached, 'another user\'s refresh token must not be handed to the auth service');
        await passes(token, 'the holder\'s token after the refused logout');
      });

      it('without a token is 401 and reaches no one', async () => {
        const reached = upstream.received.length;
        const logouts = auth.callsTo('POST', LOGOUT);
        const refreshToken = await refreshTokenOf(freshUserId('anonymous'));
        for (const path of [LOGOUT, PLAIN_LOGOUT]) {
          const res = await send(`${gw.url}${path}`, { json: { refresh_token: refreshToken } });
          expectProblem(res, 401, 'GW_AUTH_TOKEN_MISSING');
          assert.equal(res.headers['www-authenticate'], 'Bearer realm="api-gateway"');
        }
        assert.equal(auth.callsTo('POST', LOGOUT), logouts);
        assert.equal(upstream.received.length, reached);

        // Nothing was revoked: the refresh token named in the refused body still reaches the auth service.
        const refreshes = auth.callsTo('POST', REFRESH);
        const res = await send(`${gw.url}${REFRESH}`, { json: { refresh_token: refreshToken } });
        assert.notEqual(JSON.parse(res.text).code, 'GW_AUTH_TOKEN_REVOKED', res.text);
        assert.equal(auth.callsTo('POST', REFRESH), refreshes + 1);
      });

      it('of a token without jti revokes every token of its user issued until then, and no other user\'s', async () => {
        const user = freshUserId('no-jti');
        const now = Math.floor(Date.now() / 1000);
        const token = await signToken({ sub: user, jti: null });
        const older = await signToken({ sub: user, issuedAt: now - 60 });
        const stranger = await signToken({ sub: freshUserId('stranger') });

        const out = await send(`${gw.url}${PLAIN_LOGOUT}`, { token, json: {} });
        assert.equal(out.statusCode, 200, out.text);
        await refusedBeforeUpstream(token, 'the logged-out token without jti');
        await refusedBeforeUpstream(older, 'an older token of the same user');
        await passes(stranger, 'another user');
      });
    });

    describe('the revocation endpoint', () => {
      let admin: string;
      let system: string;
      before(async () => {
        admin = await signToken({ sub: freshUserId('admin'), role: 'admin' });
        system = await signToken({ sub: freshUserId('system'), role: 'system' });
      });

      async function revoke(token: string, body: unknown): Promise<Record<string, unknown>> {
        const res = await send(`${gw.url}${REVOCATIONS}`, { token, json: body });
        assert.equal(res.statusCode, 200, `revocation of ${JSON.stringify(body)}: ${res.text}`);
        assert.equal(res.headers['cache-control'], 'no-store');
        assert.match(String(res.headers['content-type']), /^application\/json/);
        return JSON.parse(res.text) as Record<string, unknown>;
      }

      it('an admin revokes one token by jti: it is refused on every route, the user\'s other tokens pass', async () => {
        const user = freshUserId('by-jti');
        const victim = await signToken({ sub: user, role: 'resident' });
        const sibling = await signToken({ sub: user, role: 'resident' });
        await passes(victim, 'before the revocation');

        const jti = decodeJwt(victim).jti!;
        assert.deepEqual(await revoke(admin, { jti, user_id: user }), { revoked: { jti, user_id: user } });
        await refusedBeforeUpstream(victim, 'the revoked token');
        expectRevoked(await send(`${gw.url}${LOGOUT}`, { token: victim, json: {} }));
        await passes(sibling, 'another token of the same user');
      });

      it('the system role revokes by jti with the token\'s expiry; a refresh token revoked so is refused at refresh', async () => {
        const user = freshUserId('by-jti-exp');
        const refreshToken = await refreshTokenOf(user);
        const { jti, exp } = decodeJwt(refreshToken);
        assert.deepEqual(await revoke(system, { jti, user_id: user, expires_at: exp }), { revoked: { jti, user_id: user } });
        const refreshes = auth.callsTo('POST', REFRESH);
        expectProblem(await send(`${gw.url}${REFRESH}`, { json: { refresh_token: refreshToken } }), 401, 'GW_AUTH_TOKEN_REVOKED');
        assert.equal(auth.callsTo('POST', REFRESH), refreshes);
      });

      it('revoking a user refuses every token of theirs issued at or before now, with or without jti, refresh tokens included; other users and later tokens pass', async () => {
        const user = freshUserId('by-user');
        const now = Math.floor(Date.now() / 1000);
        const tokens = {
          'with jti, issued a minute ago': await signToken({ sub: user, issuedAt: now - 60 }),
          'with jti, issued now': await signToken({ sub: user }),
          'without jti': await signToken({ sub: user, jti: null }),
          'without jti or iat': await signToken({ sub: user, jti: null, issuedAt: null }),
        };
        const refreshToken = await refreshTokenOf(user, { issuedAt: now - 30 });
        const stranger = await signToken({ sub: freshUserId('by-user-stranger') });
        for (const [what, token] of Object.entries(tokens)) await passes(token, `${what}, before the revocation`);

        const body = await revoke(admin, { user_id: user });
        const revoked = body.revoked as { user_id: string; issued_before: number };
        assert.equal(revoked.user_id, user);
        assert.ok(Number.isInteger(revoked.issued_before) && Math.abs(revoked.issued_before - Math.floor(Date.now() / 1000)) <= 2, `issued_before is now: ${JSON.stringify(body)}`);

        for (const [what, token] of Object.entries(tokens)) await refusedBeforeUpstream(token, what);
        const refreshes = auth.callsTo('POST', REFRESH);
        expectProblem(await send(`${gw.url}${REFRESH}`, { json: { refresh_token: refreshToken } }), 401, 'GW_AUTH_TOKEN_REVOKED');
        assert.equal(auth.callsTo('POST', REFRESH), refreshes, 'the user\'s refresh token is refused before the auth service');

        await passes(stranger, 'another user');
        await passes(await signToken({ sub: user, issuedAt: revoked.issued_before + 1 }), 'a token of the user issued after the revocation');
      });

      it('revoking a user\'s tokens issued before a given time leaves their later tokens alone', async () => {
        const user = freshUserId('by-user-before');
        const now = Math.floor(Date.now() / 1000);
        const old = await signToken({ sub: user, issuedAt: now - 120 });
        const boundary = await signToken({ sub: user, issuedAt: now - 60 });
        const recent = await signToken({ sub: user, issuedAt: now - 10 });
        const body = await revoke(system, { user_id: user, issued_before: now - 60 });
        assert.deepEqual(body, { revoked: { user_id: user, issued_before: now - 60 } });
        await refusedBeforeUpstream(old, 'a token issued before the given time');
        await refusedBeforeUpstream(boundary, 'a token issued at the given time');
        await passes(recent, 'a token issued after the given time');
      });

      it('is 403 for roles without tokens:revoke, and revokes nothing', async () => {
        const user = freshUserId('untouched');
        const target = await signToken({ sub: user });
        for (const role of ['resident', 'health_provider', 'care_staff', 'family_member']) {
          const caller = await signToken({ sub: freshUserId(role), role });
          for (const body of [{ jti: decodeJwt(target).jti, user_id: user }, { user_id: user }]) {
            const problem = expectProblem(await send(`${gw.url}${REVOCATIONS}`, { token: caller, json: body }), 403, 'GW_FORBIDDEN');
            assert.match(problem.detail, /tokens:revoke/);
          }
        }
        await passes(target, 'the token named in the refused revocations');
      });

      it('is 401 without a token', async () => {
        expectProblem(await send(`${gw.url}${REVOCATIONS}`, { json: { user_id: 'someone' } }), 401, 'GW_AUTH_TOKEN_MISSING');
      });

      it('is 400 for a body that is not a JSON object', async () => {
        const cases: Array<{ what: string; body: string; type?: string; detail: RegExp }> = [
          { what: 'no content type', body: '{"jti":"x"}', type: 'text/plain', detail: /application\/json/ },
          { what: 'not JSON', body: '{"jti":', detail: /not valid JSON/ },
          { what: 'an array', body: '[]', detail: /^body: / },
          { what: 'a string', body: '"jti"', detail: /^body: / },
          { what: 'an empty object', body: '{}', detail: /jti|user_id/ },
        ];
        for (const c of cases) {
          const res = await send(`${gw.url}${REVOCATIONS}`, { method: 'POST', token: admin, headers: { 'content-type': c.type ?? 'application/json' }, body: c.body });
          const problem = expectProblem(res, 400, 'GW_INVALID_BODY');
          assert.match(problem.detail, c.detail, `${c.what}: ${problem.detail}`);
        }
      });

      it('is 413 for a body over the route\'s 4096 bytes', async () => {
        const res = await send(`${gw.url}${REVOCATIONS}`, { token: admin, json: { user_id: 'u', padding: 'x'.repeat(5_000) } });
        expectProblem(res, 413, 'GW_BODY_TOO_LARGE');
      });

      it('is 400 naming the field for a field out of range, an unknown field, or an expiry in the past', async () => {
        const now = Math.floor(Date.now() / 1000);
        const cases: Array<[unknown, string]> = [
          [{ jti: '', user_id: 'u' }, 'jti'],
          [{ jti: 'x'.repeat(129), user_id: 'u' }, 'jti'],
          [{ user_id: '' }, 'user_id'],
          [{ jti: 'a' }, 'user_id'],
          [{ jti: 'a', user_id: 'u', expires_at: -1 }, 'expires_at'],
          [{ jti: 'a', user_id: 'u', expires_at: now - 3600 }, 'expires_at'],
          [{ jti: 'a', user_id: 'u', issued_before: now }, 'issued_before'],
          [{ user_id: 'u', expires_at: now + 60 }, 'expires_at'],
          [{ user_id: 'u', issued_before: 0 }, 'issued_before'],
          [{ jti: 'a', user_id: 'u', reason: 'stolen' }, 'reason'],
        ];
        for (const [body, field] of cases) {
          const problem = expectProblem(await send(`${gw.url}${REVOCATIONS}`, { token: admin, json: body }), 400, 'GW_INVALID_BODY');
          assert.match(problem.detail, new RegExp(`^${field}: `), `${JSON.stringify(body)} -> "${problem.detail}" should name ${field}`);
        }
      });

      it('is 400 naming the field for a field of the wrong type', async () => {
        const cases: Array<[unknown, string]> = [
          [{ jti: 42, user_id: 'u' }, 'jti'],
          [{ user_id: ['u'] }, 'user_id'],
          [{ jti: 'a', user_id: 'u', expires_at: 'tomorrow' }, 'expires_at'],
          [{ user_id: 'u', issued_before: 1.5 }, 'issued_before'],
        ];
        const details: string[] = [];
        for (const [body, field] of cases) {
          const problem = expectProblem(await send(`${gw.url}${REVOCATIONS}`, { token: admin, json: body }), 400, 'GW_INVALID_BODY');
          if (!new RegExp(`^${field}: `).test(problem.detail)) details.push(`${JSON.stringify(body)} -> "${problem.detail}" (should name ${field})`);
        }
        assert.deepEqual(details, [], 'every detail should start with the offending field');
      });

    });
  });
}
