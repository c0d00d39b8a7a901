import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import { decodeJwt } from 'jose';
import { routesFor, startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { expectProblem, send } from '../helpers/http.js';
import { until } from '../helpers/poll.js';
import { SENTINEL_NAME, startSentinels, type TestSentinels } from '../helpers/sentinel.js';
import { signToken } from '../helpers/tokens.js';
import { startUpstream, type TestUpstream } from '../helpers/upstream.js';

/**
 * Redis behind Sentinel (a primary, a replica, three sentinels), two gateways: the primary is
 * killed under traffic. No request waits past the command timeout, PHI requests fail closed
 * while no primary answers, the gateways find the promoted replica by themselves, and limits and
 * revocations are shared again afterwards, the ones made before the failover included.
 */

const TIMEOUT_MS = 300;
/** Scheduling on a busy machine; a request that waited for the failover itself would take seconds. */
const SLACK_MS = 1_500;
const REVOCATIONS = '/api/gateway/revocations';

describe('REDIS_SENTINELS: a failover under traffic', () => {
  let sentinels: TestSentinels;
  let upstream: TestUpstream;
  let a: TestGateway;
  let b: TestGateway;
  let admin: string;
  let user = 0;
  const fresh = () => `sentinel-user-${process.pid}-${++user}`;

  before(async () => {
    sentinels = await startSentinels();
    upstream = await startUpstream();
    const routes = routesFor(upstream.url, [
      // One request a minute per user: a second one, on either gateway, shows the shared count.
      { name: 'chart', prefix: '/api/chart', phi: true, rateLimit: { perMinute: 1 } },
      { name: 'revocations', path: REVOCATIONS, methods: ['POST'], action: 'revoke', permission: 'tokens:revoke', service: undefined },
    ]);
    const env = { REDIS_SENTINELS: sentinels.list, REDIS_SENTINEL_NAME: SENTINEL_NAME, REDIS_COMMAND_TIMEOUT_MS: String(TIMEOUT_MS), HEALTH_CACHE_MS: '0' };
    a = await startTestGateway(routes, env);
    b = await startTestGateway(routes, env);
    admin = await signToken({ sub: fresh(), role: 'admin' });
  });
  after(async () => {
    await a?.close();
    await b?.close();
    await upstream?.close();
    await sentinels?.stop();
  });

  /** A's first request for a fresh user passes, B's second is refused: one budget for both. */
  async function sharedLimit(): Promise<boolean> {
    const token = await signToken({ sub: fresh() });
    const first = await send(`${a.url}/api/chart/${randomUUID()}`, { token });
    if (first.statusCode !== 200) return false;
    const second = await send(`${b.url}/api/chart/${randomUUID()}`, { token });
    return second.statusCode === 429;
  }

  /** A revocation refused while Redis cannot take it (503) is retried, as its caller is told to. */
  async function revoke(via: TestGateway, token: string): Promise<void> {
    try {
      await until('the revocation accepted', 20_000, async () => {
        const res = await send(`${via.url}${REVOCATIONS}`, { token: admin, json: { jti: decodeJwt(token).jti, user_id: decodeJwt(token).sub } });
        if (res.statusCode === 503) return undefined;
        assert.ok(res.statusCode < 300, `revocation: ${res.statusCode} ${res.text}`);
        return true;
      }, 100);
    } catch (err) {
      // What the gateway said of its Redis connections meanwhile.
      const lines = via.logs.filter((l) => /redis|revocation/i.test(String(l.message))).map((l) => `${String(l.timestamp)} ${String(l.message)} ${String(l.cause ?? l.problem ?? '')}`);
      throw new Error(`${(err as Error).message}; the gateway's redis log lines: ${JSON.stringify(lines)}`);
    }
  }

  async function refusedOnBoth(token: string, what: string): Promise<void> {
    for (const gw of [a, b]) {
      const answer = await until(`${what}: refused`, 1_000, async () => {
        const res = await send(`${gw.url}/api/chart/${randomUUID()}`, { token });
        return res.statusCode === 401 ? res : undefined;
      });
      expectProblem(answer, 401, 'GW_AUTH_TOKEN_REVOKED');
    }
  }

  it('both gateways use the primary the sentinels name: one budget per user across them', async () => {
    assert.equal(await sentinels.primaryPort(), sentinels.primary.port);
    assert.ok(await until('a shared limit', 10_000, async () => ((await sharedLimit()) ? true : undefined)));
  });

  it('the primary dies: nothing waits past the timeout, PHI fails closed, then the promoted replica serves both', async () => {
    const before = await signToken({ sub: fresh() });
    await revoke(a, before);
    await refusedOnBoth(before, 'revoked before the failover');

    await sentinels.primary.stop();
    // What /health says meanwhile (no addresses: how Redis is deployed and what the gateway does).
    const states = new Set<string>();
    const seen = new Map<number, number>();
    const slowest = { ms: 0, status: 0 };
    // Traffic on both gateways, one fresh user per request, until each has served twice in a row.
    const streak = new Map<TestGateway, number>([
      [a, 0],
      [b, 0],
    ]);
    await until('both gateways served by the new primary', 30_000, async () => {
      for (const gw of [a, b]) {
        const started = performance.now();
        const res = await send(`${gw.url}/api/chart/${randomUUID()}`, { token: await signToken({ sub: fresh() }) });
        const ms = performance.now() - started;
        seen.set(res.statusCode, (seen.get(res.statusCode) ?? 0) + 1);
        if (ms > slowest.ms) Object.assign(slowest, { ms, status: res.statusCode });
        if (res.statusCode === 503) expectProblem(res, 503, 'GW_AUTH_UNAVAILABLE');
        else assert.equal(res.statusCode, 200, res.text);
        streak.set(gw, res.statusCode === 200 ? streak.get(gw)! + 1 : 0);
      }
      const health = JSON.parse((await send(`${a.url}/health`)).text) as { redis: { mode: string; state: string } };
      assert.equal(health.redis.mode, 'sentinel');
      states.add(health.redis.state);
      return [...streak.values()].every((n) => n >= 2) ? true : undefined;
    }, 50);
    assert.ok(slowest.ms <= TIMEOUT_MS + SLACK_MS, `the slowest answer took ${Math.round(slowest.ms)} ms (${slowest.status}); seen ${JSON.stringify(Object.fromEntries(seen))}`);
    assert.equal(await sentinels.primaryPort(), sentinels.replica.port, 'the replica was promoted');
    assert.ok(states.has('finding the primary'), `/health told of the search for the new primary: ${[...states].join(', ')}`);
    // Revocation announcements are heard again from the promoted primary within a retry or two.
    const settled = await until('/health to settle on the new primary', 10_000, async () => {
      const h = JSON.parse((await send(`${a.url}/health`)).text) as { redis: { announcements?: string } };
      return h.redis.announcements === 'subscribed' ? h : undefined;
    }, 100);
    assert.deepEqual(settled.redis, { mode: 'sentinel', state: 'connected', primaries: 1, announcements: 'subscribed' });

    assert.ok(await until('a shared limit again', 10_000, async () => ((await sharedLimit()) ? true : undefined)));
    await refusedOnBoth(before, 'revoked before the failover, after it');
    const afterwards = await signToken({ sub: fresh() });
    await revoke(b, afterwards);
    await refusedOnBoth(afterwards, 'revoked after the failover');
  });
});
