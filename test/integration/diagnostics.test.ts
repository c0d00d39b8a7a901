import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, Socket, type Server } from 'node:net';
import { networkInterfaces, tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { after, before, describe, it } from 'node:test';
import { Client, request } from 'undici';
import { ConfigError } from '../../src/config/load.js';
import { routesFor, startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { freePort } from '../helpers/ports.js';
import { startUpstream, type TestUpstream } from '../helpers/upstream.js';

/**
 * The admin listener (ADMIN_PORT): diagnostics on 127.0.0.1 only, never on the public port.
 */

/** A non-loopback address of this machine (IPv4 first), or null when it has none. */
function nonLoopbackAddress(): string | null {
  const all = Object.values(networkInterfaces()).flatMap((list) => list ?? []);
  const v4 = all.find((a) => a.family === 'IPv4' && !a.internal);
  if (v4) return v4.address;
  // A link-local IPv6 address needs a scope id to be reachable; a global one does not.
  const v6 = all.find((a) => a.family === 'IPv6' && !a.internal && !a.address.toLowerCase().startsWith('fe80'));
  return v6?.address ?? null;
}

/** Connects to host:port: 'connected', or the error code (ECONNREFUSED...). */
function tryConnect(host: string, port: number, timeoutMs = 2_000): Promise<string> {
  return new Promise((resolve) => {
    const socket = new Socket();
    const done = (result: string) => {
      socket.destroy();
      resolve(result);
    };
    socket.setTimeout(timeoutMs, () => done('timeout'));
    socket.once('connect', () => done('connected'));
    socket.once('error', (err: NodeJS.ErrnoException) => done(err.code ?? err.message));
    socket.connect(port, host);
  });
}

/** TCP servers listening in this process (the gateway runs in it). */
const listeningServers = () => process.getActiveResourcesInfo().filter((r) => r === 'TCPServerWrap').length;

function occupy(port: number): Promise<Server> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(port, '127.0.0.1', () => resolve(server));
  });
}

