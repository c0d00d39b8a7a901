import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import type { Redis } from 'ioredis';
import { decodeJwt } from 'jose';
import { REVOCATION_CHANNEL } from '../../src/stores/access-store.js';
import { routesFor, startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { expectProblem, send, type Answer } from '../helpers/http.js';
import { until, untilDatabase } from '../helpers/poll.js';
import { spawnGateway, type GatewayProcess } from '../helpers/process.js';
import { inspectRedis, startRedis, type TestRedis } from '../helpers/redis.js';
import { signToken } from '../helpers/tokens.js';
import { startUpstream, type TestUpstream } from '../helpers/upstream.js';

/**
 * Revocations across replicas sharing one Redis: what one gateway revokes, the others refuse
 * (within a second), and keep refusing while Redis is away, from the mirror each replica keeps of
 * the revocations announced on Redis pub/sub.
 */

const LOGOUT = '/api/auth/logout';
const REFRESH = '/api/auth/refresh';
const REVOCATIONS = '/api/gateway/revocations';
/** Every /health call reaches Redis, so "the gateway sees Redis" can be polled for. */
const ENV = { HEALTH_CACHE_MS: '0', RATE_LIMIT_PER_MINUTE: '100000' };

function routes(upstreamUrl: string): Record<string, unknown> {
  return routesFor(upstreamUrl, [
    { name: 'records', prefix: '/api/records' },
    { name: 'chart', prefix: '/api/chart', phi: true },
    { name: 'logout', path: LOGOUT, methods: ['POST'], action: 'logout' },
    { name: 'refresh', path: REFRESH, methods: ['POST'], auth: 'public', action: 'refresh' },
    { name: 'revocations', path: REVOCATIONS, methods: ['POST'], action: 'revoke', permission: 'tokens:revoke', service: undefined },
  ]);
}

let nextId = 0;
function freshUserId(label: string): string {
  return `${label}-${process.pid}-${++nextId}`;
}

function expectRevoked(answer: Answer): void {
  expectProblem(answer, 401, 'GW_AUTH_TOKEN_REVOKED');
}

/** Asserts a request with this token reaches the upstream (200). */
async function passes(url: string, token: string, what: string): Promise<void> {
  const res = await send(`${url}/api/records/${randomUUID()}`, { token });
  assert.equal(res.statusCode, 200, `${what}: ${res.text}`);
}

/**
 * Polls `url` with `token` until it is refused as revoked, for at most one second from the call:
 * the time a revocation may take to reach another replica. Nothing else may come back meanwhile.
 */
async function refusedWithinOneSecond(url: string, token: string, upstream: TestUpstream): Promise<number> {
  const started = performance.now();
  const path = `/api/records/${randomUUID()}`;
  let reached = 0;
  const answer = await until(`a refusal of the revoked token by ${url}`, 1_000, async () => {
    const res = await send(`${url}${path}`, { token });
    if (res.statusCode === 200) {
      reached++;
      return undefined;
    }
    return res;
  });
  expectRevoked(answer);
  assert.equal(upstream.received.filter((r) => r.url === path).length, reached, 'only the requests answered 200 reached the upstream');
  return performance.now() - started;
}

/** The number of connections subscribed to the revocation announcements. */
async function subscribers(keys: Redis): Promise<number> {
  const reply = (await keys.pubsub('NUMSUB', REVOCATION_CHANNEL)) as [string, number];
  return Number(reply[1]);
}

describe('two gateway processes sharing one redis', () => {
  let redis: TestRedis;
  let upstream: TestUpstream;
  let a: GatewayProcess;
  let b: GatewayProcess;
  let admin: string;

  before(async () => {
    redis = await startRedis();
    upstream = await startUpstream();
    const env = { ...ENV, REDIS_URL: redis.url };
    const started = await Promise.allSettled([spawnGateway(routes(upstream.url), env), spawnGateway(routes(upstream.url), env)]);
    const [first, second] = started.map((s) => (s.status === 'fulfilled' ? s.value : null));
    if (first) a = first;
    if (second) b = second;
    const failed = started.find((s) => s.status === 'rejected');
    if (failed !== undefined) throw (failed as PromiseRejectedResult).reason;
    await Promise.all([untilDatabase(a.url, 'healthy'), untilDatabase(b.url, 'healthy')]);
    admin = await signToken({ sub: freshUserId('admin'), role: 'admin' });
  });
  after(async () => {
    await Promise.all([a?.stop(), b?.stop()]);
    await upstream?.close();
    await redis?.stop();
  });

  it('a logout on A is refused on B within one second, its refresh token too; the user\'s other token passes', async () => {
    const user = freshUserId('logout');
    const token = await signToken({ sub: user });
    const other = await signToken({ sub: user });
    const refreshToken = await signToken({ sub: user, claims: { typ: 'refresh' }, expiresInSeconds: 3600 });
    // B has verified the token and serves it from its cache of verified tokens.
    await passes(b.url, token, 'B before the logout');
    await passes(b.url, token, 'B before the logout, again');

    const out = await send(`${a.url}${LOGOUT}`, { token, json: { refresh_token: refreshToken } });
    assert.equal(out.statusCode, 200, `logout on A: ${out.text}`);
    await refusedWithinOneSecond(b.url, token, upstream);

    const reached = upstream.received.length;
    expectRevoked(await send(`${b.url}${REFRESH}`, { json: { refresh_token: refreshToken } }));
    assert.equal(upstream.received.length, reached, 'the revoked refresh token is refused by B before the upstream');
    await passes(b.url, other, 'another token of the same user on B');
    await passes(a.url, other, 'another token of the same user on A');
  });

  it('an operator\'s revocation of a user on B is refused on A within one second, tokens without jti included', async () => {
    const user = freshUserId('operator');
    const withJti = await signToken({ sub: user });
    const withoutJti = await signToken({ sub: user, jti: null });
    const stranger = await signToken({ sub: freshUserId('stranger') });
    await passes(a.url, withJti, 'A before the revocation');
    await passes(a.url, withoutJti, 'A before the revocation (no jti)');

    const res = await send(`${b.url}${REVOCATIONS}`, { token: admin, json: { user_id: user } });
    assert.equal(res.statusCode, 200, res.text);
    await refusedWithinOneSecond(a.url, withJti, upstream);
    await refusedWithinOneSecond(a.url, withoutJti, upstream);
    await passes(a.url, stranger, 'another user on A');
  });

  it('a revocation by jti on A is refused on B within one second', async () => {
    const token = await signToken({ sub: freshUserId('jti') });
    await passes(b.url, token, 'B before the revocation');
    const res = await send(`${a.url}${REVOCATIONS}`, { token: admin, json: { jti: decodeJwt(token).jti, user_id: decodeJwt(token).sub } });
    assert.equal(res.statusCode, 200, res.text);
    await refusedWithinOneSecond(b.url, token, upstream);
  });
});

describe('a redis outage with two replicas', () => {
  let redis: TestRedis;
  let keys: Redis;
  let listener: Redis;
  let upstream: TestUpstream;
  let a: TestGateway;
  let b: GatewayProcess;
  let admin: string;
  /** Every announcement this process heard on the revocation channel. */
  const heard: Array<Record<string, unknown>> = [];

  before(async () => {
    redis = await startRedis();
    keys = inspectRedis(redis);
    upstream = await startUpstream();
    // A runs in this process, B in its own: A hears B's announcements the way any replica does.
    a = await startTestGateway(routes(upstream.url), { ...ENV, REDIS_URL: redis.url });
    b = await spawnGateway(routes(upstream.url), { ...ENV, REDIS_URL: redis.url });
    await Promise.all([untilDatabase(a.url, 'healthy'), untilDatabase(b.url, 'healthy')]);
    listener = inspectRedis(redis);
    listener.on('message', (_channel: string, message: string) => heard.push(JSON.parse(message) as Record<string, unknown>));
    await listener.subscribe(REVOCATION_CHANNEL);
    admin = await signToken({ sub: freshUserId('admin'), role: 'admin' });
  });
  after(async () => {
    listener?.disconnect();
    keys?.disconnect();
    await a?.close();
    await b?.stop();
    await upstream?.close();
    await redis?.stop();
  });

  /** A, B and this process's listener all subscribed: after a (re)connect, each subscribes on its own time. */
  async function everyoneSubscribed(): Promise<void> {
    await until('A, B and the test subscribed to the revocation announcements', 10_000, async () => ((await subscribers(keys)) >= 3 ? true : undefined), 50);
  }

  /**
   * Waits (bounded) until this process heard the announcements; A shares this process's event
   * loop. The PING that follows is answered only after Redis wrote out every announcement it had
   * to send, so A's copy sits in A's socket before Redis can be stopped.
   */
  async function announced(what: string, match: (r: Record<string, unknown>) => boolean): Promise<void> {
    await until(`the announcement of ${what}`, 1_000, async () => (heard.some(match) ? true : undefined), 5);
    assert.equal(await keys.ping(), 'PONG');
  }

  async function outage<T>(during: () => Promise<T>): Promise<T> {
    await redis.stop();
    try {
      return await during();
    } finally {
      await redis.start();
    }
  }

  it('PHI routes fail closed at once, other routes serve on the local limiter, revocations heard before the outage hold; all back without a restart', { timeout: 30_000 }, async () => {
    const bystander = await signToken({ sub: freshUserId('bystander') });
    const loggedOutUser = freshUserId('logged-out');
    const loggedOut = await signToken({ sub: loggedOutUser });
    const revokedUser = freshUserId('revoked-user');
    const revokedWithoutJti = await signToken({ sub: revokedUser, jti: null });
    const phiPath = () => `/api/chart/${randomUUID()}`;

    for (const token of [bystander, loggedOut, revokedWithoutJti]) await passes(a.url, token, 'A before the outage');
    const phi = await send(`${a.url}${phiPath()}`, { token: bystander });
    assert.equal(phi.statusCode, 200, `the PHI route before the outage: ${phi.text}`);

    await everyoneSubscribed();
    const loggedOutRefresh = await signToken({ sub: loggedOutUser, claims: { typ: 'refresh' }, expiresInSeconds: 3600 });
    const out = await send(`${b.url}${LOGOUT}`, { token: loggedOut, json: { refresh_token: loggedOutRefresh } });
    assert.equal(out.statusCode, 200, `logout on B: ${out.text}`);
    const revoked = await send(`${b.url}${REVOCATIONS}`, { token: admin, json: { user_id: revokedUser } });
    assert.equal(revoked.statusCode, 200, `user revocation on B: ${revoked.text}`);
    await announced('the logout', (r) => r.kind === 'token' && r.tokenId === decodeJwt(loggedOut).jti);
    await announced('the revocation of the refresh token', (r) => r.kind === 'token' && r.tokenId === decodeJwt(loggedOutRefresh).jti);
    await announced('the user revocation', (r) => r.kind === 'user' && r.userId === revokedUser);

    await outage(async () => {
      const reached = upstream.received.length;
      for (let i = 0; i < 3; i++) {
        const closed = await send(`${a.url}${phiPath()}`, { token: bystander });
        expectProblem(closed, 503, 'GW_AUTH_UNAVAILABLE');
        assert.equal(closed.headers['retry-after'], '1');
        assert.ok(closed.ms < 2_000, `the PHI refusal took ${closed.ms.toFixed(0)} ms; a Redis command may hold a request for 100 ms at most`);
      }
      assert.equal(upstream.received.length, reached, 'a PHI request is refused before the upstream while revocations cannot be checked');

      for (let i = 0; i < 3; i++) {
        const open = await send(`${a.url}/api/records/${randomUUID()}`, { token: bystander });
        assert.equal(open.statusCode, 200, `a non-PHI route during the outage: ${open.text}`);
        assert.match(String(open.headers.ratelimit), /^"default";r=\d+;t=\d+$/, 'limited by the per-process limiter');
        assert.ok(open.ms < 2_000, `a non-PHI request took ${open.ms.toFixed(0)} ms`);
      }

      await untilDatabase(a.url, 'degraded');
      const health = await send(`${a.url}/health`);
      assert.equal(health.statusCode, 200, 'a Redis outage degrades the gateway, it does not take it out of rotation');
      assert.equal((JSON.parse(health.text) as { status: string }).status, 'degraded');

      const before = upstream.received.length;
      expectRevoked(await send(`${a.url}/api/records/${randomUUID()}`, { token: loggedOut }));
      expectRevoked(await send(`${a.url}/api/records/${randomUUID()}`, { token: revokedWithoutJti }));
      expectRevoked(await send(`${a.url}${REFRESH}`, { json: { refresh_token: loggedOutRefresh } }));
      assert.equal(upstream.received.length, before, 'tokens revoked on B before the outage are refused by A during it, refresh tokens included');

      // A logout that other replicas would not hear of is not reported done.
      const logouts = upstream.received.filter((r) => r.url === LOGOUT).length;
      const late = await send(`${a.url}${LOGOUT}`, { token: bystander, json: {} });
      expectProblem(late, 503, 'GW_DEPENDENCY_UNAVAILABLE');
      assert.equal(upstream.received.filter((r) => r.url === LOGOUT).length, logouts, 'the auth service hears of no logout that failed');
    });

    // No restart: the PHI route serves again once the gateway's client has reconnected.
    const statuses = new Set<number>();
    await until('the PHI route answering 200 after redis returned', 10_000, async () => {
      const res = await send(`${a.url}${phiPath()}`, { token: bystander });
      statuses.add(res.statusCode);
      return res.statusCode === 200 ? true : undefined;
    }, 50);
    assert.deepEqual([...statuses].filter((s) => s !== 200 && s !== 503), [], 'only 503 until redis is back');
    await untilDatabase(a.url, 'healthy');
  });

  it('announcements made after redis came back reach A too (it subscribes again by itself)', { timeout: 30_000 }, async () => {
    const token = await signToken({ sub: freshUserId('after-reconnect') });
    await untilDatabase(a.url, 'healthy');
    await untilDatabase(b.url, 'healthy');
    await passes(a.url, token, 'A before the revocation');
    await everyoneSubscribed();
    const jti = decodeJwt(token).jti;
    const res = await send(`${b.url}${REVOCATIONS}`, { token: admin, json: { jti, user_id: decodeJwt(token).sub } });
    assert.equal(res.statusCode, 200, res.text);
    await announced('the revocation', (r) => r.kind === 'token' && r.tokenId === jti);

    await outage(async () => {
      expectRevoked(await send(`${a.url}/api/records/${randomUUID()}`, { token }));
    });
    await untilDatabase(a.url, 'healthy');
  });

  it('a token revoked before redis lost its data stays refused by the replicas that heard of it', async () => {
    const token = await signToken({ sub: freshUserId('after-data-loss') });
    await untilDatabase(a.url, 'healthy');
    await untilDatabase(b.url, 'healthy');
    await everyoneSubscribed();
    const jti = decodeJwt(token).jti;
    const res = await send(`${b.url}${REVOCATIONS}`, { token: admin, json: { jti, user_id: decodeJwt(token).sub } });
    assert.equal(res.statusCode, 200, res.text);
    await announced('the revocation', (r) => r.kind === 'token' && r.tokenId === jti);
    // The test's redis keeps nothing on disk: a restart loses every revocation it held.
    await outage(async () => undefined);
    await untilDatabase(a.url, 'healthy');
    await untilDatabase(b.url, 'healthy');
    expectRevoked(await send(`${a.url}/api/records/${randomUUID()}`, { token }));
    expectRevoked(await send(`${b.url}/api/records/${randomUUID()}`, { token }));
  });
});
