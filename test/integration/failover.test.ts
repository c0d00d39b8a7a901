import assert from 'node:assert/strict';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { after, before, describe, it } from 'node:test';
import { startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { expectProblem, send, type TimedAnswer } from '../helpers/http.js';
import { until } from '../helpers/poll.js';
import { freePort } from '../helpers/ports.js';
import { startUpstream, type TestUpstream } from '../helpers/upstream.js';
import { parseExposition, sampleValue, type Sample } from '../helpers/prometheus.js';

/**
 * Load balancing against real loopback instances through the real gateway: failover while an
 * instance dies and comes back, all instances down, no retries of POST/PATCH, retries on a
 * retryable status, per-try timeouts under the retry budget, the circuit breaker, passive outlier
 * ejection with its panic threshold, and the upstream series of /metrics.
 */

const HEALTH_INTERVAL_MS = 150;
/**
 * Checks share this process with the test's load and the upstreams: a timeout as long as the interval
 * and four misses in a row, so that a stalled event loop on a busy machine does not read as an outage.
 */
const FAST_CHECKS = { intervalMs: HEALTH_INTERVAL_MS, timeoutMs: HEALTH_INTERVAL_MS, unhealthyThreshold: 4 };

/**
 * Every /health probe reaches the services (no cache); the gateway's own load signals are kept out
 * of the verdict, and auth-rbac is a live stand-in, so that the status only moves with the backend.
 */
const ENV = { HEALTH_CACHE_MS: '0', MEMORY_LIMIT_MB: '65536', HEALTH_EVENT_LOOP_THRESHOLD_MS: '10000', ROUTES_WATCH: 'false' };

let auth: TestUpstream;
before(async () => {
  auth = await startUpstream();
});
after(async () => {
  await auth.close();
});

function gateway(routes: unknown): Promise<TestGateway> {
  return startTestGateway(routes, { ...ENV, AUTH_SERVICE_URL: auth.url });
}

/** One service `backend` behind a public prefix /api. */
function lbRoutes(service: Record<string, unknown>, route: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    services: { backend: service },
    routes: [{ name: 'api', prefix: '/api', service: 'backend', auth: 'public', ...route }],
  };
}

let idCounter = 0;
function newId(tag: string): string {
  return `${tag}-${++idCounter}`;
}

function get(gw: TestGateway, id: string, path = '/api/thing'): Promise<TimedAnswer> {
  return send(`${gw.url}${path}`, { headers: { 'x-request-id': id } });
}

/** The request ids an instance saw (health checks aside), in order. */
function idsAt(upstream: TestUpstream): string[] {
  return upstream.received.map((r) => String(r.headers['x-request-id']));
}

function timesSeen(upstreams: readonly TestUpstream[], id: string): number[] {
  return upstreams.map((u) => idsAt(u).filter((seen) => seen === id).length);
}

function assertNoDuplicateIds(upstream: TestUpstream): void {
  const ids = idsAt(upstream);
  assert.equal(new Set(ids).size, ids.length, `${upstream.url} saw a request id twice: ${ids.join(', ')}`);
}

interface ServiceHealth {
  status: string;
  healthy: number;
  total: number;
}
interface Health {
  status: string;
  services: Record<string, ServiceHealth>;
}

async function health(gw: TestGateway): Promise<{ statusCode: number; body: Health }> {
  const res = await send(`${gw.url}/health`);
  return { statusCode: res.statusCode, body: JSON.parse(res.text) as Health };
}

function untilBackend(gw: TestGateway, what: string, ok: (s: ServiceHealth) => boolean, timeoutMs = 5_000): Promise<Health> {
  return until(`/health reporting backend ${what}`, timeoutMs, async () => {
    const { body } = await health(gw);
    return body.services.backend !== undefined && ok(body.services.backend) ? body : undefined;
  });
}

/** The gateway's /metrics, parsed. */
async function scrape(gw: TestGateway): Promise<Sample[]> {
  const res = await send(`${gw.url}/metrics`);
  assert.equal(res.statusCode, 200);
  return parseExposition(res.text);
}

const sample = sampleValue;

/** A gate the test opens: handlers wait on it. */
function gate(): { wait: Promise<void>; open: () => void } {
  let open!: () => void;
  const wait = new Promise<void>((resolve) => (open = resolve));
  return { wait, open };
}