describe('admin listener on ADMIN_PORT', () => {
  let upstream: TestUpstream;
  let gw: TestGateway;
  let adminPort: number;
  let admin: string;

  before(async () => {
    upstream = await startUpstream();
    adminPort = await freePort();
    admin = `http://127.0.0.1:${adminPort}`;
    gw = await startTestGateway(routesFor(upstream.url, [{ name: 'open', prefix: '/open', auth: 'public' }]), { ADMIN_PORT: String(adminPort) });
  });
  after(async () => {
    await gw?.close();
    await upstream?.close();
  });

  it('GET /debug/vars has memory, heap, event loop, resources and services', async () => {
    // Some traffic first, so the numbers describe a gateway at work.
    for (let i = 0; i < 5; i++) await (await request(`${gw.url}/open/${i}`)).body.dump();
    const res = await request(`${admin}/debug/vars`);
    assert.equal(res.statusCode, 200);
    assert.match(String(res.headers['content-type']), /^application\/json/);
    assert.equal(res.headers['cache-control'], 'no-store');
    const vars = (await res.body.json()) as Record<string, unknown> & {
      memory: Record<string, number>;
      heap: Record<string, number>;
      event_loop: { delay_ms: Record<string, number>; utilization: number };
      resources: Record<string, number>;
      services: Array<{ name: string; healthy: number; total: number }>;
    };
    for (const field of ['rss', 'heapTotal', 'heapUsed', 'external']) assert.ok(vars.memory[field]! > 0, `memory.${field}`);
    for (const field of ['total_heap_size', 'used_heap_size', 'heap_size_limit']) assert.ok(vars.heap[field]! > 0, `heap.${field}`);
    for (const field of ['p50', 'p99', 'max', 'mean']) assert.equal(typeof vars.event_loop.delay_ms[field], 'number', `event_loop.delay_ms.${field}`);
    assert.ok(vars.event_loop.utilization >= 0 && vars.event_loop.utilization <= 1, `utilization ${vars.event_loop.utilization}`);
    assert.ok((vars.resources.TCPServerWrap ?? 0) >= 2, `resources: ${JSON.stringify(vars.resources)}`);
    assert.deepEqual(vars.services, [{ name: 'backend', healthy: 1, total: 1 }]);
    assert.equal(vars.pid, process.pid);
    assert.equal(vars.service, 'api-gateway');
  });

  it('the admin listener also serves /metrics, and answers other methods with 405 and unknown paths with 404', async () => {
    const metrics = await request(`${admin}/metrics`);
    assert.equal(metrics.statusCode, 200);
    assert.match(await metrics.body.text(), /^api_gateway_requests_total\{/m);
    const post = await request(`${admin}/debug/vars`, { method: 'POST' });
    assert.equal(post.statusCode, 405);
    await post.body.dump();
    const unknown = await request(`${admin}/debug/other`);
    assert.equal(unknown.statusCode, 404);
    await unknown.body.dump();
  });

  it('refuses a heap snapshot by GET (a link or prefetch) and any request not addressed to loopback by name (DNS rebinding)', async () => {
    const get = await request(`${admin}/debug/heap-snapshot`, { method: 'GET' });
    assert.equal(get.statusCode, 405);
    await get.body.dump();
    const rebound = await request(`${admin}/debug/vars`, { headers: { host: 'attacker.example:80' } });
    assert.equal(rebound.statusCode, 403);
    await rebound.body.dump();
    const byName = await request(`${admin}/debug/vars`, { headers: { host: `localhost:${new URL(admin).port}` } });
    assert.equal(byName.statusCode, 200);
    await byName.body.dump();
  });

  it('POST /debug/heap-snapshot streams a heap snapshot; a second one while it runs gets 409', async () => {
    // A client of its own, so the concurrent request does not queue behind the first on one socket.
    const first = new Client(admin);
    const second = new Client(admin);
    try {
      const res = await first.request({ method: 'POST', path: '/debug/heap-snapshot' });
      assert.equal(res.statusCode, 200);
      assert.equal(res.headers['content-type'], 'application/octet-stream');
      assert.match(String(res.headers['content-disposition']), /^attachment; filename="api-gateway-\d+-\d+\.heapsnapshot"$/);
      // The first body is not read yet: the snapshot is still being written.
      const busy = await second.request({ method: 'POST', path: '/debug/heap-snapshot' });
      assert.equal(busy.statusCode, 409);
      await busy.body.dump();

      const text = await res.body.text();
      assert.ok(text.startsWith('{"snapshot":'), `starts with ${JSON.stringify(text.slice(0, 40))}`);
      const snapshot = JSON.parse(text) as { snapshot: { meta: { node_fields: string[] }; node_count: number }; nodes: number[]; strings: string[] };
      assert.ok(Array.isArray(snapshot.snapshot.meta.node_fields) && snapshot.snapshot.meta.node_fields.length > 0);
      assert.ok(snapshot.snapshot.node_count > 0);
      assert.equal(snapshot.nodes.length, snapshot.snapshot.node_count * snapshot.snapshot.meta.node_fields.length);
    } finally {
      await first.close();
      await second.close();
    }
  });

  it('a client that leaves mid-snapshot does not block the next one', async () => {
    const client = new Client(admin);
    const res = await client.request({ method: 'POST', path: '/debug/heap-snapshot' });
    assert.equal(res.statusCode, 200);
    await client.destroy();
    // The gateway sees the socket close and ends the snapshot; a new one is allowed then.
    const deadline = Date.now() + 10_000;
    let status = 0;
    for (;;) {
      const next = await request(`${admin}/debug/heap-snapshot`, { method: 'POST' });
      status = next.statusCode;
      await next.body.dump();
      if (status === 200 || Date.now() > deadline) break;
      await delay(50);
    }
    assert.equal(status, 200);
  });

  it('the main port answers 404 for the admin paths', async () => {
    for (const path of ['/debug/vars', '/debug/heap-snapshot']) {
      const res = await request(`${gw.url}${path}`);
      assert.equal(res.statusCode, 404, path);
      assert.equal(((await res.body.json()) as { code: string }).code, 'GW_ROUTE_NOT_FOUND');
    }
  });

  it('the admin port is not reachable on a non-loopback address', async (t) => {
    const address = nonLoopbackAddress();
    if (address === null) return t.skip('this machine has no non-loopback address');
    assert.equal(await tryConnect('127.0.0.1', adminPort), 'connected');
    const result = await tryConnect(address, adminPort);
    assert.notEqual(result, 'connected', `the admin port answers on ${address}`);
  });
});

describe('ADMIN_PORT at start-up', () => {
  it('a port in use: the start is refused with a ConfigError naming ADMIN_PORT, and everything opened is released', async () => {
    const upstream = await startUpstream();
    const spool = await mkdtemp(join(tmpdir(), 'gw-admin-spool-'));
    const taken = await occupy(await freePort());
    const port = (taken.address() as { port: number }).port;
    const routes = {
      services: { backend: { instances: [upstream.url], healthCheck: { intervalMs: 100, timeoutMs: 100 } } },
      routes: [{ name: 'open', prefix: '/open', auth: 'public', service: 'backend' }],
    };
    const env = { AUDIT_SPOOL_DIR: join(spool, 'audit'), HEALTH_CACHE_MS: '0' };
    let gw: TestGateway | null = null;
    try {
      const serversBefore = listeningServers();
      await assert.rejects(startTestGateway(routes, { ...env, ADMIN_PORT: String(port) }), (err: unknown) => {
        assert.ok(err instanceof ConfigError, `a ConfigError: ${String(err)}`);
        assert.ok(err.problems.some((p) => p.startsWith('ADMIN_PORT:') && p.includes(String(port))), err.message);
        return true;
      });
      // (A server closed just before may still be counted in serversBefore: at most, not exactly.)
      assert.ok(listeningServers() <= serversBefore, `no server of the failed gateway is left listening: ${listeningServers()} > ${serversBefore}`);
      // Its health checks stopped with it.
      await delay(300);
      const checks = upstream.healthChecks.length;
      await delay(400);
      assert.equal(upstream.healthChecks.length, checks, 'the failed gateway still runs health checks');

      // The same audit spool (locked by a running gateway) is free again.
      gw = await startTestGateway(routes, { ...env, ADMIN_PORT: String(await freePort()) });
      const res = await request(`${gw.url}/open/after`);
      assert.equal(res.statusCode, 200);
      await res.body.dump();
    } finally {
      await gw?.close();
      await new Promise<void>((resolve) => taken.close(() => resolve()));
      await upstream.close();
      await rm(spool, { recursive: true, force: true });
    }
  });

  it('ADMIN_PORT=0 (and unset) opens no admin listener', async () => {
    const upstream = await startUpstream();
    try {
      for (const env of [{ ADMIN_PORT: '0' }, {}] as Array<Record<string, string>>) {
        const before = listeningServers();
        const gw = await startTestGateway(routesFor(upstream.url, [{ name: 'open', prefix: '/open', auth: 'public' }]), env);
        try {
          assert.equal(listeningServers(), before + 1, 'only the main server listens');
          assert.ok(!gw.logs.some((l) => l.message === 'admin listener (diagnostics) on loopback'));
        } finally {
          await gw.close();
        }
      }
      // With a port, the same count shows the admin listener: the check above can see one.
      const before = listeningServers();
      const gw = await startTestGateway(routesFor(upstream.url, [{ name: 'open', prefix: '/open', auth: 'public' }]), { ADMIN_PORT: String(await freePort()) });
      try {
        assert.equal(listeningServers(), before + 2);
        assert.ok(gw.logs.some((l) => l.message === 'admin listener (diagnostics) on loopback'));
      } finally {
        await gw.close();
      }
    } finally {
      await upstream.close();
    }
  });

  it('the admin listener closes with the gateway', async () => {
    const upstream = await startUpstream();
    const port = await freePort();
    const gw = await startTestGateway(routesFor(upstream.url, [{ name: 'open', prefix: '/open', auth: 'public' }]), { ADMIN_PORT: String(port) });
    assert.equal(await tryConnect('127.0.0.1', port), 'connected');
    await gw.close();
    await upstream.close();
    assert.equal(await tryConnect('127.0.0.1', port), 'ECONNREFUSED');
  });
});
