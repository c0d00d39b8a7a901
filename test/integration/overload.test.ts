import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { setPriority } from 'node:os';
import { fileURLToPath } from 'node:url';
import { after, before, describe, it } from 'node:test';
import { Pool } from 'undici';
import { send } from '../helpers/http.js';
import { until, untilDatabase } from '../helpers/poll.js';
import { spawnGateway, type GatewayProcess } from '../helpers/process.js';
import { startRedis, type TestRedis } from '../helpers/redis.js';
import { signToken } from '../helpers/tokens.js';
import { startUpstream, type TestUpstream } from '../helpers/upstream.js';

const REPO_ROOT = fileURLToPath(new URL('../../', import.meta.url));
const STORM_CLIENTS = 500;
const SLOW_ANSWER_MS = 10_000;
const SLOW_DEADLINE_MS = 2_000;
/** The storm lasts 30 s; the healthy route is measured from when it is on until shortly before it ends. */
const STORM_MS = 30_000;
const PROBE_MS = 26_000;

/** Sends GETs at a fixed rate (open loop: a late answer does not delay the next send) for a while. */
async function probe(pool: Pool, path: string, token: string, perSecond: number, durationMs: number): Promise<{ latencies: number[]; statuses: Map<number | string, number> }> {
  const latencies: number[] = [];
  const statuses = new Map<number | string, number>();
  const count = Math.round((perSecond * durationMs) / 1000);
  const start = performance.now();
  const sent: Array<Promise<void>> = [];
  for (let i = 0; i < count; i++) {
    const due = start + (i * 1000) / perSecond;
    const now = performance.now();
    if (due > now) await new Promise((r) => setTimeout(r, due - now));
    sent.push(
      (async () => {
        const t0 = performance.now();
        try {
          const res = await pool.request({ path: `${path}/${i}`, method: 'GET', headers: { authorization: `Bearer ${token}` }, headersTimeout: 30_000, bodyTimeout: 30_000 });
          await res.body.dump();
          statuses.set(res.statusCode, (statuses.get(res.statusCode) ?? 0) + 1);
        } catch (err) {
          statuses.set(String(err), (statuses.get(String(err)) ?? 0) + 1);
        }
        latencies.push(performance.now() - t0);
      })(),
    );
  }
  await Promise.all(sent);
  return { latencies, statuses };
}

async function metricsText(url: string): Promise<string> {
  return (await send(`${url}/metrics`)).text;
}

/** One sample's value from the exposition: name and labels exactly as exposed (labels in the order exposed). */
function metric(text: string, series: string): number {
  const line = text.split('\n').find((l) => l.startsWith(`${series} `));
  return line === undefined ? 0 : Number(line.slice(series.length + 1));
}

const p99 = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length * 0.99)]!;

