import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { request } from 'undici';
import { routesFor, startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { startUpstream, type TestUpstream } from '../helpers/upstream.js';

describe('upstream response headers at the client', () => {
  let upstream: TestUpstream;
  let gw: TestGateway;

  before(async () => {
    upstream = await startUpstream((_req, res) => {
      res.setHeader('set-cookie', ['a=1; HttpOnly', 'b=2; Secure']);
      res.setHeader('x-request-id', 'upstream-chosen-id');
      res.setHeader('ratelimit', '"upstream";r=999;t=1');
      res.setHeader('x-custom', 'kept');
      res.end('ok');
    });
    gw = await startTestGateway(routesFor(upstream.url, [{ name: 'open', prefix: '/open', auth: 'public' }]), { RATE_LIMIT_PER_ADDRESS_PER_MINUTE: '100' });
  });
  after(async () => {
    await gw.close();
    await upstream.close();
  });

  it('keeps repeated fields, and the gateway alone sets the request id and rate-limit fields', async () => {
    const res = await request(`${gw.url}/open/x`, { headers: { 'x-request-id': 'client-id-1' } });
    await res.body.dump();
    assert.deepEqual(res.headers['set-cookie'], ['a=1; HttpOnly', 'b=2; Secure']);
    assert.equal(res.headers['x-request-id'], 'client-id-1');
    assert.equal(res.headers['x-custom'], 'kept');
    assert.equal(res.headers['ratelimit-policy'], '"default";q=100;w=60');
    assert.match(String(res.headers.ratelimit), /^"default";r=\d+;t=\d+$/);
  });
});
