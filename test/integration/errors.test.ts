import assert from 'node:assert/strict';
import type { IncomingMessage } from 'node:http';
import { Readable } from 'node:stream';
import { after, before, describe, it } from 'node:test';
import { request } from 'undici';
import { startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { assertNoBanners, expectProblem, onNewConnection, rawRequest, read, type Answer } from '../helpers/http.js';
import { freePort } from '../helpers/ports.js';
import { startUpstream, type TestUpstream } from '../helpers/upstream.js';

const TIMEOUT_MS = 200;
const BODY_LIMIT = 1024;
const MAX_HEADER_BYTES = 4096;

/** What the upstream saw of one upload: how much of the body, and whether it ever ended. */
interface Upload {
  bytes: number;
  ended: boolean;
  closed: Promise<void>;
}

describe('errors the gateway answers itself', () => {
  let upstream: TestUpstream;
  let gw: TestGateway;
  const uploads: Upload[] = [];
  // Resolved by the test after its assertions; the upstream holds /slow until then.
  let releaseSlow!: () => void;
  const slowReleased = new Promise<void>((resolve) => (releaseSlow = resolve));
  // Called when an upload's first bytes reach the upstream; a test sets it before sending.
  let uploadArrived: () => void = () => undefined;

  function trackUpload(req: IncomingMessage): void {
    let closed!: () => void;
    const upload: Upload = { bytes: 0, ended: false, closed: new Promise((resolve) => (closed = resolve)) };
    uploads.push(upload);
    req.on('data', (chunk: Buffer) => {
      upload.bytes += chunk.length;
      uploadArrived();
    });
    req.on('end', () => (upload.ended = true));
    req.on('close', () => closed());
  }

  before(async () => {
    upstream = await startUpstream(async (req, res) => {
      const path = req.url!.split('?')[0];
      if (path === '/slow') {
        await slowReleased;
        res.end('too late');
      } else if (path === '/banner') {
        res.writeHead(200, { server: 'Apache/2.4.58 (Unix)', 'x-powered-by': 'PHP/8.3.0', 'x-upstream': 'banner', 'content-type': 'text/plain' });
        res.end('from upstream');
      } else if (path === '/upload') {
        trackUpload(req);
        req.on('end', () => res.end('complete'));
      } else {
        req.resume();
        req.on('end', () => res.end('ok'));
      }
    });
    const deadPort = await freePort();
    gw = await startTestGateway(
      {
        services: {
          backend: { instances: [upstream.url] },
          // nothing listens here
          dead: { instances: [`http://127.0.0.1:${deadPort}`] },
        },
        routes: [
          { name: 'down', prefix: '/down', service: 'dead', auth: 'public' },
          { name: 'slow', path: '/slow', service: 'backend', auth: 'public', timeoutMs: TIMEOUT_MS },
          { name: 'read-only', path: '/read-only', service: 'backend', auth: 'public', methods: ['GET'] },
          { name: 'upload', path: '/upload', service: 'backend', auth: 'public', methods: ['POST'], maxBodyBytes: BODY_LIMIT },
          { name: 'banner', path: '/banner', service: 'backend', auth: 'public' },
          { name: 'echo', prefix: '/echo', service: 'backend', auth: 'public' },
        ],
      },
      { MAX_HEADER_BYTES: String(MAX_HEADER_BYTES) },
    );
  });
  after(async () => {
    releaseSlow();
    await gw?.close();
    await upstream?.close();
  });

  it('answers 502 GW_UPSTREAM_UNAVAILABLE when nothing listens at the upstream', async () => {
    const res = await read(request(`${gw.url}/down/anything`, { headers: { 'x-request-id': 'req-down-1' } }));
    const body = expectProblem(res, 502, 'GW_UPSTREAM_UNAVAILABLE');
    assert.equal(body.request_id, 'req-down-1');
  });

  it('answers 504 GW_UPSTREAM_TIMEOUT once the route timeout passes, without waiting for the upstream', { timeout: 10_000 }, async () => {
    try {
      const started = performance.now();
      const res = await read(request(`${gw.url}/slow`));
      const elapsed = performance.now() - started;
      expectProblem(res, 504, 'GW_UPSTREAM_TIMEOUT');
      // Node timers run on a millisecond clock, so a timer may fire up to 1 ms early by performance.now().
      assert.ok(elapsed >= TIMEOUT_MS - 1, `answered after ${elapsed.toFixed(0)} ms, before the ${TIMEOUT_MS} ms timeout`);
      // The upstream never answers on its own, so any bound shows the gateway gave up by itself; this
      // one also says "shortly": a client that set 200 ms should not wait several times that.
      assert.ok(elapsed < TIMEOUT_MS + 800, `a ${TIMEOUT_MS} ms route timeout answered after ${elapsed.toFixed(0)} ms`);
      assert.ok(upstream.received.some((r) => r.url === '/slow'), 'the request should have reached the upstream');
    } finally {
      releaseSlow();
    }
  });

  it('answers 405 with an Allow header for a method the route does not take, without calling the upstream', async () => {
    const before = upstream.received.length;
    const res = await read(request(`${gw.url}/read-only`, { method: 'POST', body: 'x' }));
    expectProblem(res, 405, 'GW_METHOD_NOT_ALLOWED');
    assert.equal(res.headers.allow, 'GET, HEAD');
    assert.equal(upstream.received.length, before);
  });

  it('answers 413 for a declared content-length over the route limit, before the upstream sees the request', async () => {
    const before = upstream.received.length;
    const res = await tooLong(gw, BODY_LIMIT + 1);
    expectProblem(res, 413, 'GW_BODY_TOO_LARGE');
    assert.equal(upstream.received.length, before, 'the upstream must not be called');
  });

  it('answers 413 when a chunked body grows past the route limit, and the upstream never gets the whole body', { timeout: 10_000 }, async () => {
    const chunk = Buffer.alloc(BODY_LIMIT / 2, 'a');
    const arrived = new Promise<void>((resolve) => (uploadArrived = resolve));
    const before = uploads.length;
    async function* body(): AsyncGenerator<Buffer> {
      yield chunk;
      // The rest goes only once the upstream is receiving, so it is certain the body was cut off in flight.
      await arrived;
      for (let i = 0; i < 8; i++) yield chunk;
    }
    const res = await read(request(`${gw.url}/upload`, { method: 'POST', body: Readable.from(body()) }));
    expectProblem(res, 413, 'GW_BODY_TOO_LARGE');
    assert.equal(uploads.length, before + 1);
    const seen = uploads.at(-1)!;
    await seen.closed;
    assert.equal(seen.ended, false, 'the upstream must not receive a complete body');
    assert.ok(seen.bytes <= BODY_LIMIT, `the upstream received ${seen.bytes} bytes of a body limited to ${BODY_LIMIT}`);
  });

  it('answers 431 for headers larger than MAX_HEADER_BYTES, without calling the upstream', async () => {
    const before = upstream.received.length;
    const res = await read(request(`${gw.url}/echo/big`, { headers: { 'x-filler': 'a'.repeat(MAX_HEADER_BYTES * 2) } }));
    expectProblem(res, 431, 'GW_HEADERS_TOO_LARGE');
    assert.equal(upstream.received.length, before);
  });

  it('answers 400 problem JSON for a request that is not HTTP', async () => {
    expectProblem(await rawRequest(gw.port, 'NOT HTTP AT ALL\r\n\r\n'), 400, 'GW_BAD_REQUEST');
  });

  it('answers a path with broken percent-encoding with the same 400 problem shape', async () => {
    const res = await rawRequest(gw.port, 'GET /echo/%E0%A4%A HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n\r\n');
    expectProblem(res, 400, 'GW_BAD_PATH');
  });

  it('serves the next request on a new connection normally after each kind of bad request', async () => {
    const bad: Array<[string, () => Promise<number>]> = [
      ['not HTTP', async () => (await rawRequest(gw.port, 'NOT HTTP AT ALL\r\n\r\n')).statusCode],
      ['oversized headers', async () => (await onNewConnection(gw.url, '/echo/x', { method: 'GET', headers: { 'x-filler': 'a'.repeat(MAX_HEADER_BYTES * 2) } })).statusCode],
      ['oversized body', async () => (await tooLong(gw, BODY_LIMIT * 4)).statusCode],
      ['conflicting content-lengths', async () => (await rawRequest(gw.port, 'POST /echo/x HTTP/1.1\r\nHost: g\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab')).statusCode],
      ['unreachable upstream', async () => (await onNewConnection(gw.url, '/down/x')).statusCode],
    ];
    for (const [what, send] of bad) {
      const status = await send();
      assert.ok(status >= 400, `${what}: expected an error, got ${status}`);
      const next = await onNewConnection(gw.url, '/echo/after', { method: 'POST', body: 'hello' });
      assert.equal(next.statusCode, 200, `after ${what}: ${next.text}`);
      assert.equal(next.text, 'ok');
    }
  });

  it('strips Server and X-Powered-By from upstream answers and never adds its own', async () => {
    const res = await request(`${gw.url}/banner`);
    assert.equal(res.statusCode, 200);
    assert.equal(await res.body.text(), 'from upstream');
    assert.equal(res.headers['x-upstream'], 'banner', 'other upstream headers pass through');
    assertNoBanners(res.headers);
    for (const path of ['/health/live', '/nowhere']) {
      const own = await request(`${gw.url}${path}`);
      await own.body.dump();
      assertNoBanners(own.headers);
    }
  });
});

/** A POST declaring a length over the limit, on a new connection. The body is small enough to be sent whole before the answer. */
function tooLong(gw: TestGateway, length: number): Promise<Answer> {
  return onNewConnection(gw.url, '/upload', {
    method: 'POST',
    headers: { 'content-length': String(length), 'content-type': 'application/octet-stream' },
    body: Buffer.alloc(length, 'b'),
  });
}
