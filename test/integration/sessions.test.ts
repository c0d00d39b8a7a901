import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import type { Redis } from 'ioredis';
import { TEST_USERS } from '../../dev/stand-ins/auth-rbac.js';
import { login, refresh, SESSIONS_PATH, startAuthService, type AuthService } from '../helpers/auth-service.js';
import { routesFor, shippedRoutes, startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { expectProblem, send, type Answer, type TimedAnswer } from '../helpers/http.js';
import { until, untilDatabase } from '../helpers/poll.js';
import { freePort } from '../helpers/ports.js';
import { inspectRedis, startRedis, type TestRedis } from '../helpers/redis.js';
import { signToken } from '../helpers/tokens.js';
import { startUpstream, type TestUpstream } from '../helpers/upstream.js';

/**
 * Sessions: a token carrying `sid` is validated once with the auth service
 * (GET /api/v1/auth/sessions/{id}: 200 {"active":true,"user_id":...} or 404), then cached as
 * `session:{sid}` -> user id for at most the spec's 2 hours. An ended session is 401; an auth
 * service that cannot answer is a dependency failure (503), never a verdict on the caller.
 */

const SESSION_TTL_SECONDS = 7200;
const provider = TEST_USERS.find((u) => u.role === 'health_provider')!;

let nextId = 0;
function freshUserId(label: string): string {
  return `${label}-${process.pid}-${++nextId}`;
}

/** A user with a live session at the auth service, and a token of that session. */
async function openSession(auth: AuthService, label: string): Promise<{ userId: string; sid: string; token: string }> {
  const userId = freshUserId(label);
  const sid = randomUUID();
  auth.sessions.set(sid, userId);
  return { userId, sid, token: await signToken({ sub: userId, claims: { sid } }) };
}

/** Script calls (the gateway's store checks) Redis has run so far. */
async function scriptCalls(keys: Redis): Promise<number> {
  const stats = await keys.info('commandstats');
  let calls = 0;
  for (const m of stats.matchAll(/^cmdstat_(evalsha|eval):calls=(\d+)/gm)) calls += Number(m[2]);
  return calls;
}

function expectSessionInvalid(answer: Answer): void {
  expectProblem(answer, 401, 'GW_AUTH_SESSION_INVALID');
  assert.match(String(answer.headers['www-authenticate']), /^Bearer realm="api-gateway", error="invalid_token"$/);
}

function expectUnverifiable(answer: Answer): void {
  expectProblem(answer, 503, 'GW_AUTH_UNAVAILABLE');
  assert.equal(answer.headers['retry-after'], '1');
  assert.equal(answer.headers['www-authenticate'], undefined, 'a dependency failure does not challenge the caller\'s token');
}

for (const store of ['redis', 'in-memory'] as const) {
  describe(`sessions with the ${store} store`, () => {
    let redis: TestRedis | null = null;
    let keys: Redis | null = null;
    let auth: AuthService;
    let upstream: TestUpstream;
    let gw: TestGateway;

    before(async () => {
      if (store === 'redis') {
        redis = await startRedis();
        keys = inspectRedis(redis);
      }
      auth = await startAuthService();
      upstream = await startUpstream();
      gw = await startTestGateway(
        shippedRoutes({ services: { backend: { instances: [upstream.url] } }, routes: [{ name: 'records', prefix: '/api/records', service: 'backend' }] }),
        { AUTH_SERVICE_URL: auth.url, CHAT_HISTORY_URL: upstream.url, HEALTH_CACHE_MS: '0', ...(redis !== null ? { REDIS_URL: redis.url } : {}) },
      );
      if (redis !== null) await untilDatabase(gw.url, 'healthy');
    });
    after(async () => {
      await gw?.close();
      await upstream?.close();
      await auth?.stop();
      keys?.disconnect();
      await redis?.stop();
    });

    async function get(token: string, path = `/api/records/${randomUUID()}`): Promise<TimedAnswer> {
      return send(`${gw.url}${path}`, { token });
    }

    async function passes(token: string, what: string): Promise<void> {
      const res = await get(token);
      assert.equal(res.statusCode, 200, `${what}: ${res.text}`);
    }

    it('validates a session once, then trusts it for every request of every token of that session', async () => {
      const { userId, sid, token } = await openSession(auth, 'once');
      for (let i = 0; i < 10; i++) await passes(token, `request ${i + 1}`);
      const chat = await get(token, `/api/v1/chat/history?session_id=${randomUUID()}`);
      assert.equal(chat.statusCode, 200, `a PHI route: ${chat.text}`);
      assert.equal(auth.sessionChecks(sid), 1, 'one session lookup for eleven requests');

      const sibling = await signToken({ sub: userId, claims: { sid } });
      for (let i = 0; i < 3; i++) await passes(sibling, `another token of the session, request ${i + 1}`);
      await Promise.all(Array.from({ length: 8 }, () => passes(token, 'a concurrent request')));
      assert.equal(auth.sessionChecks(sid), 1, 'the cache is per session, not per token');
      assert.equal(auth.sessionChecks(), auth.sessionChecks(sid), 'no lookup of any other session');
    });

    it('concurrent first requests of a session share one lookup', async () => {
      const { sid, token } = await openSession(auth, 'concurrent');
      const N = 8;
      // The lookup is held until every request has been checked against the store, so all of
      // them find the session uncached while the one lookup is still in flight.
      const scriptsBefore = keys !== null ? await scriptCalls(keys) : 0;
      const release = auth.hold();
      let answers: Promise<Answer[]>;
      try {
        answers = Promise.all(Array.from({ length: N }, () => get(token)));
        await until('the session lookup reaching the auth service', 2_000, async () => (auth.sessionChecks(sid) > 0 ? true : undefined), 5);
        if (keys !== null) await until(`${N} store checks in redis`, 2_000, async () => ((await scriptCalls(keys!)) - scriptsBefore >= N ? true : undefined), 5);
      } finally {
        release();
      }
      assert.deepEqual((await answers).map((a) => a.statusCode), Array<number>(N).fill(200));
      assert.equal(auth.sessionChecks(sid), 1);
    });

    if (store === 'redis') {
      it('caches the session in redis as session:{sid} holding the user id alone, for at most 2 hours', async () => {
        const { userId, sid, token } = await openSession(auth, 'cached');
        await passes(token, 'the first request');
        const key = `session:{${userId}}:${sid}`;
        // Written after the answer to the first request is decided; a moment later it is there.
        await until(`${key} in redis`, 1_000, async () => ((await keys!.exists(key)) === 1 ? true : undefined), 5);
        assert.equal(await keys!.type(key), 'string');
        assert.equal(await keys!.get(key), userId, 'the cache holds the user id and nothing else (no PHI)');
        const ttl = await keys!.ttl(key);
        assert.ok(ttl > 0 && ttl <= SESSION_TTL_SECONDS, `${key} has TTL ${ttl}; expected 0 < ttl <= ${SESSION_TTL_SECONDS}`);
        assert.ok(ttl > SESSION_TTL_SECONDS - 60, `${key} has TTL ${ttl}; expected the spec's 2 hours`);
        assert.deepEqual(await keys!.keys(`*${sid}*`), [key], 'no other key names the session');
      });

      it('refuses a token whose session redis holds for another user, without asking the auth service', async () => {
        const userId = freshUserId('mismatch');
        const sid = randomUUID();
        await keys!.set(`session:{${userId}}:${sid}`, freshUserId('owner'), 'EX', 600);
        const reached = upstream.received.length;
        expectSessionInvalid(await get(await signToken({ sub: userId, claims: { sid } })));
        assert.equal(auth.sessionChecks(sid), 0);
        assert.equal(upstream.received.length, reached);
      });
    }

    it('refuses an unknown session with 401 GW_AUTH_SESSION_INVALID before the upstream, and asks again next time', async () => {
      const sid = randomUUID();
      const userId = freshUserId('unknown');
      const token = await signToken({ sub: userId, claims: { sid } });
      const reached = upstream.received.length;
      expectSessionInvalid(await get(token));
      expectSessionInvalid(await get(token, `/api/v1/chat/history?session_id=${randomUUID()}`));
      assert.equal(upstream.received.length, reached, 'nothing reaches the upstream');
      assert.equal(auth.sessionChecks(sid), 2, 'an ended session is not cached as valid');
      if (keys !== null) assert.equal(await keys.exists(`session:{${userId}}:${sid}`), 0);
    });

    it('refuses a session the auth service holds for another user', async () => {
      const sid = randomUUID();
      auth.sessions.set(sid, freshUserId('owner'));
      expectSessionInvalid(await get(await signToken({ sub: freshUserId('intruder'), claims: { sid } })));
      assert.equal(auth.sessionChecks(sid), 1);
    });

    it('while the auth service is unreachable: an uncached session is 503 GW_AUTH_UNAVAILABLE (never 401), a cached one passes', async () => {
      const cached = await openSession(auth, 'cached-before-outage');
      await passes(cached.token, 'validated before the outage');
      const uncached = await openSession(auth, 'uncached');
      const reached = upstream.received.length;
      await auth.stop();
      try {
        for (let i = 0; i < 3; i++) {
          const res = await get(uncached.token);
          expectUnverifiable(res);
          assert.ok(res.ms < 2_000, `a refused connection answers at once, not after ${res.ms.toFixed(0)} ms`);
        }
        assert.equal(upstream.received.length, reached, 'an unverified session reaches no upstream');
        await passes(cached.token, 'a session cached before the outage');
      } finally {
        await auth.start();
      }
      await passes(uncached.token, 'the same session once the auth service is back');
      assert.equal(auth.sessionChecks(uncached.sid), 1, 'the failed attempts never reached the service; one lookup once it was back');
    });

    it('logout deletes the session from the cache: the session\'s other tokens are validated again, and refused once it ended', async () => {
      const first = await login(gw.url, provider);
      const second = await refresh(gw.url, first.refreshToken);
      assert.equal(second.sessionId, first.sessionId, 'a refreshed token belongs to the same session');
      await passes(first.accessToken, 'the first token');
      await passes(second.accessToken, 'the refreshed token');
      assert.equal(auth.sessionChecks(first.sessionId), 1);
      const key = `session:{${first.userId}}:${first.sessionId}`;
      if (keys !== null) await until(`${key} in redis`, 1_000, async () => ((await keys!.exists(key)) === 1 ? true : undefined), 5);

      const out = await send(`${gw.url}/api/v1/auth/logout`, { token: first.accessToken, json: {} });
      assert.equal(out.statusCode, 200, out.text);
      if (keys !== null) assert.equal(await keys.exists(key), 0, `logout deletes ${key}`);

      const reached = upstream.received.length;
      expectSessionInvalid(await get(second.accessToken));
      assert.equal(auth.sessionChecks(first.sessionId), 2, 'the session was looked up again after the logout');
      assert.equal(upstream.received.length, reached);
    });
  });
}

describe('an auth service that answers badly', () => {
  let auth: TestUpstream;
  let upstream: TestUpstream;
  let gw: TestGateway;
  const TIMEOUT_MS = 200;

  before(async () => {
    auth = await startUpstream((req, res) => {
      const sid = decodeURIComponent(new URL(req.url!, 'http://auth').pathname.slice(SESSIONS_PATH.length));
      req.resume();
      if (sid.startsWith('hang-')) return; // never answers
      const [status, body] = sid.startsWith('error-')
        ? [500, '{"error":"internal"}']
        : sid.startsWith('garbled-')
          ? [200, 'not json']
          : sid.startsWith('inactive-')
            ? [200, '{"active":false}']
            : sid.startsWith('gone-')
              ? [410, '{"error":"gone"}']
              : [503, '{"error":"unavailable"}'];
      res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
      res.end(body);
    });
    upstream = await startUpstream();
    gw = await startTestGateway(routesFor(upstream.url, [{ name: 'records', prefix: '/api/records' }]), { AUTH_SERVICE_URL: auth.url, AUTH_REQUEST_TIMEOUT_MS: String(TIMEOUT_MS) });
  });
  after(async () => {
    await gw?.close();
    await upstream?.close();
    await auth?.close();
  });

  async function withSession(sid: string): Promise<TimedAnswer> {
    return send(`${gw.url}/api/records/${randomUUID()}`, { token: await signToken({ sub: freshUserId('bad-auth'), claims: { sid } }) });
  }

  it('is 503 GW_AUTH_UNAVAILABLE for a 5xx, a body that is not JSON, or no answer within AUTH_REQUEST_TIMEOUT_MS', async () => {
    for (const prefix of ['error-', 'unavailable-', 'garbled-', 'hang-']) {
      const res = await withSession(`${prefix}${randomUUID()}`);
      expectUnverifiable(res);
      assert.ok(res.ms < TIMEOUT_MS + 1_500, `${prefix}: answered after ${res.ms.toFixed(0)} ms; the lookup may take ${TIMEOUT_MS} ms`);
    }
    assert.equal(upstream.received.length, 0);
  });

  it('is 401 GW_AUTH_SESSION_INVALID for a session the service reports inactive or gone', async () => {
    for (const prefix of ['inactive-', 'gone-']) expectSessionInvalid(await withSession(`${prefix}${randomUUID()}`));
    assert.equal(upstream.received.length, 0);
  });
});

describe('an auth service that cannot be reached at all', () => {
  let upstream: TestUpstream;
  let gw: TestGateway;

  before(async () => {
    upstream = await startUpstream();
    const closedPort = await freePort();
    gw = await startTestGateway(routesFor(upstream.url, [{ name: 'records', prefix: '/api/records' }]), { AUTH_SERVICE_URL: `http://127.0.0.1:${closedPort}` });
  });
  after(async () => {
    await gw?.close();
    await upstream?.close();
  });

  it('answers 503 GW_AUTH_UNAVAILABLE for every token with a session, and serves tokens without one', async () => {
    const token = await signToken({ sub: freshUserId('no-auth'), claims: { sid: randomUUID() } });
    for (let i = 0; i < 3; i++) expectUnverifiable(await send(`${gw.url}/api/records/${i}`, { token }));
    assert.equal(upstream.received.length, 0);
    const plain = await send(`${gw.url}/api/records/plain`, { token: await signToken({ sub: freshUserId('no-session') }) });
    assert.equal(plain.statusCode, 200, plain.text);
  });
});
