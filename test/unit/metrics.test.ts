import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { Metrics } from '../../src/observability/metrics.js';

describe('request metrics exposition', () => {
  it('renders cumulative buckets, sum and count per series, and escapes label values', async () => {
    const m = new Metrics();
    m.request('GET', '/a/:id', 200, 0.004);
    m.request('GET', '/a/:id', 200, 0.08);
    m.request('GET', '/a/:id', 200, 3);
    m.request('PROPFIND', '/we"ird\\path', 404, 20);
    const { body } = await m.exposition();
    const line = (le: string) => body.split('\n').find((l) => l.startsWith('api_gateway_request_duration_seconds_bucket{method="GET",path="/a/:id",status="200",le="' + le + '"}'));
    assert.equal(line('0.005')?.split(' ')[1], '1');
    assert.equal(line('0.1')?.split(' ')[1], '2');
    assert.equal(line('2.5')?.split(' ')[1], '2');
    assert.equal(line('5')?.split(' ')[1], '3');
    assert.equal(line('+Inf')?.split(' ')[1], '3');
    assert.ok(body.includes('api_gateway_request_duration_seconds_count{method="GET",path="/a/:id",status="200"} 3'));
    assert.ok(body.includes('api_gateway_requests_total{method="GET",path="/a/:id",status="200"} 3'));
    const sum = Number(body.split('\n').find((l) => l.startsWith('api_gateway_request_duration_seconds_sum{method="GET"'))!.split(' ')[1]);
    assert.ok(Math.abs(sum - 3.084) < 1e-9);
    // Unknown methods share one value; a quote or backslash cannot break the exposition line.
    assert.ok(body.includes('api_gateway_requests_total{method="OTHER",path="/we\\"ird\\\\path",status="404"} 1'));
    assert.ok(body.includes('le="+Inf"} 1') && body.includes('# TYPE api_gateway_request_duration_seconds histogram'));
  });
});