describe('a slow upstream under a storm of clients', { timeout: 180_000 }, () => {
  let redis: TestRedis;
  let storm: ChildProcess;
  let stormOut = '';
  let fast: TestUpstream;
  let gw: GatewayProcess;

  before(async () => {
    redis = await startRedis();
    storm = spawn(process.execPath, ['--import', 'tsx', 'test/helpers/storm.ts', String(SLOW_ANSWER_MS)], { cwd: REPO_ROOT, stdio: ['pipe', 'pipe', 'inherit'] });
    storm.stdout!.setEncoding('utf8').on('data', (d: string) => (stormOut += d));
    const slowUrl = await until('the slow service to listen', 60_000, async () => (stormOut.includes('\n') ? (JSON.parse(stormOut.split('\n')[0]!) as { url: string }).url : undefined), 20);
    fast = await startUpstream();
    gw = await spawnGateway(
      {
        services: { reports: { instances: [slowUrl], retry: false }, charts: { instances: [fast.url] } },
        routes: [
          { name: 'reports', prefix: '/api/reports', service: 'reports', timeoutMs: SLOW_DEADLINE_MS },
          { name: 'chart', prefix: '/api/chart', service: 'charts', phi: true },
        ],
      },
      { REDIS_URL: redis.url, REDIS_COMMAND_TIMEOUT_MS: '100', HEALTH_CACHE_MS: '0', LOG_LEVEL: 'INFO', RATE_LIMIT_PER_MINUTE: '1000000', RATE_LIMIT_PER_ADDRESS_PER_MINUTE: '1000000' },
    );
    await untilDatabase(gw.url, 'healthy');
  });
  after(async () => {
    await gw?.stop();
    storm?.kill('SIGKILL');
    await fast?.close();
    await redis?.stop();
  });

  it('leaves the healthy PHI route beside it without errors and its p99 within 2x of its baseline', async (t) => {
    const token = await signToken({ sub: `storm-${process.pid}` });
    const pool = new Pool(gw.url, { connections: 64 });
    try {
      // Warm-up, then the baseline: the healthy route alone.
      await probe(pool, '/api/chart', token, 100, 1_000);
      const baseline = await probe(pool, '/api/chart', token, 100, 6_000);

      const stormDone = new Promise<void>((resolve) => storm.once('close', () => resolve()));
      storm.stdin!.end(`${JSON.stringify({ gateway: gw.url, path: '/api/reports/x', clients: STORM_CLIENTS, durationMs: STORM_MS, token: await signToken({ sub: `storm-clients-${process.pid}` }) })}\n`);
      // The storm is on once the slow service holds its requests; its first deadline wave follows.
      await until('the slow service to hold the storm\'s requests', 10_000, async () => (metric(await metricsText(gw.url), 'api_gateway_upstream_active_requests{service="reports"}') >= 200 ? true : undefined), 20);
      // From here the load generator yields the CPU to the gateway under test, as clients on
      // other machines would (on a 2-core machine it would otherwise measure the generator).
      setPriority(storm.pid!, 19);
      const during = await probe(pool, '/api/chart', token, 100, PROBE_MS);
      await stormDone;
      const after = await metricsText(gw.url);

      const stormCounts = JSON.parse(stormOut.trim().split('\n')[1] ?? '{}') as Record<string, number>;
      t.diagnostic(`baseline p99 ${p99(baseline.latencies).toFixed(1)} ms, during the storm ${p99(during.latencies).toFixed(1)} ms; healthy answers ${JSON.stringify(Object.fromEntries(during.statuses))}; storm answers ${JSON.stringify(stormCounts)}`);
      t.diagnostic(`gateway log lines: ${gw.stdout().split('\n').filter((l) => /"level":"(WARN|ERROR)"/.test(l)).slice(0, 5).join('\n')}`);
      assert.deepEqual([...during.statuses.keys()], [200], 'the healthy route answered every request');
      // The slow route's clients got 504 at the deadline, and the rest 503 at the door (Retry-After).
      assert.ok((stormCounts['504'] ?? 0) >= 200, `storm answers ${JSON.stringify(stormCounts)}`);
      assert.ok((stormCounts['503'] ?? 0) >= 200, `storm answers ${JSON.stringify(stormCounts)}`);
      // (502 too when the starved generator, which also plays the slow service, misses its health checks.)
      for (const status of Object.keys(stormCounts)) assert.ok(['502', '503', '504'].includes(status), `storm answers ${JSON.stringify(stormCounts)}`);
      assert.ok(metric(after, 'api_gateway_upstream_shed_total{service="reports",reason="full"}') >= 200, 'refused at the door');
      assert.equal(metric(after, 'api_gateway_upstream_shed_total{service="charts",reason="full"}'), 0);
      assert.ok(!gw.stdout().includes('redis unreachable'), 'no Redis outage was reported');
      assert.ok(p99(during.latencies) <= 2 * p99(baseline.latencies), `p99 ${p99(during.latencies).toFixed(1)} ms during the storm, ${p99(baseline.latencies).toFixed(1)} ms before`);
    } finally {
      await pool.close();
    }
  });
});
