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
      AUTH_FAILURES_PER_ADDRESS_PER_MINUTE: String(BUDGET),
      TRUSTED_PROXIES: '127.0.0.1',
    });
  });
  after(async () => {
    await gw.close();
    await upstream.close();
  });

  const get = (ip: string, authorization?: string) =>
    read(request(`${gw.url}/records/1`, { headers: { 'x-forwarded-for': ip, ...(authorization !== undefined ? { authorization } : undefined) } }));
  const forged = async () => `Bearer ${await signToken({ sub: 'someone', secret: 'not-the-gateway-secret-0123456789abcdef' })}`;

  it('past the budget, the failing requests of the address get 429 and reach nothing; other addresses are unaffected', async () => {
    const bad = await forged();
    for (let i = 0; i < BUDGET; i++) expectProblem(await get('203.0.113.7', bad), 401, 'GW_AUTH_TOKEN_INVALID');
    const seen = upstream.received.length;
    const limited = await get('203.0.113.7', bad);
    expectProblem(limited, 429, 'GW_RATE_LIMITED');
    assert.ok(Number(limited.headers['retry-after']) >= 1);
    expectProblem(await get('203.0.113.7'), 429, 'GW_RATE_LIMITED');
    assert.equal(upstream.received.length, seen, 'nothing reached the upstream');
    expectProblem(await get('198.51.100.9', bad), 401, 'GW_AUTH_TOKEN_INVALID');
  });

  it("behind one shared address (a hospital's NAT), every valid token passes, new or known, however many bad ones the address sends", async () => {
    const nat = '192.0.2.10';
    const bad = await forged();
    const users = await Promise.all(Array.from({ length: 25 }, (_, i) => signToken({ sub: `nurse-${i}` })));
    const statuses: number[] = [];
    for (let i = 0; i < users.length; i++) {
      // A bad token from the same address before every valid one: the address is over its budget from the sixth on.
      await get(nat, bad);
      const res = await get(nat, `Bearer ${users[i]}`);
      statuses.push(res.statusCode);
      assert.equal(upstream.received.at(-1)!.headers['x-user-id'], `nurse-${i}`);
    }
    assert.deepEqual(statuses, users.map(() => 200), 'not one valid user refused');
    expectProblem(await get(nat, bad), 429, 'GW_RATE_LIMITED');
  });
});