function answer(res: ServerResponse, status: number, body: string, headers: Record<string, string> = {}): void {
  res.writeHead(status, { 'content-type': 'text/plain', 'content-length': Buffer.byteLength(body), ...headers });
  res.end(body);
}

/** Reads the request body to its end, then runs `then`. */
function afterBody(req: IncomingMessage, then: () => void): void {
  req.resume();
  req.on('end', then);
}

describe('failover: an instance dies under load and comes back', () => {
  const upstreams: TestUpstream[] = [];
  let gw: TestGateway;

  before(async () => {
    for (let i = 0; i < 3; i++) upstreams.push(await startUpstream());
    gw = await gateway(lbRoutes({ instances: upstreams.map((u) => u.url), healthCheck: FAST_CHECKS }));
  });
  after(async () => {
    await gw.close();
    for (const u of upstreams) await u.close();
  });

  it('loses no client request when an instance is killed mid-load, and sends it traffic again soon after it restarts', { timeout: 30_000 }, async () => {
    const TOTAL = 600;
    const CONCURRENCY = 10;
    const KILL_AT = 200;
    const victim = upstreams[1]!;
    const port = victim.port;
    let issued = 0;
    let completed = 0;
    let killed: Promise<void> | null = null;
    // Warm-up: the first requests open connections and compile code paths, which is no part of the test.
    for (let i = 0; i < 30; i++) assert.equal((await get(gw, newId('warm'))).statusCode, 200);
    const statuses = new Map<number, number>();
    const failures: string[] = [];
    const worker = async () => {
      while (issued < TOTAL) {
        issued++;
        const id = newId('load');
        try {
          const res = await get(gw, id);
          statuses.set(res.statusCode, (statuses.get(res.statusCode) ?? 0) + 1);
          if (res.statusCode !== 200) failures.push(`${id}: ${res.statusCode} ${res.text}`);
        } catch (err) {
          failures.push(`${id}: ${(err as Error).message}`);
        }
        // Killed from a request count, while the other workers keep their requests in flight.
        if (++completed === KILL_AT) killed = victim.close();
      }
    };
    await Promise.all(Array.from({ length: CONCURRENCY }, worker));
    assert.ok(killed !== null, 'the instance was killed during the load');
    await killed;
    const verdicts = gw.logs.filter((l) => typeof l.message === 'string' && l.message.startsWith('upstream instance'));
    assert.deepEqual(failures, [], `every client request succeeds: ${JSON.stringify([...statuses])}; upstream verdicts: ${JSON.stringify(verdicts)}`);
    assert.equal(statuses.get(200), TOTAL);
    assert.ok(victim.received.length > 0 && victim.received.length < TOTAL / 2, `the victim served part of the load before it died (${victim.received.length})`);
    for (const u of upstreams) assertNoDuplicateIds(u);

    // The health checks take it out (they must have failed before a restart can end an ejection too).
    await until('the health checks marking the killed instance unhealthy', 5_000, async () =>
      gw.logs.some((l) => l.message === 'upstream instance unhealthy' && l.instance === victim.url) ? true : undefined,
    );
    await untilBackend(gw, 'healthy 2/3', (s) => s.healthy === 2 && s.total === 3 && s.status === 'degraded');

    const restarted = await startUpstream(undefined, port);
    upstreams[1] = restarted;
    const restartedAt = performance.now();
    await until('the restarted instance receiving traffic again', 8_000, async () => {
      const res = await get(gw, newId('back'));
      assert.equal(res.statusCode, 200, res.text);
      return restarted.received.length > 0 ? true : undefined;
    });
    const backAfter = performance.now() - restartedAt;
    assert.ok(backAfter < 4_000, `traffic reached the restarted instance ${backAfter.toFixed(0)} ms after it came back (health interval ${HEALTH_INTERVAL_MS} ms)`);
    const { statusCode, body } = await health(gw);
    assert.equal(statusCode, 200);
    assert.deepEqual(body.services.backend, { status: 'healthy', healthy: 3, total: 3 });
  });
});

