import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { rm, writeFile } from 'node:fs/promises';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { setTimeout as delay } from 'node:timers/promises';
import { after, before, describe, it } from 'node:test';
import { Client, Pool } from 'undici';
import { stringify } from 'yaml';
import { startTestGateway, writeRoutesFile, type TestGateway } from '../helpers/gateway.js';
import { expectProblem, read, send } from '../helpers/http.js';
import { until } from '../helpers/poll.js';
import { spawnGateway, type GatewayProcess } from '../helpers/process.js';
import { HEALTH_CHECK_AGENT, startUpstream, type TestUpstream } from '../helpers/upstream.js';

/** The reloader's settle time after a change on disk (src/config/reload.ts). */
const SETTLE_MS = 150;
const REFUSED = 'routes file refused; the running config stays';
const RELOADED = 'routes reloaded';

/** One sample of /metrics by its exact series (`name{labels}`); 0 when the series is not there yet. */
async function metric(gatewayUrl: string, series: string): Promise<number> {
  const res = await send(`${gatewayUrl}/metrics`);
  assert.equal(res.statusCode, 200);
  for (const line of res.text.split('\n')) if (line.startsWith(`${series} `)) return Number(line.slice(series.length + 1));
  return 0;
}

const reloads = (result: 'success' | 'failure') => `api_gateway_config_reloads_total{result="${result}"}`;

function logCount(gw: TestGateway, message: string): number {
  return gw.logs.filter((l) => l.message === message).length;
}

async function writeRoutes(file: string, routes: unknown): Promise<void> {
  await writeFile(file, typeof routes === 'string' ? routes : stringify(routes));
}

/** Polls until GET `url` answers `status`: a change that announces itself to no one (the file watcher). */
function untilStatus(url: string, status: number, timeoutMs = 5_000): Promise<true> {
  return until(`${url} answering ${status}`, timeoutMs, async () => ((await send(url)).statusCode === status ? true : undefined), 25);
}

describe('reload under a bounded load', () => {
  let upstream: TestUpstream;
  let gw: TestGateway;
  const routes = (withB: boolean) => ({
    services: { backend: { instances: [upstream.url] } },
    routes: [{ name: 'a', path: '/a', service: 'backend', auth: 'public' }, ...(withB ? [{ name: 'b', path: '/b', service: 'backend', auth: 'public' }] : [])],
  });

  before(async () => {
    upstream = await startUpstream();
    gw = await startTestGateway(routes(false));
  });
  after(async () => {
    await gw.close();
    await upstream.close();
  });

  it('adds route B while 800 GETs on A run, with no failed request on A', { timeout: 20_000 }, async () => {
    const TOTAL = 800;
    const CONCURRENCY = 10;
    const TRIGGER_AT = 200;
    assert.equal((await send(`${gw.url}/b`)).statusCode, 404, 'B is not routed before the reload');
    const successesBefore = await metric(gw.url, reloads('success'));

    const pool = new Pool(gw.url, { connections: CONCURRENCY });
    const failures: string[] = [];
    let issued = 0;
    let completed = 0;
    let reloading: Promise<void> | null = null;
    let completedWhenReloaded = -1;
    let bRightAfter: number | null = null;
    const reloadMidLoad = async () => {
      // The file changes and nothing else: route A and its service stay as they were.
      await writeRoutes(gw.routesFile, routes(true));
      const result = await gw.gateway.reload();
      completedWhenReloaded = completed;
      assert.deepEqual(result, { ok: true, changed: true });
      bRightAfter = (await send(`${gw.url}/b`)).statusCode;
    };
    const worker = async () => {
      while (issued < TOTAL) {
        issued++;
        try {
          const res = await pool.request({ path: '/a', method: 'GET', headersTimeout: 5_000, bodyTimeout: 5_000 });
          const text = await res.body.text();
          if (res.statusCode !== 200) failures.push(`${res.statusCode} ${text}`);
        } catch (err) {
          failures.push(`${(err as NodeJS.ErrnoException).code ?? ''} ${(err as Error).message}`);
        }
        if (++completed === TRIGGER_AT) reloading = reloadMidLoad();
      }
    };
    try {
      await Promise.all(Array.from({ length: CONCURRENCY }, worker));
    } finally {
      await pool.close();
    }
    assert.ok(reloading !== null, 'the reload was triggered');
    await reloading;

    assert.deepEqual(failures, [], `${failures.length} of ${TOTAL} requests on A failed`);
    assert.equal(completed, TOTAL);
    assert.ok(completedWhenReloaded >= TRIGGER_AT && completedWhenReloaded < TOTAL, `the reload must land mid-load (it resolved after ${completedWhenReloaded} of ${TOTAL} requests)`);
    assert.equal(bRightAfter, 200, 'B answers as soon as reload() has resolved');
    assert.equal(upstream.received.filter((r) => r.url === '/a').length, TOTAL, 'every request on A reached the upstream once');
    assert.ok((await metric(gw.url, reloads('success'))) >= successesBefore + 1);
    assert.equal(await metric(gw.url, reloads('failure')), 0);
  });
});

