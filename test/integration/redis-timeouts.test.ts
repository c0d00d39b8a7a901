import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { Agent, request } from 'undici';
import { routesFor, startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { read } from '../helpers/http.js';
import { until } from '../helpers/poll.js';
import { spawnGateway, type GatewayProcess } from '../helpers/process.js';
import { startRedis, type TestRedis } from '../helpers/redis.js';
import { signToken } from '../helpers/tokens.js';
import { startUpstream, type TestUpstream } from '../helpers/upstream.js';

/**
 * A Redis that stops answering (frozen with SIGSTOP: its connections stay open, nothing comes
 * back) holds no request longer than REDIS_COMMAND_TIMEOUT_MS, however many are waiting; and the
 * per-process fallback carries on from the count Redis gave, so several processes together admit
 * a bounded excess, not a fresh budget each.
 */

describe('a frozen Redis: every request waits at most the command timeout', () => {
  const TIMEOUT_MS = 2_000;
  /** Scheduling slack on a busy machine; the fault this guards against (a command waiting out the batch ahead of it, then its own timeout) takes twice the timeout. */
  const SLACK_MS = 1_500;
  let redis: TestRedis;
  let upstream: TestUpstream;
  let gw: TestGateway;
  const agent = new Agent({ connections: 128 });

  before(async () => {
    redis = await startRedis();
    upstream = await startUpstream();
    gw = await startTestGateway(routesFor(upstream.url, [{ name: 'open', prefix: '/open', auth: 'public' }]), {
      REDIS_URL: redis.url,
      REDIS_COMMAND_TIMEOUT_MS: String(TIMEOUT_MS),
      HEALTH_CACHE_MS: '0',
    });
    // Connected and answering before the freeze.
    assert.equal((await read(request(`${gw.url}/open/warm`))).statusCode, 200);
  });
  after(async () => {
    redis.thaw();
    await agent.close();
    await gw.close();
    await upstream.close();
    await redis.stop();
  });

  for (const concurrent of [1, 4, 64]) {
    it(`${concurrent} at once: each answered (from the fallback) within the timeout plus scheduling slack`, async () => {
      redis.freeze();
      try {
        const ids = Array.from({ length: concurrent }, (_, i) => `frozen-${concurrent}-${i}`);
        await Promise.all(
          ids.map(async (id) => {
            const res = await read(request(`${gw.url}/open/${id}`, { dispatcher: agent, headers: { 'x-request-id': id } }));
            assert.equal(res.statusCode, 200, res.text);
          }),
        );
        // How long each request was held, as the gateway measured it (its access line).
        await until('the access lines', 5_000, async () => (ids.every((id) => gw.logs.some((l) => l.request_id === id)) ? true : undefined));
        const held = ids.map((id) => Number(gw.logs.find((l) => l.request_id === id)!.response_time_ms));
        const slowest = Math.max(...held);
        assert.ok(slowest < TIMEOUT_MS + SLACK_MS, `the slowest of ${concurrent} was held ${Math.round(slowest)} ms`);
      } finally {
        redis.thaw();
      }
    });
  }
});

describe('a fallback across three processes stays bounded', () => {
  const LIMIT = 10;
  const INTERVAL_MS = 60_000 / LIMIT;
  let redis: TestRedis;
  let upstream: TestUpstream;
  const gateways: GatewayProcess[] = [];

  before(async () => {
    redis = await startRedis();
    upstream = await startUpstream();
    const routes = routesFor(upstream.url, [{ name: 'records', prefix: '/api/records' }]);
    const env = { RATE_LIMIT_PER_MINUTE: String(LIMIT), REDIS_URL: redis.url, REDIS_COMMAND_TIMEOUT_MS: '300', HEALTH_CACHE_MS: '0' };
    for (let i = 0; i < 3; i++) gateways.push(await spawnGateway(routes, env));
  });
  after(async () => {
    redis.thaw();
    await Promise.all(gateways.map((g) => g.stop()));
    await upstream.close();
    await redis.stop();
  });

  it('a user who spent the budget through Redis gets no fresh budget from any process while Redis does not answer', async () => {
    const token = await signToken({ sub: 'busy-user' });
    const get = (g: GatewayProcess, i: number) => read(request(`${g.url}/api/records/${i}`, { headers: { authorization: `Bearer ${token}` } }));
    const shared: number[] = [];
    for (let i = 0; i < LIMIT + 2; i++) shared.push((await get(gateways[i % 3]!, i)).statusCode);
    assert.equal(shared.filter((s) => s === 200).length, LIMIT, `through Redis the limit is global: ${shared.join(' ')}`);

    redis.freeze();
    const started = performance.now();
    let passed: number;
    try {
      const statuses = await Promise.all(Array.from({ length: 30 }, (_, i) => get(gateways[i % 3]!, 100 + i).then((r) => r.statusCode)));
      passed = statuses.filter((s) => s === 200).length;
    } finally {
      redis.thaw();
    }
    // What was left when Redis last answered (nothing), plus what each process refilled meanwhile.
    const refilled = 3 * Math.ceil((performance.now() - started) / INTERVAL_MS);
    assert.ok(passed <= refilled, `${passed} of 30 passed while Redis was frozen; the bound here is ${refilled} (a fresh budget per process would be ${3 * LIMIT})`);
  });
});
