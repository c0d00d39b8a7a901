import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect as tlsConnect } from 'node:tls';
import { connect as http2Connect } from 'node:http2';
import { once } from 'node:events';
import { setTimeout as delay } from 'node:timers/promises';
import { after, before, describe, it, type TestContext } from 'node:test';
import type { Redis } from 'ioredis';
import { Pool } from 'undici';
import { REVOCATION_CHANNEL } from '../../src/stores/access-store.js';
import { routesFor, startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { send } from '../helpers/http.js';
import { until, untilDatabase } from '../helpers/poll.js';
import { spawnGateway, type GatewayProcess } from '../helpers/process.js';
import { inspectRedis, loopbackCertificate, startRedis, type TestRedis } from '../helpers/redis.js';
import { signToken } from '../helpers/tokens.js';
import { startUpstream, type TestUpstream } from '../helpers/upstream.js';

/**
 * A busy or stalled event loop is not a Redis outage, and a slow client is cut on time: the
 * gateway's timers are checked on the loop they time, so each deadline here is judged only after
 * the sockets of that turn were read.
 */

const PHI_ROUTES = (upstreamUrl: string) => routesFor(upstreamUrl, [{ name: 'chart', prefix: '/api/chart', phi: true }]);

interface Health {
  redis?: { announcements: string };
  checks: Record<string, { status: string; detail: string }>;
}

/**
 * Each stall outlasts the Redis command timeout several times over; the timeout itself leaves
 * room for a Redis that is merely slow on a busy machine (a different story from a stall).
 */
const COMMAND_TIMEOUT_MS = 200;
const STALL_MS = 600;

describe('an event loop stalled while Redis answers', { timeout: 90_000 }, () => {
  let redis: TestRedis;
  let upstream: TestUpstream;
  let gw: GatewayProcess;

  before(async () => {
    redis = await startRedis();
    upstream = await startUpstream();
    gw = await spawnGateway(PHI_ROUTES(upstream.url), { REDIS_URL: redis.url, REDIS_COMMAND_TIMEOUT_MS: String(COMMAND_TIMEOUT_MS), HEALTH_CACHE_MS: '0', RATE_LIMIT_PER_MINUTE: '1000000', LOG_LEVEL: 'INFO' });
    await untilDatabase(gw.url, 'healthy');
  });
  after(async () => {
    await gw?.stop();
    await upstream?.close();
    await redis?.stop();
  });

  it('PHI requests in flight across five 600 ms stalls (the process frozen) all pass: replies that arrived during a stall are answers, not timeouts', async (t) => {
    const token = await signToken({ sub: `stall-${process.pid}` });
    const pool = new Pool(gw.url, { connections: 16 });
    const statuses = new Map<string, number>();
    let running = true;
    const worker = async () => {
      for (let i = 0; running; i++) {
        const res = await pool.request({ path: `/api/chart/${i}`, method: 'GET', headers: { authorization: `Bearer ${token}` }, headersTimeout: 20_000, bodyTimeout: 20_000 });
        const text = await res.body.text();
        const key = res.statusCode === 200 ? '200' : `${res.statusCode} ${(/"code":"(\w+)"/.exec(text) ?? [])[1] ?? ''}`;
        statuses.set(key, (statuses.get(key) ?? 0) + 1);
      }
    };
    const load = Promise.all(Array.from({ length: 16 }, worker));
    try {
      for (let stall = 0; stall < 5; stall++) {
        // Traffic flows (requests are waiting on Redis at any moment), then the loop stops.
        const before = [...statuses.values()].reduce((a, b) => a + b, 0);
        await until('traffic between stalls', 10_000, async () => ([...statuses.values()].reduce((a, b) => a + b, 0) >= before + 50 ? true : undefined), 5);
        process.kill(gw.pid, 'SIGSTOP');
        await new Promise((r) => setTimeout(r, STALL_MS));
        process.kill(gw.pid, 'SIGCONT');
      }
    } finally {
      running = false;
      await load;
      await pool.close();
    }
    t.diagnostic(`answers: ${JSON.stringify(Object.fromEntries(statuses))}`);
    assert.deepEqual([...statuses.keys()], ['200'], 'every PHI request passed');
    assert.ok(!gw.stdout().includes('redis unreachable'), 'no Redis outage was reported');
  });
});

describe('the revocation subscription', { timeout: 60_000 }, () => {
  let redis: TestRedis;
  let keys: Redis;
  let upstream: TestUpstream;
  let gw: GatewayProcess;

  before(async () => {
    redis = await startRedis();
    keys = inspectRedis(redis);
    // Pub/sub refused to the gateway's user: its SUBSCRIBE fails as one timed out would.
    await keys.call('ACL', 'SETUSER', 'default', 'resetchannels');
    upstream = await startUpstream();
    gw = await spawnGateway(PHI_ROUTES(upstream.url), { REDIS_URL: redis.url, HEALTH_CACHE_MS: '0', LOG_LEVEL: 'INFO' });
  });
  after(async () => {
    keys?.disconnect();
    await gw?.stop();
    await upstream?.close();
    await redis?.stop();
  });

  it('refused at start, it is tried again until in place, and /health says when it is not', async () => {
    const health = async () => JSON.parse((await send(`${gw.url}/health`)).text) as Health;
    await until('/health to say the announcements are not heard', 10_000, async () => ((await health()).redis?.announcements === 'not subscribed' ? true : undefined), 100);
    await until('the refusal in the log', 5_000, async () => (/cannot subscribe to revocation announcements; trying again/.test(gw.stdout()) ? true : undefined), 50);
    await keys.call('ACL', 'SETUSER', 'default', 'allchannels');
    await until('the gateway to subscribe', 10_000, async () => (Number(((await keys.pubsub('NUMSUB', REVOCATION_CHANNEL)) as [string, number])[1]) === 1 ? true : undefined), 100);
    await until('/health to say subscribed', 5_000, async () => ((await health()).redis?.announcements === 'subscribed' ? true : undefined), 100);
    await until('the subscription in the log', 5_000, async () => (/"message":"subscribed to revocation announcements"/.test(gw.stdout()) ? true : undefined), 50);
  });
});

/** Sends a request's head a byte every 200 ms; resolves with how long until the gateway closed the connection, and what it answered. */
async function drip(socket: Socket): Promise<{ cutAfterMs: number; answer: string }> {
  const started = performance.now();
  socket.write('GET /api/open/x HTTP/1.1\r\nHost: gateway\r\n');
  let answer = '';
  socket.on('data', (d: Buffer) => (answer += d.toString()));
  const dripping = setInterval(() => socket.writable && socket.write('X'), 200);
  const cutAfterMs = await new Promise<number>((resolve) => {
    socket.once('close', () => resolve(performance.now() - started));
    // Bounded: a gateway that never cuts fails this test instead of hanging it.
    setTimeout(() => socket.destroy(), 15_000).unref();
  });
  clearInterval(dripping);
  return { cutAfterMs, answer };
}

const HEADERS_TIMEOUT_MS = 1_500;

/** Drips a request head on `socket` and expects the gateway to cut it on time with a 408, the upstream never called. */
async function expectDripCut(t: TestContext, socket: Socket, upstream: TestUpstream): Promise<void> {
  const { cutAfterMs, answer } = await drip(socket);
  t.diagnostic(`cut after ${Math.round(cutAfterMs)} ms: ${answer.split('\r\n')[0]}`);
  assert.ok(cutAfterMs >= HEADERS_TIMEOUT_MS - 50, `cut after ${cutAfterMs} ms, before the timeout`);
  // Within the configured time plus the one-second bound, and a margin for a busy machine.
  assert.ok(cutAfterMs < HEADERS_TIMEOUT_MS + 1_000 + 1_500, `cut after ${Math.round(cutAfterMs)} ms`);
  assert.match(answer, /^HTTP\/1\.1 408 /);
  assert.equal(upstream.received.length, 0);
}

/** An HTTP/2 frame: length, type, flags, stream id, payload. */
function h2Frame(type: number, flags: number, stream: number, payload: Buffer): Buffer {
  const head = Buffer.alloc(9);
  head.writeUIntBE(payload.length, 0, 3);
  head[3] = type;
  head[4] = flags;
  head.writeUInt32BE(stream, 5);
  return Buffer.concat([head, payload]);
}

describe('a slowloris client', { timeout: 60_000 }, () => {
  let upstream: TestUpstream;
  let slow: TestUpstream;
  let gw: GatewayProcess;
  let tlsGw: TestGateway;
  let dir: string;

  before(async () => {
    upstream = await startUpstream();
    slow = await startUpstream(async (_req, res) => {
      await delay(HEADERS_TIMEOUT_MS + 1_000);
      res.writeHead(200, { 'content-type': 'application/json' }).end('{"slow":true}');
    });
    const routes = routesFor(upstream.url, [{ name: 'open', prefix: '/api/open', auth: 'public' }]);
    gw = await spawnGateway(routes, { CLIENT_HEADERS_TIMEOUT_MS: String(HEADERS_TIMEOUT_MS) });
    dir = await mkdtemp(join(tmpdir(), 'gw-slowloris-'));
    const { certFile, keyFile } = await loopbackCertificate(dir);
    const tlsRoutes = {
      services: { open: { instances: [upstream.url] }, slow: { instances: [slow.url] } },
      routes: [
        { name: 'open', prefix: '/api/open', service: 'open', auth: 'public' },
        { name: 'slow', prefix: '/api/slow', service: 'slow', auth: 'public' },
      ],
    };
    tlsGw = await startTestGateway(tlsRoutes, { CLIENT_HEADERS_TIMEOUT_MS: String(HEADERS_TIMEOUT_MS), TLS_CERT_FILE: certFile, TLS_KEY_FILE: keyFile, HTTP2_ENABLED: 'true' });
  });
  after(async () => {
    await gw?.stop();
    await tlsGw?.close();
    await upstream?.close();
    await slow?.close();
    if (dir !== undefined) await rm(dir, { recursive: true, force: true });
  });

  it(`sending its headers a byte at a time is cut within CLIENT_HEADERS_TIMEOUT_MS plus a second (not up to 30 s later)`, async (t) => {
    const socket = connect(gw.port, '127.0.0.1');
    await new Promise((r) => socket.once('connect', r));
    await expectDripCut(t, socket, upstream);
  });

  it('the same over TLS on the HTTP/2 listener, as HTTP/1.1 by ALPN (Node checks those connections on its own 30 s timer)', async (t) => {
    const socket = tlsConnect({ port: Number(new URL(tlsGw.url).port), host: '127.0.0.1', rejectUnauthorized: false, ALPNProtocols: ['http/1.1'] });
    await new Promise((r) => socket.once('secureConnect', r));
    assert.equal(socket.alpnProtocol, 'http/1.1');
    await expectDripCut(t, socket, upstream);
  });

  it('over HTTP/2: a HEADERS frame sent a byte at a time ends its session within CLIENT_HEADERS_TIMEOUT_MS plus a second (Node has no headers deadline there, and each byte kept the session alive)', async (t) => {
    const socket = tlsConnect({ port: Number(new URL(tlsGw.url).port), host: '127.0.0.1', rejectUnauthorized: false, ALPNProtocols: ['h2'] });
    await new Promise((r) => socket.once('secureConnect', r));
    assert.equal(socket.alpnProtocol, 'h2');
    socket.on('data', () => undefined);
    const started = performance.now();
    socket.write(Buffer.concat([Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n'), h2Frame(0x4, 0, 0, Buffer.alloc(0))]));
    // GET https /api/open/x, as HPACK literals, then a header x with a 200-byte value; the frame
    // (END_HEADERS, END_STREAM) goes out a byte every 200 ms after its first 20 bytes.
    const path = Buffer.from('/api/open/x');
    const block = Buffer.concat([Buffer.from([0x82, 0x87, 0x44, path.length]), path, Buffer.from([0x00, 0x01, 0x78, 0x7f, 200 - 127]), Buffer.alloc(200, 0x61)]);
    const frame = h2Frame(0x1, 0x4 | 0x1, 1, block);
    socket.write(frame.subarray(0, 20));
    let sent = 20;
    const dripping = setInterval(() => socket.writable && sent < frame.length - 1 && socket.write(frame.subarray(sent, ++sent)), 200);
    const cutAfterMs = await new Promise<number>((resolve) => {
      socket.once('close', () => resolve(performance.now() - started));
      setTimeout(() => socket.destroy(), 15_000).unref();
    });
    clearInterval(dripping);
    t.diagnostic(`cut after ${Math.round(cutAfterMs)} ms, ${sent} of the frame's ${frame.length} bytes sent`);
    assert.ok(cutAfterMs >= HEADERS_TIMEOUT_MS - 50, `cut after ${cutAfterMs} ms, before the timeout`);
    assert.ok(cutAfterMs < HEADERS_TIMEOUT_MS + 1_000 + 1_500, `cut after ${Math.round(cutAfterMs)} ms`);
    assert.equal(upstream.received.length, 0);
  });

  it('over HTTP/2: a session whose request waits longer than CLIENT_HEADERS_TIMEOUT_MS for its answer is not cut', async () => {
    const session = http2Connect(`https://127.0.0.1:${new URL(tlsGw.url).port}`, { rejectUnauthorized: false });
    try {
      const stream = session.request({ ':method': 'GET', ':path': '/api/slow/x' }, { endStream: true });
      const [headers] = (await once(stream, 'response')) as [Record<string, string | number>];
      let body = '';
      stream.setEncoding('utf8').on('data', (d: string) => (body += d));
      await once(stream, 'end');
      assert.equal(headers[':status'], 200);
      assert.deepEqual(JSON.parse(body), { slow: true });
    } finally {
      session.close();
    }
  });
});
