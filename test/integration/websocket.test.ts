import assert from 'node:assert/strict';
import { once } from 'node:events';
import { createServer, type IncomingHttpHeaders, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { decodeJwt } from 'jose';
import { WebSocket, WebSocketServer } from 'ws';
import { createAuditStandIn } from '../../dev/stand-ins/audit-logging.js';
import { close as closeServer, listen } from '../../dev/stand-ins/http-util.js';
import { routesFor, startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { freePort } from '../helpers/ports.js';
import { send } from '../helpers/http.js';
import { until } from '../helpers/poll.js';
import { readMemory, spawnGateway, type GatewayProcess } from '../helpers/process.js';
import { startRedis, type TestRedis } from '../helpers/redis.js';
import { signToken } from '../helpers/tokens.js';

/**
 * WebSocket routes through the gateway, with a real upstream WebSocket server and the `ws`
 * client: the upgrade goes through the same chain as any request before anything reaches the
 * upstream; frames pass both ways with backpressure; sockets close with a clear code when idle,
 * too large, expired, revoked (on another replica) or at shutdown; each socket is audited.
 */

interface Upstream {
  url: string;
  server: Server;
  wss: WebSocketServer;
  /** Handshake headers of every WebSocket the upstream accepted. */
  handshakes: IncomingHttpHeaders[];
  close(): Promise<void>;
}

/** An echo server, plus `/flood/<bytes>`: sends that many bytes in 64 KB messages, then `done`. */
async function startWsUpstream(): Promise<Upstream> {
  const handshakes: IncomingHttpHeaders[] = [];
  const server = createServer((req, res) => {
    // The gateway's active health checks.
    res.writeHead(200, { 'content-type': 'application/json' }).end('{"status":"healthy"}');
  });
  const wss = new WebSocketServer({ server, handleProtocols: (protocols) => (protocols.has('chat.v1') ? 'chat.v1' : false) });
  wss.on('connection', (ws, req) => {
    handshakes.push(req.headers);
    const flood = /^\/ws\/[a-z-]+\/flood\/(\d+)$/.exec(req.url ?? '');
    if (flood !== null) {
      const chunk = Buffer.alloc(64 * 1024, 7);
      let left = Number(flood[1]);
      while (left > 0) {
        ws.send(left >= chunk.length ? chunk : chunk.subarray(0, left));
        left -= chunk.length;
      }
      ws.send('done');
      return;
    }
    ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const port = (server.address() as AddressInfo).port;
  return {
    url: `http://127.0.0.1:${port}`,
    server,
    wss,
    handshakes,
    async close() {
      for (const c of wss.clients) c.terminate();
      wss.close();
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

function wsUrl(gatewayUrl: string, path: string): string {
  return gatewayUrl.replace(/^http/, 'ws') + path;
}

/** Opens a WebSocket; resolves once open, or with the refusal's status and JSON body. */
function connect(url: string, options: { token?: string; protocols?: string[] } = {}): Promise<{ ws: WebSocket } | { status: number; body: Record<string, unknown> }> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, options.protocols ?? [], options.token === undefined ? {} : { headers: { authorization: `Bearer ${options.token}` } });
    ws.once('open', () => resolve({ ws }));
    ws.once('unexpected-response', (_req, res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (text += d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: JSON.parse(text) as Record<string, unknown> }));
    });
    ws.once('error', reject);
  });
}

async function open(url: string, options: { token?: string; protocols?: string[] } = {}): Promise<WebSocket> {
  const r = await connect(url, options);
  if (!('ws' in r)) throw new Error(`refused: ${r.status} ${JSON.stringify(r.body)}`);
  return r.ws;
}

function closed(ws: WebSocket): Promise<{ code: number; reason: string }> {
  if (ws.readyState === WebSocket.CLOSED) throw new Error('already closed');
  return new Promise((resolve) => ws.once('close', (code, reason) => resolve({ code, reason: reason.toString() })));
}

function echo(ws: WebSocket, data: string): Promise<string> {
  return new Promise((resolve) => {
    ws.once('message', (d) => resolve(String(d)));
    ws.send(data);
  });
}

const ROUTES = (upstreamUrl: string) =>
  routesFor(upstreamUrl, [
    { name: 'chat', path: '/ws/chat', websocket: { maxMessageBytes: 64 * 1024, maxPerUser: 2 }, roles: ['resident', 'health_provider'], cors: { origins: ['https://app.example'] } },
    { name: 'quiet', path: '/ws/quiet', websocket: { idleTimeoutMs: 300 } },
    { name: 'limited', path: '/ws/limited', websocket: true, rateLimit: { perMinute: 1 } },
    { name: 'bulk', prefix: '/ws/bulk', websocket: { maxMessageBytes: 1024 * 1024 } },
    { name: 'revocations', path: '/api/gateway/revocations', methods: ['POST'], action: 'revoke', permission: 'tokens:revoke', service: undefined },
  ]);

describe('WebSocket routes', () => {
  let upstream: Upstream;
  let gw: TestGateway;
  const audit = createAuditStandIn();
  let user = 0;
  const fresh = () => `ws-user-${process.pid}-${++user}`;

  before(async () => {
    upstream = await startWsUpstream();
    const auditPort = await freePort();
    await listen(audit.server, auditPort);
    gw = await startTestGateway(ROUTES(upstream.url), { JWT_CLOCK_SKEW_SECONDS: '0', AUDIT_SERVICE_URL: `http://127.0.0.1:${auditPort}`, ENABLE_METRICS: 'true' });
  });
  after(async () => {
    await gw?.close();
    await upstream?.close();
    await closeServer(audit.server);
  });

  it('an authenticated socket echoes both ways; the upstream gets the verified identity, and no spoofed one', async () => {
    const sub = fresh();
    const token = await signToken({ sub, role: 'resident' });
    const before = upstream.handshakes.length;
    const ws = new WebSocket(wsUrl(gw.url, '/ws/chat'), { headers: { authorization: `Bearer ${token}`, 'x-user-id': 'someone-else' } });
    await once(ws, 'open');
    assert.equal(await echo(ws, 'hello'), 'hello');
    assert.equal(await echo(ws, 'x'.repeat(10_000)), 'x'.repeat(10_000));
    const seen = upstream.handshakes[before]!;
    assert.equal(seen['x-user-id'], sub);
    assert.equal(seen['x-user-role'], 'resident');
    ws.close(1000);
    assert.equal((await closed(ws)).code, 1000);
  });

  it('a browser\'s token as a subprotocol (bearer, <token>): accepted, answered `bearer` or the upstream\'s protocol, and never passed on as one', async () => {
    const token = await signToken({ sub: fresh(), role: 'resident' });
    const before = upstream.handshakes.length;
    const plain = await open(wsUrl(gw.url, '/ws/chat'), { protocols: ['bearer', token] });
    assert.equal(plain.protocol, 'bearer');
    const withOwn = await open(wsUrl(gw.url, '/ws/chat'), { protocols: ['chat.v1', 'bearer', token] });
    assert.equal(withOwn.protocol, 'chat.v1', "the upstream's choice");
    assert.equal(await echo(withOwn, 'ok'), 'ok');
    // The upstream gets the token as on any route (Authorization), never as a subprotocol.
    const offered = upstream.handshakes.slice(before).map((h) => h['sec-websocket-protocol'] ?? null);
    assert.deepEqual(offered, [null, 'chat.v1']);
    plain.close();
    withOwn.close();
  });

  it('refused upgrades are the gateway\'s JSON errors, and the upstream is never reached', async () => {
    const owner = fresh();
    const limitedUser = await signToken({ sub: fresh() });
    assert.ok('ws' in (await connect(wsUrl(gw.url, '/ws/limited'), { token: limitedUser })));
    const before = upstream.handshakes.length;
    const cases: Array<[string, string, string | undefined, number, string]> = [
      ['no token', '/ws/chat', undefined, 401, 'GW_AUTH_TOKEN_MISSING'],
      ['an expired token', '/ws/chat', await signToken({ sub: owner, role: 'resident', expiresInSeconds: -60 }), 401, 'GW_AUTH_TOKEN_EXPIRED'],
      ['a role the route does not take', '/ws/chat', await signToken({ sub: owner, role: 'family_member' }), 403, 'GW_FORBIDDEN'],
      ['over the rate limit', '/ws/limited', limitedUser, 429, 'GW_RATE_LIMITED'],
    ];
    for (const [what, path, token, status, code] of cases) {
      const r = await connect(wsUrl(gw.url, path), token === undefined ? {} : { token });
      assert.ok(!('ws' in r), `${what}: opened`);
      assert.deepEqual([r.status, r.body.code], [status, code], what);
    }
    const foreign = await new Promise<number>((resolve) => {
      const ws = new WebSocket(wsUrl(gw.url, '/ws/chat'), { origin: 'https://evil.example', headers: { authorization: `Bearer ${limitedUser}` } });
      ws.once('unexpected-response', (_req, res) => resolve(res.statusCode ?? 0));
      ws.once('open', () => resolve(101));
      ws.once('error', () => undefined);
    });
    assert.equal(foreign, 403, 'a page of an origin the route does not allow');
    assert.equal(upstream.handshakes.length, before, 'no refused upgrade reached the upstream');
    const allowed = new WebSocket(wsUrl(gw.url, '/ws/chat'), { origin: 'https://app.example', headers: { authorization: `Bearer ${await signToken({ sub: owner, role: 'resident' })}` } });
    await once(allowed, 'open');
    allowed.close();
    const plainGet = await send(`${gw.url}/ws/chat`, { token: await signToken({ sub: owner, role: 'resident' }) });
    assert.equal(plainGet.statusCode, 426, 'a WebSocket route takes no plain request');
  });

  it(`a user's sockets on a route are capped (maxPerUser), and a closed one frees its place`, async () => {
    const token = await signToken({ sub: fresh(), role: 'resident' });
    const url = wsUrl(gw.url, '/ws/chat');
    const first = await open(url, { token });
    const second = await open(url, { token });
    const third = await connect(url, { token });
    assert.ok(!('ws' in third) && third.status === 429, 'the third socket is refused');
    first.close();
    await closed(first);
    const again = await until('a place freed', 2_000, async () => {
      const r = await connect(url, { token });
      return 'ws' in r ? r.ws : undefined;
    });
    second.close();
    again.close();
  });

  it('a message over the route\'s maximum closes the socket with 1009; an idle one closes with 4408', async () => {
    const token = await signToken({ sub: fresh(), role: 'resident' });
    const big = await open(wsUrl(gw.url, '/ws/chat'), { token });
    const ending = closed(big);
    big.send(Buffer.alloc(100 * 1024));
    assert.equal((await ending).code, 1009);
    const quiet = await open(wsUrl(gw.url, '/ws/quiet'), { token });
    assert.equal(await echo(quiet, 'still here'), 'still here');
    assert.deepEqual(await closed(quiet), { code: 4408, reason: 'idle timeout' });
  });

  it('the token\'s expiry closes its socket with 4401', async () => {
    const token = await signToken({ sub: fresh(), role: 'resident', expiresInSeconds: 2 });
    const ws = await open(wsUrl(gw.url, '/ws/chat'), { token });
    const end = await closed(ws);
    assert.deepEqual(end, { code: 4401, reason: 'token expired' });
    assert.ok(Date.now() / 1000 >= decodeJwt(token).exp!, 'not before the token expired');
  });

  it('sockets, closes and the access line: the exit phase runs when the socket closes', async () => {
    const sub = fresh();
    const ws = await open(wsUrl(gw.url, '/ws/chat'), { token: await signToken({ sub, role: 'resident' }) });
    await echo(ws, 'one');
    ws.close(1000);
    await closed(ws);
    const line = await until('the access line of the socket', 2_000, async () => gw.logs.find((l) => l.user_id === sub && l.route === 'chat'), 10);
    assert.equal(line.status_code, 101);
    assert.ok(!JSON.stringify(line).includes('one'), 'no message content in the log');
  });

  it('one audit event when a socket opens and one when it closes (duration, frames and bytes each way, code, who closed it), never the content', async () => {
    const sub = fresh();
    const ws = await open(wsUrl(gw.url, '/ws/chat'), { token: await signToken({ sub, role: 'resident' }) });
    await echo(ws, 'secret-message-1');
    await echo(ws, 'secret-message-22');
    ws.close(1000);
    await closed(ws);
    const events = await until('both audit events delivered', 5_000, async () => {
      const mine = (audit.events as Array<Record<string, unknown>>).filter((e) => e.user_id === sub);
      return mine.length >= 2 ? mine : undefined;
    }, 20);
    assert.deepEqual(events.map((e) => e.type), ['websocket_open', 'websocket_close']);
    const [opened, closing] = events as [Record<string, unknown>, Record<string, unknown>];
    assert.equal(opened.request_id, closing.request_id);
    assert.equal(closing.route, '/ws/chat');
    assert.deepEqual(
      { frames_in: closing.frames_in, bytes_in: closing.bytes_in, frames_out: closing.frames_out, bytes_out: closing.bytes_out, close_code: closing.close_code, closed_by: closing.closed_by },
      { frames_in: 2, bytes_in: 33, frames_out: 2, bytes_out: 33, close_code: 1000, closed_by: 'client' },
    );
    assert.ok(typeof closing.duration_ms === 'number');
    assert.ok(!JSON.stringify(events).includes('secret-message'), 'no content in the audit trail');
  });

  it('/metrics: open sockets by route, and closes by reason', async () => {
    const ws = await open(wsUrl(gw.url, '/ws/quiet'), { token: await signToken({ sub: fresh() }) });
    const during = (await send(`${gw.url}/metrics`)).text;
    assert.match(during, /api_gateway_websockets_open\{path="\/ws\/quiet"\} 1/);
    await closed(ws);
    const after = (await send(`${gw.url}/metrics`)).text;
    assert.match(after, /api_gateway_websockets_open\{path="\/ws\/quiet"\} 0/);
    assert.match(after, /api_gateway_websocket_closes_total\{path="\/ws\/quiet",reason="idle"\} [1-9]/);
    assert.match(after, /api_gateway_websocket_closes_total\{path="\/ws\/chat",reason="too_large"\} [1-9]/);
  });
});

describe('WebSocket sockets across replicas and processes', () => {
  let upstream: Upstream;
  let redis: TestRedis;
  let a: TestGateway;
  let b: TestGateway;

  before(async () => {
    upstream = await startWsUpstream();
    redis = await startRedis();
    a = await startTestGateway(ROUTES(upstream.url), { REDIS_URL: redis.url });
    b = await startTestGateway(ROUTES(upstream.url), { REDIS_URL: redis.url });
  });
  after(async () => {
    await a?.close();
    await b?.close();
    await upstream?.close();
    await redis?.stop();
  });

  it('a revocation made on replica A closes the socket held on replica B within 1 s (4403), and only that one', async () => {
    const sub = `ws-revoked-${process.pid}`;
    const token = await signToken({ sub, role: 'resident' });
    const other = await signToken({ sub: `ws-kept-${process.pid}`, role: 'resident' });
    const held = await open(wsUrl(b.url, '/ws/chat'), { token });
    const kept = await open(wsUrl(b.url, '/ws/chat'), { token: other });
    const ending = closed(held);
    const admin = await signToken({ sub: 'ws-admin', role: 'admin' });
    const res = await send(`${a.url}/api/gateway/revocations`, { token: admin, json: { jti: decodeJwt(token).jti, user_id: sub } });
    assert.equal(res.statusCode, 200, res.text);
    const revokedAt = performance.now();
    assert.deepEqual(await ending, { code: 4403, reason: 'token revoked' });
    const ms = performance.now() - revokedAt;
    assert.ok(ms < 1_000, `closed ${Math.round(ms)} ms after the revocation`);
    assert.equal(await echo(kept, 'still open'), 'still open');
    kept.close();
  });

  it('64 MB to a client that does not read: the upstream keeps what the gateway will not take, and the gateway holds at most a few MB', async () => {
    const TOTAL = 64 * 1024 * 1024;
    // What may sit outside the upstream's queue with backpressure working: the kernel's buffers on
    // both hops (the paused reader's window does not grow, so a few MB each) and the gateway's
    // high-water mark. Without the gateway's pause it takes all of it (the upstream keeps nothing).
    const OUTSIDE_UPSTREAM = 20 * 1024 * 1024;
    let gw: GatewayProcess | null = null;
    try {
      gw = await spawnGateway(ROUTES(upstream.url));
      const token = await signToken({ sub: `ws-slow-${process.pid}` });
      // A first socket read to the end, so that the baseline includes what any socket costs (code,
      // buffers, the allocator's arenas grown by a flood as large as the kernel's buffers).
      const warm = new WebSocket(wsUrl(gw.url, `/ws/bulk/flood/${16 * 1024 * 1024}`), { headers: { authorization: `Bearer ${token}` } });
      await new Promise<void>((resolve) => warm.on('message', (d) => String(d) === 'done' && resolve()));
      warm.close();
      await closed(warm);
      const baseline = readMemory(gw.pid).rssBytes;
      const ws = new WebSocket(wsUrl(gw.url, `/ws/bulk/flood/${TOTAL}`), { headers: { authorization: `Bearer ${token}` } });
      // Read nothing: the client's socket stops taking bytes once its buffers are full.
      let received = 0;
      const done = new Promise<void>((resolve) => ws.on('message', (d) => (String(d) === 'done' ? resolve() : (received += (d as Buffer).length))));
      await once(ws, 'open');
      ws.pause();
      const sender = [...upstream.wss.clients].at(-1)!;
      // The upstream cannot hand its bytes over: the gateway stopped reading from it. Once its
      // queue stops shrinking (less than 256 KB in half a second), what the kernel's buffers did
      // not take is either still at the upstream (backpressure) or in the gateway's memory.
      let last = Infinity;
      const seen: string[] = [];
      await until(
        'the upstream holding back what the gateway will not take',
        30_000,
        async () => {
          const now = sender.bufferedAmount;
          seen.push(`${now}/${upstream.wss.clients.size}`);
          const settled = last - now < 256 * 1024;
          last = now;
          return settled ? true : undefined;
        },
        500,
      ).catch((err: Error) => assert.fail(`${err.message}; the upstream's queue (bytes/sockets): ${seen.join(' ')}`));
      const mb = (n: number) => `${(n / 1048576).toFixed(1)} MB`;
      const held = sender.bufferedAmount;
      const early = received;
      assert.ok(
        held >= TOTAL - OUTSIDE_UPSTREAM,
        `the upstream still holds ${mb(held)} of ${mb(TOTAL)} (the client read ${mb(early)} before pausing): the rest left it for the gateway`,
      );
      // The same seen from the gateway's memory (a coarser measure: the allocator and the garbage
      // collector move it by several MB on their own; without backpressure it grows by about 60 MB).
      const grown = readMemory(gw.pid).rssBytes - baseline;
      assert.ok(grown < 24 * 1024 * 1024, `the gateway grew by ${mb(grown)}`);
      // Reading again, every byte arrives.
      ws.resume();
      await done;
      assert.equal(received, TOTAL);
      ws.close();
    } finally {
      await gw?.stop();
    }
  });

  it('SIGTERM: each open socket gets a close frame (1001) before the process exits', async () => {
    const gw = await spawnGateway(ROUTES(upstream.url));
    try {
      const ws = await open(wsUrl(gw.url, '/ws/chat'), { token: await signToken({ sub: `ws-term-${process.pid}`, role: 'resident' }) });
      const ending = closed(ws);
      gw.child.kill('SIGTERM');
      assert.deepEqual(await ending, { code: 1001, reason: 'gateway shutting down' });
      assert.equal(await gw.exited, 0);
    } finally {
      await gw.stop();
    }
  });
});