describe('all instances down', () => {
  let gw: TestGateway;
  const CONNECT_TIMEOUT_MS = 1_000;

  before(async () => {
    const ports = [await freePort(), await freePort(), await freePort()];
    gw = await gateway(
      lbRoutes({ instances: ports.map((p) => `http://127.0.0.1:${p}`), healthCheck: FAST_CHECKS, connectTimeoutMs: CONNECT_TIMEOUT_MS }, { timeoutMs: 10_000 }),
    );
  });
  after(async () => {
    await gw.close();
  });

  it('answers 502 at once, then GW_NO_HEALTHY_UPSTREAM with Retry-After; live stays 200 and /health says degraded', { timeout: 15_000 }, async () => {
    const first = await get(gw, newId('down'));
    assert.ok(first.ms < CONNECT_TIMEOUT_MS, `answered after ${first.ms.toFixed(0)} ms`);
    const code = (JSON.parse(first.text) as { code: string }).code;
    assert.ok(code === 'GW_UPSTREAM_UNAVAILABLE' || code === 'GW_NO_HEALTHY_UPSTREAM', `code ${code}`);
    expectProblem(first, 502, code);

    const refused = await until('GW_NO_HEALTHY_UPSTREAM once the checks took every instance out', 5_000, async () => {
      const res = await get(gw, newId('down'));
      assert.equal(res.statusCode, 502, res.text);
      assert.ok(res.ms < CONNECT_TIMEOUT_MS, `answered after ${res.ms.toFixed(0)} ms`);
      return (JSON.parse(res.text) as { code: string }).code === 'GW_NO_HEALTHY_UPSTREAM' ? res : undefined;
    });
    expectProblem(refused, 502, 'GW_NO_HEALTHY_UPSTREAM');
    const retryAfter = String(refused.headers['retry-after']);
    assert.match(retryAfter, /^[1-9][0-9]*$/, `Retry-After: ${retryAfter}`);
    assert.ok(Number(retryAfter) <= Math.ceil(HEALTH_INTERVAL_MS / 1000), `Retry-After ${retryAfter} is at most one health interval`);

    const live = await send(`${gw.url}/health/live`);
    assert.equal(live.statusCode, 200);
    const { statusCode, body } = await health(gw);
    assert.equal(statusCode, 200);
    assert.equal(body.status, 'degraded');
    assert.deepEqual(body.services.backend, { healthy: 0, total: 3, status: 'unhealthy' });
  });
});

describe('POST and PATCH are never retried', () => {
  const upstreams: TestUpstream[] = [];
  let gw: TestGateway;

  before(async () => {
    for (let i = 0; i < 3; i++) {
      upstreams.push(
        await startUpstream((req, res) => {
          // Every instance fails the same way, so a retry would have somewhere to go.
          if (req.url!.startsWith('/api/reset')) afterBody(req, () => req.socket.destroy());
          else afterBody(req, () => answer(res, 503, `instance ${i} says 503`, { 'x-instance': String(i) }));
        }),
      );
    }
    // A budget that never refuses and no ejection: only the method keeps a request from a second instance.
    gw = await gateway(
      lbRoutes({ instances: upstreams.map((u) => u.url), healthCheck: FAST_CHECKS, outlierDetection: false, retry: { retries: 2, budgetPercent: 100, minRetriesPerSecond: 1000 } }),
    );
  });
  after(async () => {
    await gw.close();
    for (const u of upstreams) await u.close();
  });

  it('control: a GET that meets the same failures is tried on every instance', async () => {
    const reset = newId('get-reset');
    expectProblem(await get(gw, reset, '/api/reset'), 502, 'GW_UPSTREAM_UNAVAILABLE');
    assert.deepEqual(timesSeen(upstreams, reset), [1, 1, 1]);
    const unavailable = newId('get-503');
    const res = await get(gw, unavailable, '/api/unavailable');
    assert.equal(res.statusCode, 503, 'the last try\'s answer passes through');
    assert.deepEqual(timesSeen(upstreams, unavailable), [1, 1, 1]);
  });

  for (const method of ['POST', 'PATCH'] as const) {
    for (const withBody of [true, false]) {
      const what = `${method} ${withBody ? 'with a body' : 'without a body'}`;

      it(`${what}: a reset reaches one instance once and the client gets 502`, async () => {
        const id = newId(`${method.toLowerCase()}-reset`);
        const res = await send(`${gw.url}/api/reset`, { method, headers: { 'x-request-id': id, ...(withBody ? { 'content-type': 'application/json' } : {}) }, ...(withBody ? { body: '{"note":"once"}' } : {}) });
        expectProblem(res, 502, 'GW_UPSTREAM_UNAVAILABLE');
        assert.deepEqual(timesSeen(upstreams, id).sort(), [0, 0, 1], 'exactly one instance saw the request, once');
      });

      it(`${what}: a 503 reaches one instance once and passes through to the client`, async () => {
        const id = newId(`${method.toLowerCase()}-503`);
        const res = await send(`${gw.url}/api/unavailable`, { method, headers: { 'x-request-id': id, ...(withBody ? { 'content-type': 'application/json' } : {}) }, ...(withBody ? { body: '{"note":"once"}' } : {}) });
        assert.equal(res.statusCode, 503);
        assert.match(res.text, /^instance \d says 503$/, 'the instance\'s own answer, not a gateway problem');
        const seen = timesSeen(upstreams, id);
        assert.deepEqual([...seen].sort(), [0, 0, 1], 'exactly one instance saw the request, once');
        assert.equal(res.headers['x-instance'], String(seen.indexOf(1)), 'the answer is that instance\'s');
      });
    }
  }
});

