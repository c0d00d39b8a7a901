import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { RouteTrends, TREND_BUCKET_MS, TREND_BUCKETS } from '../../src/observability/route-trends.js';

describe('RouteTrends (the status page\'s per-route plots)', () => {
  const T0 = 1_800_000_000_000 - (1_800_000_000_000 % TREND_BUCKET_MS);

  it('rate, error rate and p95 per 10 s bucket, oldest first', () => {
    const trends = new RouteTrends();
    for (let i = 0; i < 95; i++) trends.record('/api/x', 200, 0.004, T0 + 1_000);
    for (let i = 0; i < 5; i++) trends.record('/api/x', 502, 2, T0 + 2_000);
    for (let i = 0; i < 20; i++) trends.record('/api/x', 200, 0.3, T0 + TREND_BUCKET_MS + 500);
    const [only] = trends.snapshot(T0 + 2 * TREND_BUCKET_MS - 1);
    const points = only!.points;
    assert.equal(points.length, TREND_BUCKETS);
    const [first, second] = points.slice(-2);
    assert.deepEqual({ rate: first!.rate, errorRate: first!.errorRate, p95Ms: first!.p95Ms }, { rate: 10, errorRate: 0.05, p95Ms: 5 });
    assert.equal(second!.p95Ms, 500);
    assert.equal(points[0]!.rate, 0);
  });

  it('fixed memory: an old bucket is reused, never a new one added', () => {
    const trends = new RouteTrends();
    trends.record('/r', 200, 0.01, T0);
    trends.record('/r', 500, 0.01, T0 + TREND_BUCKETS * TREND_BUCKET_MS);
    const points = trends.snapshot(T0 + TREND_BUCKETS * TREND_BUCKET_MS)[0]!.points;
    assert.equal(points.filter((p) => p.rate > 0).length, 1, 'the bucket of 5 minutes ago was overwritten');
    assert.equal(points.at(-1)!.errorRate, 1);
  });
});