describe('reload of an invalid routes file', () => {
  let upstream: TestUpstream;
  let gw: TestGateway;
  // Route A rewrites to /upstream-a; each invalid file changes that rewrite and adds route B.
  const valid = () => ({
    services: { backend: { instances: [upstream.url] } },
    routes: [{ name: 'a', path: '/a', rewrite: '/upstream-a', service: 'backend', auth: 'public' }],
  });
  const changed = (extra: Record<string, unknown> = {}, bService = 'backend') => ({
    services: { backend: { instances: [upstream.url], ...extra } },
    routes: [
      { name: 'a', path: '/a', rewrite: '/changed', service: 'backend', auth: 'public' },
      { name: 'b', path: '/b', service: bService, auth: 'public' },
    ],
  });

  before(async () => {
    upstream = await startUpstream();
    // No watcher: each reload() below is the only reload, so the counts are exact.
    gw = await startTestGateway(valid(), { ROUTES_WATCH: 'false' });
  });
  after(async () => {
    await gw.close();
    await upstream.close();
  });

  /** What route A answers, with what the upstream saw, for comparison before and after. */
  async function answerOfA(): Promise<unknown> {
    const res = await send(`${gw.url}/a?x=1`, { headers: { 'x-request-id': 'reload-probe' } });
    const echo = JSON.parse(res.text) as { method: string; url: string; headers: Record<string, string> };
    return { status: res.statusCode, type: res.headers['content-type'], method: echo.method, url: echo.url, requestId: echo.headers['x-request-id'] };
  }

  const cases: Array<{ what: string; file: () => unknown; problem: RegExp }> = [
    { what: 'bad YAML', file: () => `${stringify(changed())}extra: [unclosed\n`, problem: /^YAML syntax: .*line \d+/ },
    { what: 'an unknown field', file: () => changed({ balancr: 'least-request' }), problem: /^services\.backend: unknown field "balancr"/ },
    { what: 'an unknown service', file: () => changed({}, 'nope'), problem: /^routes\[1\]\.service: unknown service "nope"/ },
  ];

  for (const { what, file, problem } of cases) {
    it(`refuses ${what}, names the problem and changes nothing`, async () => {
      const before = await answerOfA();
      assert.deepEqual(before, { status: 200, type: 'application/json', method: 'GET', url: '/upstream-a?x=1', requestId: 'reload-probe' });
      const failuresBefore = await metric(gw.url, reloads('failure'));
      const refusalsBefore = logCount(gw, REFUSED);

      await writeRoutes(gw.routesFile, file());
      const result = await gw.gateway.reload();

      assert.equal(result.ok, false, `expected a refusal, got ${JSON.stringify(result)}`);
      const { problems } = result as { ok: false; problems: string[] };
      assert.ok(problems.some((p) => problem.test(p)), `problems ${JSON.stringify(problems)} should match ${problem}`);
      assert.deepEqual(await answerOfA(), before, 'route A answers exactly as before');
      expectProblem(await send(`${gw.url}/b`), 404, 'GW_ROUTE_NOT_FOUND');

      assert.equal(logCount(gw, REFUSED), refusalsBefore + 1);
      const line = gw.logs.filter((l) => l.message === REFUSED).at(-1)!;
      assert.equal(line.level, 'ERROR');
      assert.deepEqual(line.problems, problems);
      assert.equal(line.routes_file, gw.routesFile);
      assert.equal(await metric(gw.url, reloads('failure')), failuresBefore + 1);
      assert.equal(await metric(gw.url, reloads('success')), 0);
    });
  }

  it('still takes a valid file after the refusals', async () => {
    await writeRoutes(gw.routesFile, changed());
    assert.deepEqual(await gw.gateway.reload(), { ok: true, changed: true });
    assert.equal((JSON.parse((await send(`${gw.url}/a`)).text) as { url: string }).url, '/changed');
    assert.equal((await send(`${gw.url}/b`)).statusCode, 200);
    assert.equal(await metric(gw.url, reloads('success')), 1);
  });
});