describe('GET retried on a 503 from one instance', () => {
  let bad: TestUpstream;
  const good: TestUpstream[] = [];
  let gw: TestGateway;

  before(async () => {
    bad = await startUpstream((_req, res) => answer(res, 503, 'BAD-503-BODY', { 'x-instance': 'bad', 'x-bad-marker': 'yes' }));
    for (let i = 0; i < 2; i++) good.push(await startUpstream((_req, res) => answer(res, 200, `good ${i}`, { 'x-instance': `good-${i}` })));
    gw = await gateway(lbRoutes({ instances: [bad.url, ...good.map((u) => u.url)], healthCheck: FAST_CHECKS }));
  });
  after(async () => {
    await gw.close();
    for (const u of [bad, ...good]) await u.close();
  });

  it('answers 200 from another instance, with no trace of the 503, and logs retries:1', async () => {
    let id = '';
    let res: TimedAnswer | undefined;
    // Round robin: one of the first three requests starts at the 503 instance.
    for (let i = 0; i < 3 && bad.received.length === 0; i++) {
      id = newId('retry503');
      res = await get(gw, id);
      assert.equal(res.statusCode, 200, res.text);
    }
    assert.equal(bad.received.length, 1, 'a request went to the 503 instance first');
    assert.equal(idsAt(bad)[0], id);
    assert.ok(res !== undefined);
    assert.equal(res.statusCode, 200);
    assert.match(String(res.headers['x-instance']), /^good-[01]$/);
    assert.equal(res.headers['x-bad-marker'], undefined);
    assert.doesNotMatch(res.text, /BAD-503/);
    assert.match(res.text, /^good [01]$/);
    assert.deepEqual(timesSeen([bad, ...good], id).reduce((a, b) => a + b, 0), 2, 'the 503 instance and one other, once each');
    assert.equal(timesSeen([bad], id)[0], 1);

    const line = await until('the access line of the retried request', 2_000, async () => gw.logs.find((l) => l.request_id === id && l.message !== undefined && 'status_code' in l));
    assert.equal(line.status_code, 200);
    assert.equal(line.retries, 1, JSON.stringify(line));
  });
});

