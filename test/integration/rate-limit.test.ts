import assert from 'node:assert/strict';
import { setTimeout as delay } from 'node:timers/promises';
import { after, before, describe, it } from 'node:test';
import { Redis } from 'ioredis';
import { Agent, request } from 'undici';
import { routesFor, startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { expectProblem, read, type Answer } from '../helpers/http.js';
import { spawnGateway, type GatewayProcess } from '../helpers/process.js';
import { startRedis, type TestRedis } from '../helpers/redis.js';
import { signToken } from '../helpers/tokens.js';
import { startUpstream, type TestUpstream } from '../helpers/upstream.js';

const LIMIT = 5;
const WINDOW_MS = 60_000;
/** Far above any answer these tests expect, so a hang fails the request instead of the whole run. */
const HANG_MS = 5_000;
/** Every /health call reaches Redis, so "the gateway sees Redis" can be polled for. */
const ENV = { RATE_LIMIT_PER_MINUTE: String(LIMIT), RATE_LIMIT_PER_ADDRESS_PER_MINUTE: String(LIMIT), HEALTH_CACHE_MS: '0' };

interface Timed extends Answer {
  ms: number;
}

async function send(url: string, token?: string, headers: Record<string, string> = {}): Promise<Timed> {
  const started = performance.now();
  const auth: Record<string, string> = token === undefined ? {} : { authorization: `Bearer ${token}` };
  const answer = await read(request(url, { headers: { ...auth, ...headers }, headersTimeout: HANG_MS, bodyTimeout: HANG_MS }));
  return { ...answer, ms: performance.now() - started };
}

function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

/** The RateLimit field (draft-ietf-httpapi-ratelimit-headers) of an answer: remaining and reset seconds. */
function rateLimitOf(answer: Answer, policy: string): { r: number; t: number } {
  const value = answer.headers.ratelimit;
  assert.equal(typeof value, 'string', `no RateLimit header on a ${answer.statusCode} answer`);
  const m = new RegExp(`^"${escapeRegExp(policy)}";r=(\\d+);t=(\\d+)$`).exec(value as string);
  assert.ok(m, `RateLimit "${String(value)}" is not "${policy}";r=<n>;t=<n>`);
  const t = Number(m[2]);
  assert.ok(t >= 0 && t <= WINDOW_MS / 1000, `RateLimit t=${t} lies outside the ${WINDOW_MS / 1000} s window`);
  return { r: Number(m[1]), t };
}

function policyOf(name: string, perMinute: number): string {
  return `"${name}";q=${perMinute};w=60`;
}

function retryAfterOf(answer: Answer): number {
  const value = answer.headers['retry-after'];
  assert.equal(typeof value, 'string', `no Retry-After on a ${answer.statusCode} answer`);
  assert.match(value as string, /^\d+$/, 'Retry-After is delay-seconds: a non-negative integer');
  const seconds = Number(value);
  assert.ok(seconds >= 1, `Retry-After ${seconds} invites an immediate retry`);
  return seconds;
}

/** Asserts a 429 in the gateway's problem shape, with the limit's headers. */
function expectLimited(answer: Answer, policy: string, perMinute: number): void {
  expectProblem(answer, 429, 'GW_RATE_LIMITED');
  const retryAfter = retryAfterOf(answer);
  assert.ok(retryAfter <= Math.ceil(WINDOW_MS / perMinute / 1000), `Retry-After ${retryAfter} s is longer than one emission interval of ${perMinute}/min`);
  assert.equal(answer.headers['ratelimit-policy'], policyOf(policy, perMinute));
  assert.equal(rateLimitOf(answer, policy).r, 0);
}

/** Polls with a bounded number of attempts: some state changes (a reconnect) announce themselves to no one. */
async function until<T>(what: string, attempts: number, probe: () => Promise<T | undefined>, pauseMs = 50): Promise<T> {
  for (let i = 0; i < attempts; i++) {
    const found = await probe();
    if (found !== undefined) return found;
    await delay(pauseMs);
  }
  assert.fail(`${what} did not happen within ${attempts} attempts`);
}

async function databaseStatus(url: string): Promise<string> {
  const res = await send(`${url}/health`);
  return (JSON.parse(res.text) as { dependencies: { database: string } }).dependencies.database;
}

/**
 * The gateway connects to Redis after it starts listening; until then its decisions are
 * per-process. Tests about the shared store begin once /health says the gateway sees Redis.
 */
function untilDatabase(url: string, status: 'healthy' | 'degraded'): Promise<true> {
  return until(`${url}/health reporting the database ${status}`, 200, async () => ((await databaseStatus(url)) === status ? true : undefined));
}

/** A client of our own to look at the keys the gateway writes; reconnect noise around an outage is expected. */
function inspect(redis: TestRedis): Redis {
  const client = new Redis(redis.url, { maxRetriesPerRequest: 1, connectTimeout: 1_000 });
  client.on('error', () => undefined);
  return client;
}

let nextUser = 0;
/** A subject no earlier request used, so each test starts on a fresh budget. */
async function freshUser(label: string): Promise<{ id: string; token: string }> {
  const id = `${label}-${process.pid}-${++nextUser}`;
  return { id, token: await signToken({ sub: id }) };
}

describe('rate limiting on a real redis-server', () => {
  let redis: TestRedis;
  let keys: Redis;
  let upstream: TestUpstream;
  let gw: TestGateway;
  const REPORTS_LIMIT = 3;
  const BURST_LIMIT = 600;

  before(async () => {
    redis = await startRedis();
    keys = inspect(redis);
    upstream = await startUpstream();
    gw = await startTestGateway(
      routesFor(upstream.url, [
        { name: 'records', prefix: '/api/records' },
        { name: 'notes', prefix: '/api/notes' },
        { name: 'reports', prefix: '/api/reports', rateLimit: { perMinute: REPORTS_LIMIT } },
        { name: 'burst', prefix: '/api/burst', rateLimit: { perMinute: BURST_LIMIT } },
        { name: 'open', prefix: '/public', auth: 'public' },
      ]),
      { ...ENV, REDIS_URL: redis.url },
    );
    await untilDatabase(gw.url, 'healthy');
  });
  after(async () => {
    await gw?.close();
    await upstream?.close();
    keys?.disconnect();
    await redis?.stop();
  });

  it('admits a user L requests with counting-down RateLimit headers, then answers 429 without calling the upstream; other users are independent', async () => {
    const alice = await freshUser('alice');
    const remaining: number[] = [];
    for (let i = 0; i < LIMIT; i++) {
      const res = await send(`${gw.url}/api/records/${i}`, alice.token);
      assert.equal(res.statusCode, 200, `request ${i + 1} of ${LIMIT}: ${res.text}`);
      assert.equal(res.headers['ratelimit-policy'], policyOf('default', LIMIT));
      remaining.push(rateLimitOf(res, 'default').r);
    }
    assert.deepEqual(remaining, [4, 3, 2, 1, 0]);

    const reached = upstream.received.length;
    const refused = await send(`${gw.url}/api/records/over`, alice.token);
    expectLimited(refused, 'default', LIMIT);
    assert.equal(upstream.received.length, reached, 'a refused request must not reach the upstream');
    assert.ok(!upstream.received.some((r) => r.url === '/api/records/over'));

    const bob = await freshUser('bob');
    const other = await send(`${gw.url}/api/records/1`, bob.token);
    assert.equal(other.statusCode, 200, `another user is not limited by the first: ${other.text}`);
    assert.equal(rateLimitOf(other, 'default').r, LIMIT - 1);
    assert.equal((await send(`${gw.url}/api/records/again`, alice.token)).statusCode, 429, 'and the first user is still limited');

    // The spec's key, with the spec's one-minute lifetime.
    const ttl = await keys.pttl(`rate_limit:{${alice.id}}`);
    assert.ok(ttl > 0 && ttl <= WINDOW_MS, `rate_limit:{${alice.id}} has PTTL ${ttl}; expected 0 < ttl <= ${WINDOW_MS}`);
    assert.ok((await keys.pttl(`rate_limit:{${bob.id}}`)) > 0, `no rate_limit:{${bob.id}} key in Redis`);
  });

  it('limits anonymous traffic by the socket address: X-Forwarded-For and X-Real-IP from an untrusted peer buy no fresh budget', async () => {
    const passed: number[] = [];
    for (let i = 0; i < LIMIT; i++) {
      const spoof = `198.51.100.${i + 1}`;
      const res = await send(`${gw.url}/public/${i}`, undefined, { 'x-forwarded-for': spoof, 'x-real-ip': spoof });
      assert.equal(res.statusCode, 200, res.text);
      passed.push(rateLimitOf(res, 'default').r);
    }
    assert.deepEqual(passed, [4, 3, 2, 1, 0], 'each spoofed address must draw on the one budget of the real address');
    const reached = upstream.received.length;
    const refused = await send(`${gw.url}/public/over`, undefined, { 'x-forwarded-for': '203.0.113.9', 'x-real-ip': '203.0.113.10' });
    expectLimited(refused, 'default', LIMIT);
    assert.equal(upstream.received.length, reached);

    assert.ok((await keys.pttl('rate_limit:{ip:127.0.0.1}')) > 0, 'anonymous traffic is counted under rate_limit:{ip:<socket address>}');
    const spoofedKeys = [...(await keys.keys('rate_limit:*198.51.100*')), ...(await keys.keys('rate_limit:*203.0.113*'))];
    assert.deepEqual(spoofedKeys, [], 'no budget may be opened for an address the client chose');
  });

  it('counts a route with its own limit in its own key, apart from the default budget other routes share', async () => {
    const carol = await freshUser('carol');
    for (let i = 0; i < REPORTS_LIMIT; i++) {
      const res = await send(`${gw.url}/api/reports/${i}`, carol.token);
      assert.equal(res.statusCode, 200, res.text);
      assert.equal(res.headers['ratelimit-policy'], policyOf('reports', REPORTS_LIMIT));
      assert.equal(rateLimitOf(res, 'reports').r, REPORTS_LIMIT - 1 - i);
    }
    expectLimited(await send(`${gw.url}/api/reports/over`, carol.token), 'reports', REPORTS_LIMIT);
    assert.ok((await keys.pttl(`rate_limit:{${carol.id}}:reports`)) > 0, `no rate_limit:{${carol.id}}:reports key in Redis`);
    assert.equal(await keys.exists(`rate_limit:{${carol.id}}`), 0, 'the route with its own limit must not draw on the default budget');

    // The default budget is untouched by the reports route, and shared by the routes without a limit of their own.
    for (let i = 0; i < LIMIT; i++) {
      const res = await send(`${gw.url}/api/${i % 2 === 0 ? 'records' : 'notes'}/${i}`, carol.token);
      assert.equal(res.statusCode, 200, `default-budget request ${i + 1}: ${res.text}`);
      assert.equal(rateLimitOf(res, 'default').r, LIMIT - 1 - i);
    }
    expectLimited(await send(`${gw.url}/api/notes/over`, carol.token), 'default', LIMIT);
    expectLimited(await send(`${gw.url}/api/reports/still-over`, carol.token), 'reports', REPORTS_LIMIT);
  });

  it('never admits more than L + t*L/60s in a burst of t ms (600/min: one per 100 ms after the first 600)', { timeout: 15_000 }, async (t) => {
    const dave = await freshUser('dave');
    const headers = { authorization: `Bearer ${dave.token}` };
    const BURST_MS = 400;
    // A slow machine may not reach 600 requests in 400 ms; the burst then goes on until the first
    // refusal. The bound is checked against whatever time it took.
    const CAP_MS = 5_000;
    const CONCURRENCY = 8;
    const agent = new Agent({ connections: CONCURRENCY });
    const counts = { passed: 0, limited: 0, other: [] as number[] };
    const reached = upstream.received.length;
    const started = performance.now();
    const elapsed = () => performance.now() - started;
    const worker = async () => {
      while (elapsed() < BURST_MS || (counts.limited === 0 && elapsed() < CAP_MS)) {
        const res = await request(`${gw.url}/api/burst/x`, { dispatcher: agent, headers, headersTimeout: HANG_MS, bodyTimeout: HANG_MS });
        await res.body.dump();
        if (res.statusCode === 200) counts.passed++;
        else if (res.statusCode === 429) counts.limited++;
        else counts.other.push(res.statusCode);
      }
    };
    try {
      await Promise.all(Array.from({ length: CONCURRENCY }, worker));
    } finally {
      await agent.close();
    }
    const elapsedMs = elapsed();
    const bound = BURST_LIMIT + Math.floor((elapsedMs * BURST_LIMIT) / WINDOW_MS) + 1;
    const summary = `${counts.passed} passed, ${counts.limited} refused in ${elapsedMs.toFixed(0)} ms (bound ${bound})`;
    t.diagnostic(summary);
    assert.deepEqual(counts.other, [], `only 200 and 429 expected; ${summary}`);
    assert.ok(counts.limited > 0, `the burst was never limited: ${summary}`);
    assert.ok(counts.passed <= bound, `more passed than GCRA allows: ${summary}`);
    assert.ok(counts.passed >= BURST_LIMIT, `the first ${BURST_LIMIT} of a fresh budget should all pass: ${summary}`);
    assert.equal(upstream.received.length - reached, counts.passed, 'exactly the admitted requests reach the upstream');
  });
});

describe('anonymous traffic through proxies', () => {
  let redis: TestRedis;
  let upstream: TestUpstream;
  const gateways: TestGateway[] = [];

  before(async () => {
    redis = await startRedis();
    upstream = await startUpstream();
  });
  after(async () => {
    for (const gw of gateways) await gw.close();
    await upstream?.close();
    await redis?.stop();
  });

  async function gatewayWith(name: string, trustedProxies: string): Promise<TestGateway> {
    // Each gateway counts in a route key of its own, so they can share one Redis.
    const gw = await startTestGateway(routesFor(upstream.url, [{ name, prefix: '/public', auth: 'public', rateLimit: { perMinute: LIMIT } }]), {
      ...ENV,
      REDIS_URL: redis.url,
      TRUSTED_PROXIES: trustedProxies,
    });
    gateways.push(gw);
    await untilDatabase(gw.url, 'healthy');
    return gw;
  }

  async function exhaustWithSpoofedAddresses(gw: TestGateway): Promise<number[]> {
    const statuses: number[] = [];
    for (let i = 0; i <= LIMIT; i++) {
      const spoof = `203.0.113.${i + 1}`;
      statuses.push((await send(`${gw.url}/public/${i}`, undefined, { 'x-forwarded-for': spoof, 'x-real-ip': spoof })).statusCode);
    }
    return statuses;
  }

  it('a peer outside TRUSTED_PROXIES gets no fresh budget by naming another address', async () => {
    const gw = await gatewayWith('untrusted-peer', '10.0.0.0/8,192.168.0.0/16');
    assert.deepEqual(await exhaustWithSpoofedAddresses(gw), [200, 200, 200, 200, 200, 429]);
  });

  it('a trusted proxy does name the client, so each forwarded address has its own budget (the check above can tell)', async () => {
    const gw = await gatewayWith('trusted-peer', '127.0.0.1');
    assert.deepEqual(await exhaustWithSpoofedAddresses(gw), [200, 200, 200, 200, 200, 200]);
  });
});

describe('three gateway processes sharing one redis', () => {
  const SHARED_LIMIT = 10;
  let redis: TestRedis;
  let upstream: TestUpstream;
  let gateways: GatewayProcess[] = [];

  before(async () => {
    redis = await startRedis();
    upstream = await startUpstream();
    const routes = routesFor(upstream.url, [{ name: 'records', prefix: '/api/records' }]);
    // A generous command timeout: on a busy machine a late answer would send a request to the
    // per-process fallback, which is another test's subject (redis-timeouts.test.ts), not this one's.
    const env = { ...ENV, RATE_LIMIT_PER_MINUTE: String(SHARED_LIMIT), REDIS_URL: redis.url, REDIS_COMMAND_TIMEOUT_MS: '2000' };
    const started = await Promise.allSettled([0, 1, 2].map(() => spawnGateway(routes, env)));
    gateways = started.flatMap((s) => (s.status === 'fulfilled' ? [s.value] : []));
    const failed = started.find((s) => s.status === 'rejected');
    if (failed !== undefined) throw (failed as PromiseRejectedResult).reason;
    await Promise.all(gateways.map((g) => untilDatabase(g.url, 'healthy')));
  });
  after(async () => {
    await Promise.all(gateways.map((g) => g.stop()));
    await upstream?.close();
    await redis?.stop();
  });

  it('admits exactly L of one user\'s requests in total, whichever process each lands on', { timeout: 20_000 }, async () => {
    const erin = await freshUser('erin');
    const started = performance.now();
    const answers = await Promise.all(Array.from({ length: 3 * SHARED_LIMIT }, (_, i) => send(`${gateways[i % 3]!.url}/api/records/${i}`, erin.token)));
    const elapsedMs = performance.now() - started;
    const statuses = answers.map((a) => a.statusCode);
    const passed = statuses.filter((s) => s === 200).length;
    const limited = statuses.filter((s) => s === 429).length;
    // One more token is earned every 6 s; the requests take a fraction of that.
    assert.ok(elapsedMs < WINDOW_MS / SHARED_LIMIT, `the requests took ${elapsedMs.toFixed(0)} ms, long enough to earn another token`);
    assert.equal(passed, SHARED_LIMIT, `statuses: ${statuses.join(',')}`);
    assert.equal(limited, 2 * SHARED_LIMIT, `statuses: ${statuses.join(',')}`);
    assert.equal(upstream.received.length, SHARED_LIMIT);
  });
});

describe('a redis outage', () => {
  let redis: TestRedis;
  let upstream: TestUpstream;
  let gw: TestGateway;
  const GUARDED_LIMIT = 100;

  before(async () => {
    redis = await startRedis();
    upstream = await startUpstream();
    gw = await startTestGateway(
      routesFor(upstream.url, [
        { name: 'records', prefix: '/api/records' },
        { name: 'guarded', prefix: '/api/guarded', rateLimit: { perMinute: GUARDED_LIMIT, failClosed: true } },
      ]),
      { ...ENV, REDIS_URL: redis.url },
    );
    await untilDatabase(gw.url, 'healthy');
  });
  after(async () => {
    await gw?.close();
    await upstream?.close();
    await redis?.stop();
  });

  function assertPrompt(res: Timed, what: string): void {
    // A request held on a dead connection would wait for the client's timeout (HANG_MS).
    assert.ok(res.ms < 2_500, `${what} took ${res.ms.toFixed(0)} ms while redis was down`);
  }

  it('keeps serving under a per-process limit, fails closed where configured, and returns to redis by itself', { timeout: 25_000 }, async () => {
    const before = await freshUser('frank');
    assert.equal((await send(`${gw.url}/api/guarded/x`, before.token)).statusCode, 200, 'the fail-closed route serves while redis is up');

    await redis.stop();
    try {
      const during = await freshUser('grace');
      for (let i = 0; i < LIMIT; i++) {
        const res = await send(`${gw.url}/api/records/${i}`, during.token);
        assertPrompt(res, `request ${i + 1}`);
        assert.equal(res.statusCode, 200, `request ${i + 1} while redis is down: ${res.text}`);
        assert.equal(rateLimitOf(res, 'default').r, LIMIT - 1 - i, 'the per-process limiter counts');
      }
      const over = await send(`${gw.url}/api/records/over`, during.token);
      assertPrompt(over, `request ${LIMIT + 1}`);
      expectLimited(over, 'default', LIMIT);

      await untilDatabase(gw.url, 'degraded');
      const health = await send(`${gw.url}/health`);
      assert.equal(health.statusCode, 200, 'a Redis outage degrades the gateway, it does not take it out of rotation');

      const reached = upstream.received.length;
      for (let i = 0; i < 3; i++) {
        const closed = await send(`${gw.url}/api/guarded/${i}`, during.token);
        assertPrompt(closed, 'a fail-closed request');
        expectProblem(closed, 503, 'GW_DEPENDENCY_UNAVAILABLE');
        retryAfterOf(closed);
      }
      assert.equal(upstream.received.length, reached, 'a fail-closed refusal must not reach the upstream');
    } finally {
      await redis.start();
    }

    // No gateway restart: a fresh user's request is eventually counted in Redis again.
    const keys = inspect(redis);
    try {
      const back = await until('a rate_limit: key written to the restarted redis', 100, async () => {
        const probe = await freshUser('heidi');
        const res = await send(`${gw.url}/api/records/probe`, probe.token);
        assert.equal(res.statusCode, 200, res.text);
        return (await keys.exists(`rate_limit:{${probe.id}}`)) === 1 ? probe : undefined;
      });
      for (let i = 1; i < LIMIT; i++) assert.equal((await send(`${gw.url}/api/records/${i}`, back.token)).statusCode, 200);
      expectLimited(await send(`${gw.url}/api/records/over`, back.token), 'default', LIMIT);
      assert.ok((await keys.pttl(`rate_limit:{${back.id}}`)) > 0);

      const guarded = await send(`${gw.url}/api/guarded/again`, back.token);
      assert.equal(guarded.statusCode, 200, `the fail-closed route serves again: ${guarded.text}`);
      assert.ok((await keys.exists(`rate_limit:{${back.id}}:guarded`)) === 1);
      await untilDatabase(gw.url, 'healthy');
    } finally {
      keys.disconnect();
    }
  });

  it('reports the database healthy again once redis is back, even if no request has been limited since', { timeout: 15_000 }, async () => {
    await untilDatabase(gw.url, 'healthy');
    await redis.stop();
    try {
      // Traffic during the outage is what switches limiting to the per-process fallback.
      const during = await freshUser('ivan');
      assert.equal((await send(`${gw.url}/api/records/x`, during.token)).statusCode, 200);
      await untilDatabase(gw.url, 'degraded');
    } finally {
      await redis.start();
    }
    const keys = inspect(redis);
    try {
      assert.equal(await keys.ping(), 'PONG');
      // The gateway reconnects within its backoff (at most 2 s between attempts).
      for (let i = 0; i < 100; i++) {
        if ((await databaseStatus(gw.url)) === 'healthy') return;
        await delay(50);
      }
      const { checks } = await gw.gateway.health.report();
      assert.fail(`redis answers PING, yet /health still reports the database ${checks.database?.status}: "${checks.database?.detail}"`);
    } finally {
      keys.disconnect();
    }
  });
});
