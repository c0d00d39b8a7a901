import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { request } from 'undici';
import { routesFor, type TestGateway, startTestGateway } from '../helpers/gateway.js';
import { expectProblem, read } from '../helpers/http.js';
import { signToken } from '../helpers/tokens.js';
import { startUpstream, type TestUpstream } from '../helpers/upstream.js';

const BUDGET = 5;

describe('failed authentications count against the client address', () => {
  let upstream: TestUpstream;
  let gw: TestGateway;

  before(async () => {
    upstream = await startUpstream();
    // The loopback peer is a trusted proxy, so X-Forwarded-For picks the client address.
    gw = await startTestGateway(routesFor(upstream.url, [{ name: 'records', prefix: '/records', auth: 'required', rateLimit: { perMinute: 1000 } }]), {
      RATE_LIMIT_PER_MINUTE: String(BUDGET),
      TRUSTED_PROXIES: '127.0.0.1',
    });
  });
  after(async () => {
    await gw.close();
    await upstream.close();
  });

  const get = (ip: string, authorization?: string) =>
    read(request(`${gw.url}/records/1`, { headers: { 'x-forwarded-for': ip, ...(authorization !== undefined ? { authorization } : undefined) } }));

  it('after the budget of failures, even a valid new token from that address gets 429 without reaching the upstream; cached tokens and other addresses pass', async () => {
    const known = `Bearer ${await signToken({ sub: 'known-user' })}`;
    assert.equal((await get('203.0.113.7', known)).statusCode, 200, 'verified (and cached) before the flood');

    const forged = `Bearer ${await signToken({ sub: 'someone', secret: 'not-the-gateway-secret-0123456789abcdef' })}`;
    for (let i = 0; i < BUDGET; i++) expectProblem(await get('203.0.113.7', forged), 401, 'GW_AUTH_TOKEN_INVALID');

    const seen = upstream.received.length;
    const fresh = `Bearer ${await signToken({ sub: 'new-user' })}`;
    const blocked = await get('203.0.113.7', fresh);
    expectProblem(blocked, 429, 'GW_RATE_LIMITED');
    assert.ok(Number(blocked.headers['retry-after']) >= 1);
    expectProblem(await get('203.0.113.7', forged), 429, 'GW_RATE_LIMITED');
    assert.equal(upstream.received.length, seen, 'nothing reached the upstream');

    assert.equal((await get('203.0.113.7', known)).statusCode, 200, 'a token verified before is not held up');
    assert.equal((await get('198.51.100.9', fresh)).statusCode, 200, 'another address is unaffected');
  });
});