describe('per-try timeout with the retry budget exhausted', () => {
  const upstreams: TestUpstream[] = [];
  const release = gate();
  let gw: TestGateway;

  before(async () => {
    for (let i = 0; i < 3; i++) {
      upstreams.push(
        await startUpstream(async (_req, res) => {
          await release.wait;
          answer(res, 200, 'late');
        }),
      );
    }
    gw = await gateway(
      lbRoutes(
        { instances: upstreams.map((u) => u.url), healthCheck: FAST_CHECKS, retry: { perTryTimeoutMs: 100, budgetPercent: 0, minRetriesPerSecond: 0 } },
        { timeoutMs: 5_000 },
      ),
    );
  });
  after(async () => {
    release.open();
    await gw.close();
    for (const u of upstreams) await u.close();
  });

  it('gives up after one try (504) and no request reaches a second instance', { timeout: 10_000 }, async () => {
    const ids = Array.from({ length: 6 }, () => newId('nobudget'));
    const answers = await Promise.all(ids.map((id) => get(gw, id)));
    for (const res of answers) {
      expectProblem(res, 504, 'GW_UPSTREAM_TIMEOUT');
      assert.ok(res.ms < 2_500, `the per-try timeout answered, not the 5 s route deadline (${res.ms.toFixed(0)} ms)`);
    }
    let reached = 0;
    for (const id of ids) {
      const seen = timesSeen(upstreams, id);
      assert.ok(seen.reduce((a, b) => a + b, 0) <= 1, `${id} reached more than one instance: ${JSON.stringify(seen)}`);
      reached += seen.reduce((a, b) => a + b, 0);
    }
    assert.ok(reached > 0, 'the requests reached the instances');
    const samples = await scrape(gw);
    assert.equal(sample(samples, 'api_gateway_upstream_retries_total', { service: 'backend' }), 0);
    assert.equal(sample(samples, 'api_gateway_upstream_retries_refused_total', { service: 'backend' }), ids.length);
  });
});

describe('per-try timeout with the default retry budget', () => {
  let slow: TestUpstream;
  const fast: TestUpstream[] = [];
  const release = gate();
  let gw: TestGateway;

  before(async () => {
    slow = await startUpstream(async (_req, res) => {
      await release.wait;
      answer(res, 200, 'slow');
    });
    for (let i = 0; i < 2; i++) fast.push(await startUpstream((_req, res) => answer(res, 200, `fast ${i}`)));
    gw = await gateway(lbRoutes({ instances: [slow.url, ...fast.map((u) => u.url)], healthCheck: FAST_CHECKS, retry: { perTryTimeoutMs: 250 } }, { timeoutMs: 5_000 }));
  });
  after(async () => {
    release.open();
    await gw.close();
    for (const u of [slow, ...fast]) await u.close();
  });

  it('moves a GET from the slow instance on to a fast one; no instance sees a request id twice', { timeout: 10_000 }, async () => {
    // Few enough requests that the slow instance is neither ejected (5 failures) nor out of budget (3 retries a second).
    const ids: string[] = [];
    for (let i = 0; i < 4; i++) {
      const id = newId('slow');
      ids.push(id);
      const res = await get(gw, id);
      assert.equal(res.statusCode, 200, res.text);
      assert.match(res.text, /^fast [01]$/);
      assert.ok(res.ms < 2_500, `answered after ${res.ms.toFixed(0)} ms`);
    }
    const slowIds = idsAt(slow);
    assert.ok(slowIds.length >= 1, 'round robin sent a request to the slow instance');
    for (const id of ids) {
      const [atSlow, ...atFast] = timesSeen([slow, ...fast], id);
      assert.equal(atFast.reduce((a, b) => a + b, 0), 1, `${id} answered by exactly one fast instance`);
      assert.ok(atSlow! <= 1);
    }
    for (const u of [slow, ...fast]) assertNoDuplicateIds(u);
    const samples = await scrape(gw);
    assert.equal(sample(samples, 'api_gateway_upstream_retries_total', { service: 'backend' }), slowIds.length);
    assert.equal(sample(samples, 'api_gateway_upstream_failures_total', { service: 'backend', upstream: slow.url, kind: 'timeout' }), slowIds.length);
  });
});

