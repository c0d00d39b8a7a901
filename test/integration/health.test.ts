import assert from 'node:assert/strict';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import type { Server } from 'node:http';
import { setTimeout as delay } from 'node:timers/promises';
import { after, before, describe, it } from 'node:test';
import { Client, request } from 'undici';
import { createAuthStandIn } from '../../dev/stand-ins/auth-rbac.js';
import { close as closeServer, listen } from '../../dev/stand-ins/http-util.js';
import { routesFor, startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { expectProblem, read } from '../helpers/http.js';
import { startRedis, type TestRedis } from '../helpers/redis.js';
import { TEST_SECRET } from '../helpers/tokens.js';
import { startUpstream, type TestUpstream } from '../helpers/upstream.js';

const PACKAGE_VERSION = (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version;

/**
 * Every check reaches the dependencies (HEALTH_CACHE_MS=0). The gateway's own load signals are
 * pinned far away, so a busy test machine cannot flip the status these tests are about.
 */
const HEALTH_ENV = { HEALTH_CACHE_MS: '0', MEMORY_LIMIT_MB: '65536', HEALTH_EVENT_LOOP_THRESHOLD_MS: '10000' };

interface Health {
  statusCode: number;
  body: {
    status: string;
    service: string;
    version: string;
    timestamp: string;
    dependencies: Record<string, string>;
    [key: string]: unknown;
  };
}

async function health(url: string, path = '/health'): Promise<Health> {
  const res = await read(request(`${url}${path}`));
  return { statusCode: res.statusCode, body: JSON.parse(res.text) as Health['body'] };
}

/** Polls /health until `ok` holds: reconnecting to a dependency takes a moment that no event announces. */
async function healthUntil(url: string, what: string, ok: (h: Health) => boolean, attempts = 200): Promise<Health> {
  let last: Health | undefined;
  for (let i = 0; i < attempts; i++) {
    last = await health(url);
    if (ok(last)) return last;
    await delay(50);
  }
  assert.fail(`/health never reported ${what} in ${attempts} checks; last: ${JSON.stringify(last)}`);
}

const allHealthy = (h: Health) => h.body.dependencies['auth-service'] === 'healthy' && h.body.dependencies.database === 'healthy' && h.body.status === 'healthy';

describe('GET /health with real dependencies', () => {
  let redis: TestRedis;
  let auth: Server;
  let authPort: number;
  let gw: TestGateway;

  before(async () => {
    redis = await startRedis();
    auth = createAuthStandIn({ jwtSecret: TEST_SECRET, expiresIn: 7200 });
    authPort = await listen(auth, 0);
    gw = await startTestGateway(routesFor('http://127.0.0.1:9', [{ name: 'any', prefix: '/api', auth: 'public' }]), {
      ...HEALTH_ENV,
      REDIS_URL: redis.url,
      AUTH_SERVICE_URL: `http://127.0.0.1:${authPort}`,
    });
  });
  after(async () => {
    await gw?.close();
    if (auth?.listening) await closeServer(auth);
    await redis?.stop();
  });

  it('is healthy, with the service name, package version and an ISO timestamp, while redis and the auth service run', { timeout: 20_000 }, async () => {
    const h = await healthUntil(gw.url, 'healthy', allHealthy);
    assert.equal(h.statusCode, 200);
    assert.equal(h.body.service, 'api-gateway');
    assert.equal(h.body.version, PACKAGE_VERSION);
    assert.match(h.body.timestamp, /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$/);
    assert.ok(Math.abs(Date.parse(h.body.timestamp) - Date.now()) < 60_000, `timestamp ${h.body.timestamp} is not now`);
    assert.deepEqual(h.body.dependencies, { 'auth-service': 'healthy', database: 'healthy' });
  });

  it('has the fields of the spec and the upstream services, no more', { timeout: 20_000 }, async () => {
    const h = await healthUntil(gw.url, 'healthy', allHealthy);
    assert.deepEqual(Object.keys(h.body.dependencies).sort(), ['auth-service', 'database']);
    assert.deepEqual(Object.keys(h.body).sort(), ['audit', 'dependencies', 'redis', 'service', 'services', 'status', 'timestamp', 'version']);
    // How Redis is deployed and what the gateway does with it; no address.
    assert.deepEqual(h.body.redis, { mode: 'server', state: 'connected', primaries: 1, announcements: 'subscribed' });
    for (const svc of Object.values(h.body.services as Record<string, unknown>)) assert.deepEqual(Object.keys(svc as object).sort(), ['healthy', 'status', 'total']);
  });

  it('reports the database degraded (limits fall back per process) and itself degraded (still 200) while redis is down, and recovers without a restart', { timeout: 30_000 }, async () => {
    await healthUntil(gw.url, 'healthy', allHealthy);
    await redis.stop();
    try {
      const down = await healthUntil(gw.url, 'the database degraded', (h) => h.body.dependencies.database === 'degraded');
      assert.equal(down.statusCode, 200, 'a dependency outage must not fail the probe');
      assert.equal(down.body.status, 'degraded');
      assert.equal(down.body.dependencies['auth-service'], 'healthy');
      assert.deepEqual(down.body.redis, { mode: 'server', state: 'reconnecting', primaries: 0, announcements: 'not subscribed' });
      const live = await read(request(`${gw.url}/health/live`));
      assert.equal(live.statusCode, 200, '/health/live answers whatever the dependencies do');
    } finally {
      await redis.start();
    }
    const back = await healthUntil(gw.url, 'healthy again', allHealthy);
    assert.equal(back.statusCode, 200);
  });

  it('reports the auth service unhealthy and itself degraded (still 200) while it is down, and recovers', { timeout: 30_000 }, async () => {
    await healthUntil(gw.url, 'healthy', allHealthy);
    await closeServer(auth);
    try {
      const down = await healthUntil(gw.url, 'the auth service unhealthy', (h) => h.body.dependencies['auth-service'] === 'unhealthy');
      assert.equal(down.statusCode, 200);
      assert.equal(down.body.status, 'degraded');
      assert.equal(down.body.dependencies.database, 'healthy');
      const live = await read(request(`${gw.url}/health/live`));
      assert.equal(live.statusCode, 200);
    } finally {
      await listen(auth, authPort);
    }
    await healthUntil(gw.url, 'healthy again', allHealthy);
  });
});

describe('readiness while the gateway shuts down', () => {
  let upstream: TestUpstream;
  let gw: TestGateway;
  let release!: () => void;
  const released = new Promise<void>((resolve) => (release = resolve));
  let arrived!: () => void;
  const slowArrived = new Promise<void>((resolve) => (arrived = resolve));

  before(async () => {
    upstream = await startUpstream(async (req, res) => {
      req.resume();
      arrived();
      await released;
      res.end('done');
    });
    gw = await startTestGateway(routesFor(upstream.url, [{ name: 'slow', path: '/slow', auth: 'public', timeoutMs: 30_000 }]), HEALTH_ENV);
  });
  after(async () => {
    release();
    await gw?.close();
    await upstream?.close();
  });

  it('never answers /health/ready with 200 once shutdown has begun', { timeout: 20_000 }, async () => {
    const ready = await read(request(`${gw.url}/health/ready`));
    assert.equal(ready.statusCode, 200, ready.text);

    // New connections are refused once shutdown begins, so the probe is also pipelined on a
    // connection that a request in flight keeps open. blocking: false lets the client send it
    // before the first answer. The gateway may answer it 503 or close the connection without
    // answering it (RFC 9112 9.6); either way no balancer may read "ready".
    const client = new Client(gw.url, { pipelining: 2 });
    try {
      const inFlight = client.request({ path: '/slow', method: 'GET', blocking: false });
      await slowArrived;
      const closing = gw.gateway.close();
      assert.equal(gw.gateway.isShuttingDown(), true);
      const probeReceived = once(gw.gateway.server, 'request');
      const pipelined = read(client.request({ path: '/health/ready', method: 'GET' })).catch((err: NodeJS.ErrnoException) => err);
      await probeReceived;
      release();

      const first = await read(inFlight);
      assert.equal(first.statusCode, 200, 'the request in flight still completes');
      assert.equal(first.text, 'done');

      const answer = await pipelined;
      if (answer instanceof Error) assert.match(String(answer.code), /^(UND_ERR_SOCKET|ECONNREFUSED|ECONNRESET)$/, String(answer));
      else expectProblem(answer, 503, 'GW_SHUTTING_DOWN');

      const fresh = await read(request(`${gw.url}/health/ready`, { reset: true })).catch((err: NodeJS.ErrnoException) => err);
      assert.ok(fresh instanceof Error, `a new connection got an answer: ${fresh instanceof Error ? '' : fresh.statusCode}`);
      assert.equal((fresh as NodeJS.ErrnoException).code, 'ECONNREFUSED');

      const report = await gw.gateway.health.report();
      assert.equal(report.status, 'unhealthy', 'a gateway that is shutting down reports itself out of rotation');
      await closing;
    } finally {
      await client.destroy();
    }
  });
});