describe('the routes file watcher', () => {
  let upstream: TestUpstream;
  /** Watches its routes file (ROUTES_WATCH default). */
  let watching: TestGateway;
  /** ROUTES_WATCH=false, reading the same file as `watching`. */
  let still: TestGateway;
  const routes = (names: string[]) => ({
    services: { backend: { instances: [upstream.url] } },
    routes: names.map((name) => ({ name, path: `/${name}`, service: 'backend', auth: 'public' })),
  });

  before(async () => {
    upstream = await startUpstream();
    watching = await startTestGateway(routes(['a']));
    // The same file for both (the helper's own file for this one stays unused), so one change on
    // disk reaches both at the same moment: the watching gateway shows when it has landed.
    still = await startTestGateway(routes(['a']), { ROUTES_WATCH: 'false', ROUTES_FILE: watching.routesFile });
  });
  after(async () => {
    await still.close();
    await watching.close();
    await upstream.close();
  });

  it('picks up a changed file on its own; with ROUTES_WATCH=false only on reload()', { timeout: 15_000 }, async () => {
    assert.equal((await send(`${watching.url}/b`)).statusCode, 404);
    await writeRoutes(watching.routesFile, routes(['a', 'b']));
    await untilStatus(`${watching.url}/b`, 200);
    assert.equal(logCount(watching, RELOADED), 1);

    // The watching gateway has taken the change; one that watched too would have by now (same
    // event, same settle time). A margin of two settle times on top, for the absence of an event.
    await delay(2 * SETTLE_MS);
    expectProblem(await send(`${still.url}/b`), 404, 'GW_ROUTE_NOT_FOUND');
    assert.equal(logCount(still, RELOADED), 0);
    assert.deepEqual(await still.gateway.reload(), { ok: true, changed: true });
    assert.equal((await send(`${still.url}/b`)).statusCode, 200);
  });

  it('does not reload a file written again with the same text', { timeout: 15_000 }, async () => {
    const reloadedBefore = logCount(watching, RELOADED);
    const successesBefore = await metric(watching.url, reloads('success'));
    await writeRoutes(watching.routesFile, routes(['a', 'b']));
    // Nothing announces a skipped reload: wait several settle times for one that should not come.
    await delay(4 * SETTLE_MS);
    assert.equal(logCount(watching, RELOADED), reloadedBefore, 'the same text again is not a reload');
    assert.equal(await metric(watching.url, reloads('success')), successesBefore);

    // The watcher is still there: a real change after it is one reload, and only one.
    await writeRoutes(watching.routesFile, routes(['a', 'b', 'c']));
    await untilStatus(`${watching.url}/c`, 200);
    assert.equal(logCount(watching, RELOADED), reloadedBefore + 1);
    assert.equal(await metric(watching.url, reloads('success')), successesBefore + 1);
  });
});