describe('circuit breaker', () => {
  let upstream: TestUpstream;
  let gw: TestGateway;
  let held: ReturnType<typeof gate> | null = gate();

  before(async () => {
    upstream = await startUpstream(async (_req, res) => {
      if (held !== null) await held.wait;
      answer(res, 200, 'ok');
    });
    gw = await gateway(lbRoutes({ instances: [upstream.url], healthCheck: FAST_CHECKS, maxConcurrentRequests: 2 }));
  });
  after(async () => {
    held?.open();
    await gw.close();
    await upstream.close();
  });

  it('refuses the third concurrent request with 503 at once, then lets requests pass after release', { timeout: 10_000 }, async () => {
    const inFlight = [get(gw, newId('cb')), get(gw, newId('cb'))];
    await until('two requests held at the instance', 2_000, async () => (upstream.received.length === 2 ? true : undefined));
    const id = newId('cb-over');
    const refused = await get(gw, id);
    expectProblem(refused, 503, 'GW_UPSTREAM_OVERLOADED');
    assert.match(String(refused.headers['retry-after']), /^[123]$/);
    assert.ok(refused.ms < 1_000, `answered while the two were still held, after ${refused.ms.toFixed(0)} ms`);
    assert.equal(upstream.received.length, 2, 'the upstream never saw the refused request');
    assert.ok(!idsAt(upstream).includes(id));
    const samples = await scrape(gw);
    // Refused at the door, before the token or the upstream call.
    assert.equal(sample(samples, 'api_gateway_upstream_shed_total', { service: 'backend', reason: 'full' }), 1);
    assert.equal(sample(samples, 'api_gateway_upstream_active_requests', { service: 'backend' }), 2);

    const gateNow = held!;
    held = null;
    gateNow.open();
    for (const res of await Promise.all(inFlight)) assert.equal(res.statusCode, 200, res.text);
    for (let i = 0; i < 3; i++) {
      const res = await get(gw, newId('cb-after'));
      assert.equal(res.statusCode, 200, res.text);
    }
    assert.equal(upstream.received.length, 5);
  });
});

describe('passive outlier ejection', () => {
  const failing = (_req: IncomingMessage, res: ServerResponse) => answer(res, 500, 'broken');
  const outlier = { consecutiveFailures: 3, baseEjectionMs: 30_000, maxEjectedPercent: 50 };

  describe('one failing instance', () => {
    let bad: TestUpstream;
    const good: TestUpstream[] = [];
    let gw: TestGateway;

    before(async () => {
      bad = await startUpstream(failing);
      for (let i = 0; i < 2; i++) good.push(await startUpstream());
      gw = await gateway(lbRoutes({ instances: [good[0]!.url, bad.url, good[1]!.url], healthCheck: false, outlierDetection: outlier }));
    });
    after(async () => {
      await gw.close();
      for (const u of [bad, ...good]) await u.close();
    });

    it('ejects the instance after its failures in a row: it gets no more traffic and a WARN is logged', async () => {
      // Round robin over three: nine requests give the failing instance its three failures.
      for (let i = 0; i < 9; i++) await get(gw, newId('eject'));
      assert.equal(bad.received.length, 3);
      const warn = gw.logs.filter((l) => l.message === 'upstream instance ejected');
      assert.equal(warn.length, 1, JSON.stringify(warn));
      assert.equal(warn[0]!.level, 'WARN');
      assert.equal(warn[0]!.instance, bad.url);
      assert.equal(warn[0]!.upstream_service, 'backend');

      for (let i = 0; i < 12; i++) {
        const res = await get(gw, newId('after-eject'));
        assert.equal(res.statusCode, 200, res.text);
      }
      assert.equal(bad.received.length, 3, 'no traffic reached the ejected instance');
      const { body } = await health(gw);
      assert.deepEqual(body.services.backend, { status: 'degraded', healthy: 2, total: 3 });
      const samples = await scrape(gw);
      assert.equal(sample(samples, 'api_gateway_upstream_ejections_total', { service: 'backend', upstream: bad.url }), 1);
      assert.equal(sample(samples, 'api_gateway_upstream_healthy', { service: 'backend', upstream: bad.url }), 0);
    });
  });

  describe('an instance that comes back quickly', () => {
    let flaky: TestUpstream;
    let good: TestUpstream;
    let gw: TestGateway;

    before(async () => {
      flaky = await startUpstream();
      good = await startUpstream();
      gw = await gateway(lbRoutes({ instances: [good.url, flaky.url], healthCheck: FAST_CHECKS, outlierDetection: { consecutiveFailures: 2, baseEjectionMs: 30_000, maxEjectedPercent: 50 } }));
    });
    after(async () => {
      await gw.close();
      await good.close();
      await flaky.close();
    });

    it('restarted within one health interval, it is back in rotation at the next passing check, not after the 30 s ejection', { timeout: 20_000 }, async () => {
      const port = flaky.port;
      await flaky.close();
      // Its failures on real traffic eject it (round robin: it gets every other request).
      await until('the ejection', 5_000, async () => {
        await get(gw, newId('down'));
        return gw.logs.some((l) => l.message === 'upstream instance ejected' && l.instance === flaky.url) ? true : undefined;
      });
      flaky = await startUpstream(undefined, port);
      // Within a few health intervals of answering again it gets requests: far inside the 30 s ejection.
      await until('traffic at the restarted instance', 10_000, async () => {
        const res = await get(gw, newId('back'));
        assert.equal(res.statusCode, 200, res.text);
        return flaky.received.length > 0 ? true : undefined;
      });
      assert.ok(gw.logs.some((l) => l.message === 'upstream instance passes its health check again; ejection ended' && l.instance === flaky.url));
    });
  });

  describe('panic threshold', () => {
    const bad: TestUpstream[] = [];
    let good: TestUpstream;
    let gw: TestGateway;

    before(async () => {
      for (let i = 0; i < 2; i++) bad.push(await startUpstream(failing));
      good = await startUpstream();
      gw = await gateway(lbRoutes({ instances: [bad[0]!.url, good.url, bad[1]!.url], healthCheck: false, outlierDetection: outlier }));
    });
    after(async () => {
      await gw.close();
      for (const u of [...bad, good]) await u.close();
    });

    it('with two of three instances failing and maxEjectedPercent 50, ejects at most one', async () => {
      for (let i = 0; i < 30; i++) await get(gw, newId('panic'));
      const samples = await scrape(gw);
      const ejections = [...bad, good].map((u) => sample(samples, 'api_gateway_upstream_ejections_total', { service: 'backend', upstream: u.url }));
      assert.equal(ejections[2 /* good */], 0);
      assert.equal(ejections.reduce((a, b) => a! + b!, 0), 1, `ejections per instance: ${JSON.stringify(ejections)}`);
      assert.equal(gw.logs.filter((l) => l.message === 'upstream instance ejected').length, 1);
      const { body } = await health(gw);
      assert.deepEqual(body.services.backend, { status: 'degraded', healthy: 2, total: 3 });
      // The failing instance left in rotation keeps its share of the traffic.
      const kept = bad.find((u) => sample(samples, 'api_gateway_upstream_ejections_total', { service: 'backend', upstream: u.url }) === 0)!;
      const before = kept.received.length;
      for (let i = 0; i < 4; i++) await get(gw, newId('panic-after'));
      assert.equal(kept.received.length, before + 2);
    });
  });
});

