import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { request } from 'undici';
import { routesFor, startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { signToken } from '../helpers/tokens.js';
import { startUpstream, type TestUpstream } from '../helpers/upstream.js';
import { parseExposition as parse, type Sample } from '../helpers/prometheus.js';

describe('Prometheus metrics', () => {
  let upstream: TestUpstream;
  let gw: TestGateway;

  before(async () => {
    upstream = await startUpstream();
    gw = await startTestGateway(
      routesFor(upstream.url, [
        { name: 'patient', pattern: '/api/v1/patients/:id', auth: 'required' },
        { name: 'open', prefix: '/open', auth: 'public' },
      ]),
      { RATE_LIMIT_PER_MINUTE: '1000000' },
    );
  });
  after(async () => {
    await gw.close();
    await upstream.close();
  });

  async function scrape(): Promise<Sample[]> {
    const res = await request(`${gw.url}/metrics`);
    assert.equal(res.statusCode, 200);
    assert.match(String(res.headers['content-type']), /^text\/plain/);
    return parse(await res.body.text());
  }

  it('counts requests by method, route template and status, with the spec names', async () => {
    const token = await signToken({ sub: 'patient-sub', role: 'resident' });
    for (const id of ['p-1', 'p-2', 'p-3']) {
      await (await request(`${gw.url}/api/v1/patients/${id}?q=PHI-CANARY`, { headers: { authorization: `Bearer ${token}` } })).body.dump();
    }
    await (await request(`${gw.url}/api/v1/patients/p-4`)).body.dump();
    await (await request(`${gw.url}/api/v1/patients/p-5`, { headers: { authorization: 'Bearer not.a.token' } })).body.dump();
    const samples = await scrape();
    const total = (path: string, status: string) =>
      samples.find((s) => s.name === 'api_gateway_requests_total' && s.labels.method === 'GET' && s.labels.path === path && s.labels.status === status)?.value ?? 0;
    assert.equal(total('/api/v1/patients/:id', '200'), 3);
    assert.equal(total('/api/v1/patients/:id', '401'), 2);
    const count = samples.find(
      (s) => s.name === 'api_gateway_request_duration_seconds_count' && s.labels.path === '/api/v1/patients/:id' && s.labels.status === '200',
    );
    assert.equal(count?.value, 3);
    const buckets = samples.filter((s) => s.name === 'api_gateway_request_duration_seconds_bucket' && s.labels.path === '/api/v1/patients/:id' && s.labels.status === '200');
    assert.ok(buckets.some((b) => b.labels.le === '0.1'), 'a bucket at the 100 ms SLO');
    const failures = samples.filter((s) => s.name === 'api_gateway_auth_failures_total');
    assert.equal(failures.find((s) => s.labels.reason === 'GW_AUTH_TOKEN_MISSING')?.value, 1);
    assert.equal(failures.find((s) => s.labels.reason === 'GW_AUTH_TOKEN_MALFORMED')?.value, 1);
    assert.ok(samples.some((s) => s.name === 'api_gateway_rate_limit_exceeded_total'));
    assert.ok(samples.some((s) => s.name === 'process_resident_memory_bytes'), 'process metrics');
    const text = JSON.stringify(samples);
    assert.ok(!text.includes('p-1') && !text.includes('PHI-CANARY') && !text.includes('patient-sub'), 'no raw path, query or user id in labels');
  });

  it('a thousand distinct unknown paths add no series', async () => {
    await (await request(`${gw.url}/unknown/warm-up`)).body.dump();
    // Process metrics may add a GC-kind series between scrapes; the gateway's own must not grow.
    const gatewaySeries = (list: Sample[]) => list.filter((s) => s.name.startsWith('api_gateway_')).length;
    const before = gatewaySeries(await scrape());
    for (let i = 0; i < 1000; i++) await (await request(`${gw.url}/unknown/${i}/${Math.random()}`)).body.dump();
    const after = await scrape();
    const unmatched = after.find((s) => s.name === 'api_gateway_requests_total' && s.labels.path === 'unmatched' && s.labels.status === '404');
    assert.ok(unmatched !== undefined && unmatched.value >= 1001);
    assert.equal(gatewaySeries(after), before);
  });
});

describe('metrics switched off', () => {
  it('answers /metrics with 404 and an own endpoint with another method with 405', async () => {
    const upstream = await startUpstream();
    const gw = await startTestGateway(routesFor(upstream.url, [{ name: 'open', prefix: '/open', auth: 'public' }]), { ENABLE_METRICS: 'false' });
    try {
      const off = await request(`${gw.url}/metrics`);
      assert.equal(off.statusCode, 404);
      assert.equal(((await off.body.json()) as { code: string }).code, 'GW_ROUTE_NOT_FOUND');
      const post = await request(`${gw.url}/health`, { method: 'POST' });
      assert.equal(post.statusCode, 405);
      assert.equal(post.headers.allow, 'GET, HEAD');
      await post.body.dump();
      assert.equal(upstream.received.length, 0);
    } finally {
      await gw.close();
      await upstream.close();
    }
  });
});