describe('connections and requests across a reload', () => {
  let old: TestUpstream;
  let kept: TestUpstream;
  let gw: TestGateway;
  const payload = randomBytes(256 * 1024);
  const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');
  let release!: () => void;
  const released = new Promise<void>((resolve) => (release = resolve));
  let headHeld!: () => void;
  const headArrived = new Promise<void>((resolve) => (headHeld = resolve));
  let bodyHeld!: () => void;
  const bodyStarted = new Promise<void>((resolve) => (bodyHeld = resolve));
  /** Every connection the gateway accepted, and the socket each probe request came on. */
  const accepted: Socket[] = [];
  const probeSockets: Socket[] = [];

  before(async () => {
    old = await startUpstream(async (req, res) => {
      req.resume();
      if (req.url === '/hold-head') {
        // Nothing of the answer before the reload.
        headHeld();
        await released;
        res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': payload.length });
        res.end(payload);
        return;
      }
      // The head and half the body before the reload, the rest after it.
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': payload.length });
      res.write(payload.subarray(0, payload.length / 2));
      bodyHeld();
      await released;
      res.end(payload.subarray(payload.length / 2));
    });
    kept = await startUpstream();
    gw = await startTestGateway({
      services: { old: { instances: [old.url] }, kept: { instances: [kept.url] } },
      routes: [
        { name: 'held', prefix: '/held', rewrite: '/', service: 'old', auth: 'public', timeoutMs: 10_000 },
        { name: 'a', path: '/a', service: 'kept', auth: 'public' },
      ],
    });
    gw.gateway.server.on('connection', (socket: Socket) => accepted.push(socket));
    // Watches only: the gateway's own handler answers every request.
    gw.gateway.server.on('request', (req: IncomingMessage) => {
      if (req.headers['x-probe'] === 'keep-alive') probeSockets.push(req.socket);
    });
  });
  after(async () => {
    release();
    await gw.close();
    await old.close();
    await kept.close();
  });

  it('lets requests in flight finish with their full body when the reload removes their route and service, on connections that stay open', { timeout: 15_000 }, async () => {
    // A client with one keep-alive connection, used before and after the reload.
    const client = new Client(gw.url);
    const held = new Pool(gw.url, { connections: 2 });
    try {
      const first = await read(client.request({ path: '/a', method: 'GET', headers: { 'x-probe': 'keep-alive' } }));
      assert.equal(first.statusCode, 200);

      const headPending = held.request({ path: '/held/hold-head', method: 'GET' });
      const bodyPending = held.request({ path: '/held/hold-body', method: 'GET' });
      await headArrived;
      await bodyStarted;
      const bodyRes = await bodyPending;
      assert.equal(bodyRes.statusCode, 200);

      // The new file drops route "held" and service "old", and adds route b.
      await writeRoutes(gw.routesFile, {
        services: { kept: { instances: [kept.url] } },
        routes: [
          { name: 'a', path: '/a', service: 'kept', auth: 'public' },
          { name: 'b', path: '/b', service: 'kept', auth: 'public' },
        ],
      });
      assert.deepEqual(await gw.gateway.reload(), { ok: true, changed: true });
      assert.ok(gw.logs.some((l) => l.message === 'service removed from the config' && l.upstream_service === 'old'));
      expectProblem(await send(`${gw.url}/held/other`), 404, 'GW_ROUTE_NOT_FOUND');
      assert.equal((await send(`${gw.url}/b`)).statusCode, 200);

      release();
      const headRes = await headPending;
      assert.equal(headRes.statusCode, 200, 'the request whose answer had not begun is answered after the reload');
      const headBytes = Buffer.from(await headRes.body.arrayBuffer());
      assert.equal(headBytes.length, payload.length);
      assert.equal(sha(headBytes), sha(payload));
      const bodyBytes = Buffer.from(await bodyRes.body.arrayBuffer());
      assert.equal(bodyBytes.length, payload.length, 'the answer that started before the reload arrives whole');
      assert.equal(sha(bodyBytes), sha(payload));
      assert.deepEqual(
        old.received.map((r) => r.url),
        ['/hold-head', '/hold-body'],
        'the removed service got the two held requests and nothing after the reload',
      );

      const connectionsBefore = accepted.length;
      const second = await read(client.request({ path: '/a', method: 'GET', headers: { 'x-probe': 'keep-alive' } }));
      assert.equal(second.statusCode, 200);
      assert.equal(accepted.length, connectionsBefore, 'the keep-alive client opened no new connection');
      assert.equal(probeSockets.length, 2);
      assert.equal(probeSockets[0], probeSockets[1], 'both requests of the client came on the same connection');
      assert.equal(probeSockets[0]!.destroyed, false);
    } finally {
      await client.close();
      await held.close();
    }
  });
});

