import assert from 'node:assert/strict';
import { createServer, type Server, type ServerResponse } from 'node:http';
import { lookup } from 'node:dns/promises';
import { after, before, describe, it } from 'node:test';
import { startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { send } from '../helpers/http.js';
import { until } from '../helpers/poll.js';
import { signToken } from '../helpers/tokens.js';
import { startUpstream, type TestUpstream } from '../helpers/upstream.js';

/**
 * Three instances, A, B and S, behind several services of one gateway. S is the slow one: on the
 * paths of the balancer comparison it holds every response until the test lets them go, which it
 * does only when every request the test has outstanding is held at S (so nothing deadlocks and
 * nothing depends on timing). Elsewhere S answers at once.
 */
describe('load balancing through the gateway', () => {
  let a: TestUpstream;
  let b: TestUpstream;
  let s: TestUpstream;
  let gw: TestGateway;
  const held: ServerResponse[] = [];
  /** Requests the test has sent and not yet had answered. */
  let outstanding = 0;

  const releaseIfAllHeld = () => {
    if (held.length > 0 && held.length >= outstanding) for (const res of held.splice(0)) res.writeHead(200, { 'content-type': 'application/json' }).end('{"slow":true}');
  };

  before(async () => {
    a = await startUpstream();
    b = await startUpstream();
    s = await startUpstream((req, res) => {
      req.resume();
      if (req.url!.startsWith('/rr/') || req.url!.startsWith('/lr/')) {
        held.push(res);
        releaseIfAllHeld();
      } else res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
    });
    const three = [a.url, b.url, s.url];
    gw = await startTestGateway({
      services: {
        rr: { instances: three, balancer: 'round-robin' },
        lr: { instances: three, balancer: 'least-request' },
        weighted: { instances: [{ url: a.url, weight: 1 }, { url: b.url, weight: 2 }, { url: s.url, weight: 3 }] },
        sticky: { instances: three, balancer: 'consistent-hash', hashOn: { header: 'X-Patient-Id' } },
        'per-user': { instances: three, balancer: 'consistent-hash', hashOn: 'user' },
      },
      routes: [
        { name: 'rr', prefix: '/rr', service: 'rr', auth: 'public' },
        { name: 'lr', prefix: '/lr', service: 'lr', auth: 'public' },
        { name: 'weighted', prefix: '/weighted', service: 'weighted', auth: 'public' },
        { name: 'sticky', prefix: '/sticky', service: 'sticky', auth: 'public' },
        { name: 'mine', prefix: '/mine', service: 'per-user', auth: 'required' },
      ],
    });
  });
  after(async () => {
    for (const res of held.splice(0)) res.end();
    await gw?.close();
    await Promise.all([a, b, s].map((u) => u?.close()));
  });

  /** `n` requests to `path`/i, `concurrency` at a time; the statuses. */
  async function drive(path: string, n: number, concurrency: number, headers: (i: number) => Record<string, string> = () => ({})): Promise<number[]> {
    const statuses: number[] = [];
    let next = 0;
    const worker = async () => {
      while (next < n) {
        const i = next++;
        outstanding++;
        try {
          statuses.push((await send(`${gw.url}${path}/${i}`, { headers: headers(i), timeoutMs: 10_000 })).statusCode);
        } finally {
          outstanding--;
          releaseIfAllHeld();
        }
      }
    };
    await Promise.all(Array.from({ length: concurrency }, worker));
    return statuses;
  }

  const count = (u: TestUpstream, prefix: string) => u.received.filter((r) => r.url.startsWith(prefix)).length;
  const byInstance = (prefix: string) => ({ a: count(a, prefix), b: count(b, prefix), s: count(s, prefix) });

  it('least-request sends the slow instance far less than round robin does', { timeout: 20_000 }, async () => {
    const N = 60;
    const C = 6;
    const rrStatuses = await drive('/rr', N, C);
    const lrStatuses = await drive('/lr', N, C);
    assert.deepEqual(rrStatuses, Array(N).fill(200));
    assert.deepEqual(lrStatuses, Array(N).fill(200));
    const rr = byInstance('/rr/');
    const lr = byInstance('/lr/');
    // Round robin ignores how busy an instance is: exactly every third request.
    assert.deepEqual(rr, { a: N / 3, b: N / 3, s: N / 3 });
    assert.equal(lr.a + lr.b + lr.s, N);
    // Least-request (two random choices) takes S only while S has no more requests in flight than
    // the other instance of the pair; with C outstanding at most, S stops at C/2 held.
    assert.ok(lr.s <= C / 2, `least-request sent ${lr.s} of ${N} to the slow instance (${JSON.stringify(lr)})`);
    assert.ok(lr.s < rr.s, `least-request ${lr.s}, round robin ${rr.s}`);
  });

  it('honours weights: 1/2/3 get 10/20/30 of 60 requests', async () => {
    const statuses = await drive('/weighted', 60, 1);
    assert.deepEqual(statuses, Array(60).fill(200));
    assert.deepEqual(byInstance('/weighted/'), { a: 10, b: 20, s: 30 });
  });

  it('hashes on a header: one value always reaches the same instance, many values spread over all', async () => {
    const where = (value: string) =>
      [a, b, s].filter((u) => u.received.some((r) => r.url.startsWith('/sticky/') && r.headers['x-patient-id'] === value));
    const one = await drive('/sticky', 50, 5, () => ({ 'X-Patient-Id': 'p-0001' }));
    assert.deepEqual(one, Array(50).fill(200));
    const home = where('p-0001');
    assert.equal(home.length, 1, 'all 50 requests of p-0001 on one instance');
    assert.equal(count(home[0]!, '/sticky/'), 50);

    const values = Array.from({ length: 60 }, (_, i) => `p-${1000 + i}`);
    const many = await drive('/sticky', values.length * 3, 6, (i) => ({ 'X-Patient-Id': values[i % values.length]! }));
    assert.ok(many.every((st) => st === 200));
    const used = new Set<TestUpstream>();
    for (const v of values) {
      const at = where(v);
      assert.equal(at.length, 1, `${v} reached ${at.length} instances`);
      used.add(at[0]!);
    }
    assert.equal(used.size, 3, 'different values spread over all three instances');
  });

  it('hashes on the verified user: one user always reaches the same instance', async () => {
    const where = (user: string) =>
      [a, b, s].filter((u) => u.received.some((r) => r.url.startsWith('/mine/') && r.headers['x-user-id'] === user));
    const token = await signToken({ sub: 'u-sticky', role: 'resident' });
    const mine = await drive('/mine', 50, 5, () => ({ authorization: `Bearer ${token}` }));
    assert.deepEqual(mine, Array(50).fill(200));
    assert.equal(where('u-sticky').length, 1, 'all 50 requests of one user on one instance');

    const users = Array.from({ length: 40 }, (_, i) => `u-${i}`);
    const tokens = await Promise.all(users.map((sub) => signToken({ sub, role: 'health_provider' })));
    const all = await drive('/mine', users.length * 3, 6, (i) => ({ authorization: `Bearer ${tokens[i % users.length]!}` }));
    assert.ok(all.every((st) => st === 200));
    const used = new Set<TestUpstream>();
    for (const user of users) {
      const at = where(user);
      assert.equal(at.length, 1, `${user} reached ${at.length} instances`);
      used.add(at[0]!);
    }
    assert.equal(used.size, 3, 'different users spread over all three instances');
  });
});

/** An HTTP server on ::1 at a given port, answering everything 200; null where ::1 cannot be bound. */
async function listenOnV6(port: number): Promise<{ server: Server; requests: string[] } | null> {
  const requests: string[] = [];
  const server = createServer((req, res) => {
    if (req.headers['user-agent'] !== 'api-gateway-health-check') requests.push(req.url!);
    req.resume();
    res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
  });
  return new Promise((resolve) => {
    server.once('error', () => resolve(null));
    server.listen(port, '::1', () => resolve({ server, requests }));
  });
}

describe('DNS discovery through the gateway (host localhost)', () => {
  let both: TestUpstream;
  let v4only: TestUpstream;
  let v6: { server: Server; requests: string[] } | null = null;
  let localhostHasV6 = false;
  let gw: TestGateway;

  before(async () => {
    const addresses = (await lookup('localhost', { all: true })).map((x) => x.address);
    assert.ok(addresses.includes('127.0.0.1'), `localhost resolves to ${addresses.join(', ')}`);
    localhostHasV6 = addresses.includes('::1');
    both = await startUpstream();
    v4only = await startUpstream();
    if (localhostHasV6) v6 = await listenOnV6(both.port);
    const checks = { intervalMs: 100, timeoutMs: 100, unhealthyThreshold: 1 };
    gw = await startTestGateway(
      {
        services: {
          'dns-both': { discovery: { host: 'localhost', port: both.port, intervalMs: 200 }, healthCheck: checks },
          // Nothing listens on [::1] at this port: if localhost resolves there, that instance fails.
          'dns-v4': { discovery: { host: 'localhost', port: v4only.port, intervalMs: 200 }, healthCheck: checks },
        },
        routes: [
          { name: 'both', prefix: '/both', service: 'dns-both', auth: 'public' },
          { name: 'v4', prefix: '/v4', service: 'dns-v4', auth: 'public' },
        ],
      },
      { HEALTH_CACHE_MS: '0' },
    );
  });
  after(async () => {
    await gw?.close();
    await Promise.all([both?.close(), v4only?.close()]);
    if (v6) await new Promise((resolve) => v6!.server.close(resolve));
  });

  /** The instances /metrics lists for a service, with 1 for in rotation. */
  async function instances(service: string): Promise<Record<string, number>> {
    const text = (await send(`${gw.url}/metrics`)).text;
    const out: Record<string, number> = {};
    const re = new RegExp(`^api_gateway_upstream_healthy\\{service="${service}",upstream="([^"]+)"\\} (\\d)$`, 'gm');
    for (const m of text.matchAll(re)) out[m[1]!] = Number(m[2]);
    return out;
  }

  async function serviceHealth(service: string): Promise<{ status: string; healthy: number; total: number }> {
    const body = JSON.parse((await send(`${gw.url}/health`)).text) as { services: Record<string, { status: string; healthy: number; total: number }> };
    return body.services[service]!;
  }

  it('finds the instances localhost resolves to and serves requests through them', async () => {
    const expected = [`http://127.0.0.1:${both.port}`, ...(localhostHasV6 ? [`http://[::1]:${both.port}`] : [])].sort();
    assert.deepEqual(Object.keys(await instances('dns-both')).sort(), expected);
    const statuses: number[] = [];
    for (let i = 0; i < 20; i++) statuses.push((await send(`${gw.url}/both/${i}`)).statusCode);
    assert.deepEqual(statuses, Array(20).fill(200));
    if (v6 !== null) {
      // Both addresses have a listener: round robin alternates between them.
      assert.equal(both.received.length, 10);
      assert.equal(v6.requests.length, 10);
    } else if (localhostHasV6) {
      // ::1 could not be bound here: health checks take that instance out, requests still succeed.
      assert.equal(both.received.length, 20);
    } else {
      assert.equal(both.received.length, 20);
    }
    if (v6 !== null || !localhostHasV6) assert.deepEqual(await serviceHealth('dns-both'), { status: 'healthy', healthy: expected.length, total: expected.length });
  });

  it('an address with no listener is taken out by the health checks and every request still ends 200', async () => {
    const statuses: number[] = [];
    for (let i = 0; i < 30; i++) statuses.push((await send(`${gw.url}/v4/${i}`)).statusCode);
    assert.deepEqual(statuses, Array(30).fill(200));
    assert.equal(v4only.received.length, 30, 'every request ended at the instance that listens');
    const v4 = `http://127.0.0.1:${v4only.port}`;
    if (!localhostHasV6) {
      assert.deepEqual(await instances('dns-v4'), { [v4]: 1 });
      assert.deepEqual(await serviceHealth('dns-v4'), { status: 'healthy', healthy: 1, total: 1 });
      return;
    }
    const dead = `http://[::1]:${v4only.port}`;
    await until('the [::1] instance out of rotation', 5_000, async () => ((await instances('dns-v4'))[dead] === 0 ? true : undefined), 50);
    assert.deepEqual(await instances('dns-v4'), { [v4]: 1, [dead]: 0 });
    assert.deepEqual(await serviceHealth('dns-v4'), { status: 'degraded', healthy: 1, total: 2 });
    assert.ok(
      gw.logs.some((l) => l.message === 'upstream instance unhealthy' && l.instance === dead),
      'the health checks took [::1] out',
    );
    // Rediscovery every 200 ms keeps the same (unhealthy) instance: it does not come back as new.
    const rounds = gw.logs.filter((l) => l.message === 'upstream instance unhealthy' && l.instance === dead).length;
    for (let i = 0; i < 20; i++) assert.equal((await send(`${gw.url}/v4/more-${i}`)).statusCode, 200);
    assert.equal(gw.logs.filter((l) => l.message === 'upstream instance unhealthy' && l.instance === dead).length, rounds);
  });
});