describe('upstream metrics', () => {
  const upstreams: TestUpstream[] = [];
  let gw: TestGateway;

  before(async () => {
    for (let i = 0; i < 3; i++) upstreams.push(await startUpstream());
    gw = await gateway(lbRoutes({ instances: upstreams.map((u) => u.url), healthCheck: FAST_CHECKS }));
  });
  after(async () => {
    await gw.close();
    for (const u of upstreams) await u.close();
  });

  it('counts the requests to each instance and reports a dead one as not healthy', { timeout: 10_000 }, async () => {
    const SENT = 30;
    for (let i = 0; i < SENT; i++) assert.equal((await get(gw, newId('metrics'))).statusCode, 200);
    let samples = await scrape(gw);
    const perInstance = upstreams.map((u) => sample(samples, 'api_gateway_upstream_requests_total', { service: 'backend', upstream: u.url }));
    assert.deepEqual(perInstance, [10, 10, 10], 'round robin spreads evenly');
    const all = samples.filter((s) => s.name === 'api_gateway_upstream_requests_total' && s.labels.service === 'backend');
    assert.equal(all.length, 3);
    assert.equal(all.reduce((sum, s) => sum + s.value, 0), SENT);
    assert.deepEqual(
      upstreams.map((u) => u.received.length),
      [10, 10, 10],
    );
    for (const u of upstreams) assert.equal(sample(samples, 'api_gateway_upstream_healthy', { service: 'backend', upstream: u.url }), 1);

    const dead = upstreams[2]!;
    await dead.close();
    samples = await until('api_gateway_upstream_healthy 0 for the dead instance', 5_000, async () => {
      const s = await scrape(gw);
      return sample(s, 'api_gateway_upstream_healthy', { service: 'backend', upstream: dead.url }) === 0 ? s : undefined;
    });
    for (const u of upstreams.slice(0, 2)) assert.equal(sample(samples, 'api_gateway_upstream_healthy', { service: 'backend', upstream: u.url }), 1);
  });
});