describe('upstream state across a reload', () => {
  let one: TestUpstream;
  let two: TestUpstream;
  let gw: TestGateway;
  let twoHealthy = true;
  const healthOf = (u: TestUpstream) => `api_gateway_upstream_healthy{service="pair",upstream="${u.url}"}`;
  const requestsOf = (u: TestUpstream) => `api_gateway_upstream_requests_total{service="pair",upstream="${u.url}"}`;
  const routes = (names: string[], maxConcurrentRequests: number) => ({
    services: {
      pair: {
        instances: [one.url, two.url],
        balancer: 'round-robin',
        // Two failed checks take an instance out: a checker started afresh by a reload could not
        // take it out again before the first request after the reload.
        healthCheck: { intervalMs: 100, timeoutMs: 100, unhealthyThreshold: 2, healthyThreshold: 1 },
        outlierDetection: false,
        retry: false,
        maxConcurrentRequests,
      },
    },
    routes: names.map((name) => ({ name, path: `/${name}`, service: 'pair', auth: 'public' })),
  });
  /** An instance that answers with its name. */
  const answer = (name: string) => (req: IncomingMessage, res: ServerResponse) => {
    req.resume();
    res.writeHead(200, { 'content-type': 'text/plain' }).end(name);
  };
  /** Which instance answered each of `n` requests on route a, in order. */
  async function spread(n: number): Promise<string[]> {
    const out: string[] = [];
    for (let i = 0; i < n; i++) {
      const res = await send(`${gw.url}/a`);
      assert.equal(res.statusCode, 200, res.text);
      out.push(res.text);
    }
    return out;
  }

  before(async () => {
    one = await startUpstream(answer('one'));
    two = await startUpstream(
      (req, res) => {
        if (req.headers['user-agent'] === HEALTH_CHECK_AGENT) {
          res.writeHead(twoHealthy ? 200 : 503, { 'content-type': 'application/json' }).end(twoHealthy ? '{"status":"healthy"}' : '{"status":"unhealthy"}');
          return;
        }
        answer('two')(req, res);
      },
      0,
      { handleHealthChecks: true },
    );
    gw = await startTestGateway(routes(['a'], 1024), { ROUTES_WATCH: 'false' });
  });
  after(async () => {
    await gw.close();
    await one.close();
    await two.close();
  });

  it('keeps the round-robin position and the counters of a service the new file keeps', async () => {
    assert.deepEqual(await spread(3), ['one', 'two', 'one']);
    // The service stays, re-configured (a new breaker limit), with a route added.
    await writeRoutes(gw.routesFile, routes(['a', 'b'], 512));
    assert.deepEqual(await gw.gateway.reload(), { ok: true, changed: true });
    assert.deepEqual(await spread(2), ['two', 'one'], 'round robin carries on where it was');
    assert.equal(await metric(gw.url, requestsOf(one)), 3);
    assert.equal(await metric(gw.url, requestsOf(two)), 2);
  });

  it('keeps an unhealthy instance out of rotation right after a reload, and its checks go on', { timeout: 10_000 }, async () => {
    twoHealthy = false;
    await until('instance two out of rotation', 5_000, async () => ((await metric(gw.url, healthOf(two))) === 0 ? true : undefined));
    const twoServed = two.received.length;

    await writeRoutes(gw.routesFile, routes(['a', 'b', 'c'], 512));
    assert.deepEqual(await gw.gateway.reload(), { ok: true, changed: true });
    assert.deepEqual(await spread(4), ['one', 'one', 'one', 'one'], 'the first request after the reload does not go to the unhealthy instance');
    assert.equal(two.received.length, twoServed);
    assert.equal(await metric(gw.url, healthOf(two)), 0);
    assert.equal(await metric(gw.url, requestsOf(one)), 3 + 4, 'counters carry on across reloads');
    assert.equal(await metric(gw.url, requestsOf(two)), 2);

    // The kept service's health checks still run after the reloads: the instance comes back.
    twoHealthy = true;
    await until('instance two back in rotation', 5_000, async () => ((await metric(gw.url, healthOf(two))) === 1 ? true : undefined));
    assert.ok((await spread(2)).includes('two'));
  });
});

describe('SIGHUP to the gateway process', () => {
  let upstream: TestUpstream;
  let proc: GatewayProcess | undefined;
  let file: string;
  let dir: string;
  const routes = (names: string[], extra: Record<string, unknown> = {}) => ({
    services: { backend: { instances: [upstream.url], ...extra } },
    routes: names.map((name) => ({ name, path: `/${name}`, service: 'backend', auth: 'public' })),
  });

  before(async () => {
    upstream = await startUpstream();
    ({ file, dir } = await writeRoutesFile(routes(['a'])));
  });
  after(async () => {
    await proc?.stop();
    await upstream.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('reloads the routes file on SIGHUP, and keeps serving the old routes when the new file is invalid', { timeout: 25_000 }, async () => {
    proc = await spawnGateway(undefined, { ROUTES_FILE: file, ROUTES_WATCH: 'false', LOG_LEVEL: 'INFO' });
    assert.equal((await send(`${proc.url}/a`)).statusCode, 200);
    assert.equal((await send(`${proc.url}/b`)).statusCode, 404);

    await writeRoutes(file, routes(['a', 'b']));
    assert.ok(proc.child.kill('SIGHUP'));
    await untilStatus(`${proc.url}/b`, 200);

    await writeRoutes(file, routes(['a', 'b', 'c'], { balancr: 'least-request' }));
    assert.ok(proc.child.kill('SIGHUP'));
    const p = proc;
    const refusal = await until('the refusal on stdout', 5_000, async () =>
      p
        .stdout()
        .split('\n')
        .filter((l) => l.startsWith('{'))
        .map((l) => JSON.parse(l) as Record<string, unknown>)
        .find((l) => l.message === REFUSED),
    );
    assert.equal(refusal.level, 'ERROR');
    assert.ok((refusal.problems as string[]).some((x) => /^services\.backend: unknown field "balancr"/.test(x)), JSON.stringify(refusal.problems));
    assert.equal(proc.child.exitCode, null, 'the process keeps running');
    assert.equal(proc.child.signalCode, null);
    assert.equal((await send(`${proc.url}/a`)).statusCode, 200);
    assert.equal((await send(`${proc.url}/b`)).statusCode, 200);
    expectProblem(await send(`${proc.url}/c`), 404, 'GW_ROUTE_NOT_FOUND');
  });
});
