import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import type { Redis } from 'ioredis';
import { decodeJwt } from 'jose';
import { EPOCH_KEY } from '../../src/stores/access-store.js';
import { routesFor } from '../helpers/gateway.js';
import { send } from '../helpers/http.js';
import { until, untilDatabase } from '../helpers/poll.js';
import { spawnGateway, type GatewayProcess } from '../helpers/process.js';
import { inspectRedis, startRedis, type TestRedis } from '../helpers/redis.js';
import { signToken } from '../helpers/tokens.js';
import { startUpstream, type TestUpstream } from '../helpers/upstream.js';

/**
 * A Redis that restarts without its data (no persistence, a failover to an empty replica) forgets
 * every revocation. The replicas that were running still hold them in their mirrors; a replica
 * started after the wipe holds nothing and asks Redis. The running replicas notice the wipe (the
 * store's epoch changed) and write their revocations back, so that every replica refuses them.
 */

const REVOCATIONS = '/api/gateway/revocations';
const ENV = { HEALTH_CACHE_MS: '0', RATE_LIMIT_PER_MINUTE: '100000' };

function routes(upstreamUrl: string): Record<string, unknown> {
  return routesFor(upstreamUrl, [
    { name: 'records', prefix: '/api/records' },
    { name: 'chart', prefix: '/api/chart', phi: true },
    { name: 'revocations', path: REVOCATIONS, methods: ['POST'], action: 'revoke', permission: 'tokens:revoke', service: undefined },
  ]);
}

/** Scripts run so far (EVALSHA and EVAL calls). */
async function scriptCalls(keys: Redis): Promise<number> {
  const stats = await keys.info('commandstats');
  let calls = 0;
  for (const m of stats.matchAll(/^cmdstat_(?:evalsha|eval):calls=(\d+)/gm)) calls += Number(m[1]);
  return calls;
}

describe('revocations after redis restarted empty', { timeout: 120_000 }, () => {
  let redis: TestRedis;
  let keys: Redis;
  let upstream: TestUpstream;
  const gateways: GatewayProcess[] = [];

  before(async () => {
    redis = await startRedis();
    upstream = await startUpstream();
    const env = { ...ENV, REDIS_URL: redis.url };
    for (const started of await Promise.allSettled([spawnGateway(routes(upstream.url), env), spawnGateway(routes(upstream.url), env)])) {
      if (started.status === 'fulfilled') gateways.push(started.value);
      else throw started.reason;
    }
    await Promise.all(gateways.map((g) => untilDatabase(g.url, 'healthy')));
    keys = inspectRedis(redis);
  });
  after(async () => {
    keys?.disconnect();
    await Promise.all(gateways.map((g) => g.stop()));
    await upstream?.close();
    await redis?.stop();
  });

  it('a revoked user and a revoked jti are refused by the two replicas that were running and by one started after the wipe, on PHI and other routes', async () => {
    const admin = await signToken({ sub: `wipe-admin-${randomUUID()}`, role: 'admin' });
    const userToken = await signToken({ sub: `wipe-user-${randomUUID()}` });
    const jtiToken = await signToken({ sub: `wipe-jti-${randomUUID()}` });
    const bystander = await signToken({ sub: `wipe-other-${randomUUID()}` });
    const [a, b] = gateways as [GatewayProcess, GatewayProcess];
    for (const token of [userToken, jtiToken]) assert.equal((await send(`${a.url}/api/records/1`, { token })).statusCode, 200);

    // Both replicas have read the store's epoch before the wipe (they read it every 2 s).
    await until('both replicas read the epoch', 10_000, async () => ((await keys.get(EPOCH_KEY)) !== null ? true : undefined));
    const epoch = await keys.get(EPOCH_KEY);
    assert.equal((await send(`${a.url}${REVOCATIONS}`, { token: admin, json: { user_id: decodeJwt(userToken).sub } })).statusCode, 200);
    assert.equal((await send(`${b.url}${REVOCATIONS}`, { token: admin, json: { jti: decodeJwt(jtiToken).jti, user_id: decodeJwt(jtiToken).sub } })).statusCode, 200);
    // Both replicas read the epoch again after the revocations (with no traffic, the epoch reads
    // are the only scripts run), so each has seen this Redis's epoch before it is wiped.
    const reads = await scriptCalls(keys);
    await until('both replicas read the epoch again', 15_000, async () => ((await scriptCalls(keys)) >= reads + 4 ? true : undefined), 100);

    keys.disconnect();
    await redis.stop();
    await redis.start();
    keys = inspectRedis(redis);
    assert.equal(await keys.dbsize(), 0, 'redis came back empty');

    // A replica started now (as an HPA or a rollout starts them) finds no revocation in Redis.
    const c = await spawnGateway(routes(upstream.url), { ...ENV, REDIS_URL: redis.url });
    gateways.push(c);
    const started = performance.now();
    for (const gw of [a, b, c]) {
      for (const [token, what] of [[userToken, 'the revoked user'], [jtiToken, 'the revoked jti']] as const) {
        for (const path of ['/api/records/1', '/api/chart/1']) {
          const answer = await until(`${gw === c ? 'the new replica' : 'a replica that was running'} refuses ${what} on ${path}`, 15_000, async () => {
            const res = await send(`${gw.url}${path}`, { token });
            return res.statusCode === 401 ? res : undefined;
          }, 100);
          assert.equal(JSON.parse(answer.text).code, 'GW_AUTH_TOKEN_REVOKED');
        }
      }
      assert.equal((await send(`${gw.url}/api/chart/1`, { token: bystander })).statusCode, 200, 'another user still passes');
    }
    const seconds = (performance.now() - started) / 1000;
    assert.ok(seconds < 15, `refused everywhere after ${seconds.toFixed(1)} s`);
    // The revocations are back in Redis itself, under a new epoch.
    assert.notEqual(await keys.get(EPOCH_KEY), epoch);
    assert.ok((await keys.keys('revoked:*')).length >= 2, 'the revocation keys were written back');
    assert.ok(a.stdout().includes('redis lost its data') || b.stdout().includes('redis lost its data'), 'a running replica logged the write-back');
  });
});
