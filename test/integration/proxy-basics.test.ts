import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { request } from 'undici';
import { startTestGateway, routesFor, type TestGateway } from '../helpers/gateway.js';
import { signToken } from '../helpers/tokens.js';
import { startUpstream, type TestUpstream } from '../helpers/upstream.js';

describe('proxying a request', () => {
  let upstream: TestUpstream;
  let gw: TestGateway;

  before(async () => {
    upstream = await startUpstream();
    gw = await startTestGateway(
      routesFor(upstream.url, [
        { name: 'history', path: '/api/v1/chat/history', methods: ['GET'], rewrite: '/api/v1/history', auth: 'required' },
        { name: 'open', prefix: '/public', auth: 'public' },
        { name: 'records', pattern: '/api/v1/patients/:patientId/records/:recordId', rewrite: '/records/:recordId/of/:patientId', auth: 'public' },
      ]),
    );
  });
  after(async () => {
    await gw.close();
    await upstream.close();
  });

  it('rewrites the path, keeps the query and sends the verified identity', async () => {
    const token = await signToken({ sub: 'u-42', role: 'resident' });
    const res = await request(`${gw.url}/api/v1/chat/history?session_id=abc&x=1`, {
      headers: { authorization: `Bearer ${token}`, 'x-request-id': 'client-req-1' },
    });
    assert.equal(res.statusCode, 200);
    assert.equal(res.headers['x-request-id'], 'client-req-1');
    await res.body.dump();
    const seen = upstream.received.at(-1)!;
    assert.equal(seen.url, '/api/v1/history?session_id=abc&x=1');
    assert.equal(seen.headers['x-user-id'], 'u-42');
    assert.equal(seen.headers['x-user-role'], 'resident');
    assert.equal(seen.headers['x-request-id'], 'client-req-1');
    assert.equal(seen.headers['x-forwarded-for'], '127.0.0.1');
    assert.equal(seen.headers['x-forwarded-proto'], 'http');
    assert.equal(seen.headers['x-forwarded-host'], `127.0.0.1:${gw.port}`);
  });

  it('fills pattern parameters into the rewrite', async () => {
    const res = await request(`${gw.url}/api/v1/patients/p-7/records/r-9`);
    assert.equal(res.statusCode, 200);
    await res.body.dump();
    assert.equal(upstream.received.at(-1)!.url, '/records/r-9/of/p-7');
  });

  it('answers an unknown path with a 404 problem and never calls the upstream', async () => {
    const before = upstream.received.length;
    const res = await request(`${gw.url}/nowhere`);
    assert.equal(res.statusCode, 404);
    assert.equal(res.headers['content-type'], 'application/problem+json');
    const body = (await res.body.json()) as Record<string, unknown>;
    assert.equal(body.code, 'GW_ROUTE_NOT_FOUND');
    assert.equal(body.status, 404);
    assert.equal(body.request_id, res.headers['x-request-id']);
    assert.equal(upstream.received.length, before);
  });

  it('writes one access-log line with the spec fields and no query string', async () => {
    const res = await request(`${gw.url}/public/thing?secret_query=PHI-CANARY`, { headers: { 'user-agent': 'test-agent' } });
    await res.body.dump();
    const id = res.headers['x-request-id'];
    const lines = gw.logs.filter((l) => l.request_id === id);
    assert.equal(lines.length, 1);
    const line = lines[0]!;
    for (const field of ['timestamp', 'level', 'service', 'request_id', 'user_id', 'method', 'path', 'status_code', 'response_time_ms', 'user_agent', 'ip_address']) {
      assert.ok(field in line, `missing ${field}`);
    }
    assert.equal(line.level, 'INFO');
    assert.equal(line.service, 'api-gateway');
    assert.equal(line.path, '/public/thing');
    assert.equal(line.status_code, 200);
    assert.ok(!JSON.stringify(gw.logs).includes('PHI-CANARY'));
  });
});
