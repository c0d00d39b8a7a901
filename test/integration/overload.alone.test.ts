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

interface Probed {
  latencies: number[];
  statuses: Map<number | string, number>;
}

/**
 * Sends GETs at a fixed rate (open loop: a late answer does not delay the next send) for a while,
 * the same request to each pool at each tick, so that gateways probed together see the same
 * moments of the machine.
 */
async function probe(pools: Pool[], path: string, token: string, perSecond: number, durationMs: number): Promise<Probed[]> {
  const results = pools.map((): Probed => ({ latencies: [], statuses: new Map() }));
  const count = Math.round((perSecond * durationMs) / 1000);
  const start = performance.now();
  const sent: Array<Promise<void>> = [];
  for (let i = 0; i < count; i++) {
    const due = start + (i * 1000) / perSecond;
    const now = performance.now();
    if (due > now) await new Promise((r) => setTimeout(r, due - now));
    pools.forEach((pool, n) => {
      const { latencies, statuses } = results[n]!;
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
    });
  }
  await Promise.all(sent);
  return results;
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
  /** The gateway the storm hits. */
  let gw: GatewayProcess;
  /**
   * Its twin, configured alike and probed alike at the same moments, but spared the storm: the
   * baseline. Measured side by side, both see the same machine (a busy one moves a p99 measured
   * before the storm by 3x from one run to the next, and the storm's own ratio with it).
   */
  let twin: GatewayProcess;

  before(async () => {
    redis = await startRedis();
    storm = spawn(process.execPath, ['--import', 'tsx', 'test/helpers/storm.ts', String(SLOW_ANSWER_MS)], { cwd: REPO_ROOT, stdio: ['pipe', 'pipe', 'inherit'] });
    storm.stdout!.setEncoding('utf8').on('data', (d: string) => (stormOut += d));
    const slowUrl = await until('the slow service to listen', 60_000, async () => (stormOut.includes('\n') ? (JSON.parse(stormOut.split('\n')[0]!) as { url: string }).url : undefined), 20);
    fast = await startUpstream();
    const routes = {
      services: { reports: { instances: [slowUrl], retry: false }, charts: { instances: [fast.url] } },
      routes: [
        { name: 'reports', prefix: '/api/reports', service: 'reports', timeoutMs: SLOW_DEADLINE_MS },
        { name: 'chart', prefix: '/api/chart', service: 'charts', phi: true },
      ],
    };
    // The command timeout leaves room for a redis-server merely slow to get the CPU on a busy
    // machine (two hogs and five processes on two cores); loop stalls taken for a Redis outage
    // are tested on their own in stalls.test.ts.
    const env = { REDIS_URL: redis.url, REDIS_COMMAND_TIMEOUT_MS: '250', HEALTH_CACHE_MS: '0', LOG_LEVEL: 'INFO', RATE_LIMIT_PER_MINUTE: '1000000', RATE_LIMIT_PER_ADDRESS_PER_MINUTE: '1000000' };
    [gw, twin] = await Promise.all([spawnGateway(routes, env), spawnGateway(routes, env)]);
    await Promise.all([untilDatabase(gw.url, 'healthy'), untilDatabase(twin.url, 'healthy')]);
  });
  after(async () => {
    await Promise.all([gw?.stop(), twin?.stop()]);
    storm?.kill('SIGKILL');
    await fast?.close();
    await redis?.stop();
  });

  it('leaves the healthy PHI route beside it without errors and its p99 within 2x of its baseline', async (t) => {
    const token = await signToken({ sub: `storm-${process.pid}` });
    const pools = [new Pool(gw.url, { connections: 64 }), new Pool(twin.url, { connections: 64 })];
    try {
      // Warm-up, then the healthy route alone on both (for the record: before the storm, the two agree).
      await probe(pools, '/api/chart', token, 100, 1_000);
      const [alone, twinAlone] = await probe(pools, '/api/chart', token, 100, 4_000);

      const stormDone = new Promise<void>((resolve) => storm.once('close', () => resolve()));
      storm.stdin!.end(`${JSON.stringify({ gateway: gw.url, path: '/api/reports/x', clients: STORM_CLIENTS, durationMs: STORM_MS, token: await signToken({ sub: `storm-clients-${process.pid}` }) })}\n`);
      // The storm is on once the slow service holds its requests and the door has refused the
      // rest of its first burst (500 connections opened in the same moment: a one-off of a few
      // hundred milliseconds, the accepting of sockets). Its deadline waves, the refusals of the
      // clients coming back and everything after are measured.
      await until(
        'the slow service to hold the storm\'s requests and the door to refuse the rest',
        10_000,
        async () => {
          const text = await metricsText(gw.url);
          const held = metric(text, 'api_gateway_upstream_active_requests{service="reports"}');
          const refused = metric(text, 'api_gateway_upstream_shed_total{service="reports",reason="full"}');
          return held >= 200 && held + refused >= STORM_CLIENTS ? true : undefined;
        },
        20,
      );
      // From here the load generator yields the CPU to the gateways, as clients on other machines
      // would (on a 2-core machine it would otherwise measure the generator).
      setPriority(storm.pid!, 19);
      const [during, baseline] = await probe(pools, '/api/chart', token, 100, PROBE_MS);
      await stormDone;
      const after = await metricsText(gw.url);

      const stormCounts = JSON.parse(stormOut.trim().split('\n')[1] ?? '{}') as Record<string, number>;
      const ms = (xs: number[]) => `${p99(xs).toFixed(1)} ms`;
      t.diagnostic(`p99 during the storm ${ms(during!.latencies)}, its twin's ${ms(baseline!.latencies)}; before the storm ${ms(alone!.latencies)} and ${ms(twinAlone!.latencies)}`);
      t.diagnostic(`healthy answers ${JSON.stringify(Object.fromEntries(during!.statuses))}; storm answers ${JSON.stringify(stormCounts)}`);
      t.diagnostic(`gateway log lines: ${gw.stdout().split('\n').filter((l) => /"level":"(WARN|ERROR)"/.test(l)).slice(0, 5).join('\n')}`);
      assert.deepEqual([...during!.statuses.keys()], [200], 'the healthy route answered every request');
      assert.deepEqual([...baseline!.statuses.keys()], [200], 'the twin answered every request');
      // The slow route's clients got 504 at the deadline, and the rest 503 at the door (Retry-After).
      assert.ok((stormCounts['504'] ?? 0) >= 200, `storm answers ${JSON.stringify(stormCounts)}`);
      assert.ok((stormCounts['503'] ?? 0) >= 200, `storm answers ${JSON.stringify(stormCounts)}`);
      // (502 too when the starved generator, which also plays the slow service, misses its health checks.)
      for (const status of Object.keys(stormCounts)) assert.ok(['502', '503', '504'].includes(status), `storm answers ${JSON.stringify(stormCounts)}`);
      assert.ok(metric(after, 'api_gateway_upstream_shed_total{service="reports",reason="full"}') >= 200, 'refused at the door');
      assert.equal(metric(after, 'api_gateway_upstream_shed_total{service="charts",reason="full"}'), 0);
      const outage = gw.stdout().split('\n').filter((l) => l.includes('redis unreachable'));
      assert.deepEqual(outage.slice(0, 3), [], 'no Redis outage was reported');
      assert.ok(p99(during!.latencies) <= 2 * p99(baseline!.latencies), `p99 ${ms(during!.latencies)} during the storm, ${ms(baseline!.latencies)} on its twin spared it`);
    } finally {
      await Promise.all(pools.map((pool) => pool.close()));
    }
  });
});
