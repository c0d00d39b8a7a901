import { randomUUID } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import type { Redis } from 'ioredis';
import { decodeJwt } from 'jose';
import { REVOCATION_CHANNEL } from '../../src/stores/access-store.js';
import { routesFor, startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { expectProblem, send } from '../helpers/http.js';
import { until } from '../helpers/poll.js';
import { inspectRedis, startRedis, type TestRedis } from '../helpers/redis.js';
import { signToken } from '../helpers/tokens.js';
import { startUpstream, type TestUpstream } from '../helpers/upstream.js';

/**
 * An announcement a replica could not hear (its subscription was down: a failover, a network
 * cut) must not leave a hole in its mirror, or a later Redis outage would let that token back in
 * on routes that run on the fallback. After every reconnect the mirror is filled from the
 * revocation keys themselves.
 */
const REVOCATIONS = '/api/gateway/revocations';
const RESYNCED = 'revocation mirror resynced after a reconnect';

describe('the revocation mirror after the subscription was cut', () => {
  let redis: TestRedis;
  let keys: Redis;
  let upstream: TestUpstream;
  let a: TestGateway;
  let b: TestGateway;

  before(async () => {
    redis = await startRedis();
    keys = inspectRedis(redis);
    upstream = await startUpstream();
    const routes = routesFor(upstream.url, [
      { name: 'records', prefix: '/api/records' },
      { name: 'revocations', path: REVOCATIONS, methods: ['POST'], action: 'revoke', permission: 'tokens:revoke', service: undefined },
    ]);
    a = await startTestGateway(routes, { REDIS_URL: redis.url });
    b = await startTestGateway(routes, { REDIS_URL: redis.url });
    await until('both gateways subscribed', 5_000, async () => (Number(((await keys.pubsub('NUMSUB', REVOCATION_CHANNEL)) as [string, number])[1]) === 2 ? true : undefined));
  });
  after(async () => {
    keys.disconnect();
    await a.close();
    await b.close();
    await upstream.close();
    await redis.stop();
  });

  it('a revocation announced while B was not listening is refused by B during a later outage', async () => {
    const token = await signToken({ sub: `resync-${randomUUID()}` });
    const admin = await signToken({ sub: `resync-admin-${randomUUID()}`, role: 'admin' });
    const path = () => `/api/records/${randomUUID()}`;
    assert.equal((await send(`${b.url}${path()}`, { token })).statusCode, 200);

    // Every subscription cut: the announcement of the next revocation reaches nobody.
    await keys.client('KILL', 'TYPE', 'pubsub');
    const res = await send(`${a.url}${REVOCATIONS}`, { token: admin, json: { jti: decodeJwt(token).jti, user_id: decodeJwt(token).sub } });
    assert.ok(res.statusCode < 300, `${res.statusCode} ${res.text}`);
    await until('B resynced its mirror', 10_000, async () => (b.logs.some((l) => l.message === RESYNCED) ? true : undefined));

    await redis.stop();
    try {
      // Redis is gone: B decides from its mirror.
      expectProblem(await send(`${b.url}${path()}`, { token }), 401, 'GW_AUTH_TOKEN_REVOKED');
      assert.equal((await send(`${b.url}${path()}`, { token: await signToken({ sub: `resync-other-${randomUUID()}` }) })).statusCode, 200, 'other users go on from the fallback');
    } finally {
      await redis.start();
    }
  });
});
