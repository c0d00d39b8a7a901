import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { request } from 'undici';
import type { TestGateway } from '../helpers/gateway.js';
import { startUpstream, type TestUpstream } from '../helpers/upstream.js';
import { startTestGateway } from '../helpers/gateway.js';
import { header, problemOf, rawExchange } from '../helpers/raw-http.js';

/**
 * Each payload is a first request whose framing two parsers could read differently, followed by
 * a second request hidden where one of them would see a body. If the gateway ever took the hidden
 * request as a request of its own, it would forward it: the upstream is the witness.
 */
function hidden(tag: string): string {
  // Connection: close makes a successful smuggle end the exchange instead of hanging it.
  return `GET /public/smuggled-${tag} HTTP/1.1\r\nHost: gateway.test\r\nX-User-ID: admin\r\nConnection: close\r\n\r\n`;
}

/** A parser that accepted the framing would sit waiting for more body; that is a failure, not a wait. */
const EXCHANGE_TIMEOUT_MS = 2_000;

const FIRST = 'POST /public/first HTTP/1.1\r\nHost: gateway.test\r\n';

const FRAMING: Array<[name: string, payload: (tag: string) => string]> = [
  // CL.TE: by Content-Length the hidden request is body; by chunked framing it follows the last chunk.
  ['Content-Length with Transfer-Encoding (CL.TE)', (t) => `${FIRST}Content-Length: ${5 + hidden(t).length}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n${hidden(t)}`],
  // TE.CL: by chunked framing the hidden request is the chunk; by Content-Length it follows the size line.
  ['Transfer-Encoding with Content-Length (TE.CL)', (t) => `${FIRST}Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n${hidden(t).length.toString(16)}\r\n${hidden(t)}\r\n0\r\n\r\n`],
  ['two different Content-Lengths', (t) => `${FIRST}Content-Length: 0\r\nContent-Length: ${hidden(t).length}\r\n\r\n${hidden(t)}`],
  ['a Content-Length list', (t) => `${FIRST}Content-Length: 0, ${hidden(t).length}\r\n\r\n${hidden(t)}`],
  ['Content-Length with a sign', (t) => `${FIRST}Content-Length: +0\r\n\r\n${hidden(t)}`],
  ['Transfer-Encoding: chunked, identity', (t) => `${FIRST}Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n${hidden(t)}`],
  ['Transfer-Encoding: xchunked', (t) => `${FIRST}Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n${hidden(t)}`],
  ['Transfer-Encoding: "chunked"', (t) => `${FIRST}Transfer-Encoding: "chunked"\r\n\r\n0\r\n\r\n${hidden(t)}`],
  ['a space before the Transfer-Encoding colon', (t) => `${FIRST}Transfer-Encoding : chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n${hidden(t)}`],
  ['a vertical tab before chunked', (t) => `${FIRST}Transfer-Encoding:\x0bchunked\r\n\r\n0\r\n\r\n${hidden(t)}`],
  ['two Transfer-Encoding lines', (t) => `${FIRST}Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n${hidden(t)}`],
  ['Transfer-Encoding folded onto an obs-fold line', (t) => `${FIRST}Transfer-Encoding: identity\r\n chunked\r\n\r\n0\r\n\r\n${hidden(t)}`],
  ['an obs-fold continuation line', (t) => `${FIRST}X-Note: a\r\n b\r\nContent-Length: 0\r\n\r\n${hidden(t)}`],
  ['a chunk size that is not hex', (t) => `${FIRST}Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n${hidden(t)}`],
  ['a negative chunk size', (t) => `${FIRST}Transfer-Encoding: chunked\r\n\r\n-1\r\nabc\r\n0\r\n\r\n${hidden(t)}`],
  ['a chunk size that overflows 64 bits', (t) => `${FIRST}Transfer-Encoding: chunked\r\n\r\n10000000000000003\r\nabc\r\n0\r\n\r\n${hidden(t)}`],
  ['a chunk size with trailing space', (t) => `${FIRST}Transfer-Encoding: chunked\r\n\r\n3 \r\nabc\r\n0\r\n\r\n${hidden(t)}`],
  ['chunk lines ended by bare LF', (t) => `${FIRST}Transfer-Encoding: chunked\r\n\r\n3\nabc\n0\n\n${hidden(t)}`],
  ['chunk data longer than its size', (t) => `${FIRST}Transfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n0\r\n\r\n${hidden(t)}`],
  ['a request ended by bare LF lines', (t) => `GET /public/first HTTP/1.1\nHost: gateway.test\n\n${hidden(t)}`],
  ['one header line ended by a bare LF', (t) => `GET /public/first HTTP/1.1\r\nHost: gateway.test\nContent-Length: 0\r\n\r\n${hidden(t)}`],
  ['a bare CR inside the headers', (t) => `GET /public/first HTTP/1.1\r\nHost: gateway.test\rContent-Length: 0\r\n\r\n${hidden(t)}`],
  ['a space before a header colon', (t) => `GET /public/first HTTP/1.1\r\nHost: gateway.test\r\nContent-Length : 0\r\n\r\n${hidden(t)}`],
  ['a NUL byte in a header value', (t) => `GET /public/first HTTP/1.1\r\nHost: gateway.test\r\nX-Note: a\x00b\r\n\r\n${hidden(t)}`],
];

describe('ambiguous request framing is refused and never yields a second upstream request', () => {
  let upstream: TestUpstream;
  let gw: TestGateway;

  before(async () => {
    upstream = await startUpstream();
    // One upstream connection keeps upstream order = dispatch order, so the barrier below is a real barrier.
    gw = await startTestGateway({
      services: { backend: { instances: [upstream.url], maxConnections: 1 } },
      routes: [{ name: 'open', prefix: '/public', auth: 'public', service: 'backend' }],
    });
  });
  after(async () => {
    // Upstream first: should a request ever be left half-forwarded, cutting it lets the gateway drain.
    await upstream.close();
    await gw.close();
  });

  /** After this resolves, anything the gateway dispatched earlier has reached the upstream. */
  async function barrier(tag: string): Promise<void> {
    const res = await request(`${gw.url}/public/barrier-${tag}`, { headersTimeout: 3_000, bodyTimeout: 3_000 });
    assert.equal(res.statusCode, 200);
    await res.body.dump();
  }

  FRAMING.forEach(([name, payload], i) => {
    it(`${name}: 400 problem, connection closed, nothing smuggled`, { timeout: 10_000 }, async () => {
      const tag = String(i);
      const before = upstream.received.length;
      const { responses } = await rawExchange(gw.port, payload(tag), EXCHANGE_TIMEOUT_MS);
      await barrier(tag);
      assert.equal(responses.length, 1, `expected one answer, got ${responses.map((r) => r.status).join(', ')}`);
      const res = responses[0]!;
      assert.equal(res.status, 400, res.body);
      assert.equal(problemOf(res).code, 'GW_BAD_REQUEST');
      assert.equal(header(res, 'connection'), 'close');
      const reached = upstream.received.slice(before).map((r) => r.url);
      assert.equal(reached.at(-1), `/public/barrier-${tag}`);
      // A body error can surface after the first request was dispatched; a second request never may.
      const others = reached.slice(0, -1);
      assert.ok(others.length <= 1 && others.every((u) => u === '/public/first'), `the upstream received ${JSON.stringify(others)}`);
    });
  });

  it('HTTP/1.0 with Transfer-Encoding: the framing is treated as faulty and nothing after it is read (RFC 9112 6.1)', { timeout: 10_000 }, async () => {
    const before = upstream.received.length;
    const { responses } = await rawExchange(
      gw.port,
      `POST /public/first HTTP/1.0\r\nHost: gateway.test\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n${hidden('h10')}`,
      EXCHANGE_TIMEOUT_MS,
    );
    await barrier('h10');
    const reached = upstream.received.slice(before).map((r) => r.url);
    assert.ok(!reached.some((u) => u.includes('smuggled')), `a request hidden after an HTTP/1.0 chunked body reached the upstream: ${JSON.stringify(reached)}`);
    assert.equal(responses.length, 1);
    assert.equal(responses[0]!.status, 400);
    assert.equal(problemOf(responses[0]!).code, 'GW_BAD_REQUEST');
  });

  it('refuses an absolute-form target naming another host, without calling the upstream', async () => {
    const before = upstream.received.length;
    const { responses } = await rawExchange(gw.port, 'GET http://internal.example/public/x HTTP/1.1\r\nHost: gateway.test\r\nConnection: close\r\n\r\n');
    assert.equal(responses.length, 1);
    assert.equal(responses[0]!.status, 400);
    assert.equal(problemOf(responses[0]!).code, 'GW_BAD_PATH');
    assert.equal(upstream.received.length, before);
  });

  it('refuses a request with two Host lines (RFC 9112 3.2), without calling the upstream', async () => {
    const before = upstream.received.length;
    const { responses } = await rawExchange(gw.port, 'GET /public/x HTTP/1.1\r\nHost: gateway.test\r\nHost: internal.example\r\nConnection: close\r\n\r\n');
    assert.equal(responses.length, 1);
    assert.equal(responses[0]!.status, 400, `two Host lines were answered ${responses[0]!.status}`);
    assert.equal(problemOf(responses[0]!).code, 'GW_BAD_REQUEST');
    assert.equal(upstream.received.length, before);
  });

  for (const [name, head] of [
    ['no Host line in HTTP/1.1', 'GET /public/x HTTP/1.1\r\nConnection: close\r\n\r\n'],
    ['a Host value with a space', 'GET /public/x HTTP/1.1\r\nHost: a b\r\nConnection: close\r\n\r\n'],
    ['a Host value with userinfo', 'GET /public/x HTTP/1.1\r\nHost: user@internal.example\r\nConnection: close\r\n\r\n'],
    ['a Host value with a path', 'GET /public/x HTTP/1.1\r\nHost: gateway.test/admin\r\nConnection: close\r\n\r\n'],
  ] as const) {
    it(`refuses ${name} with the gateway's 400 problem, without calling the upstream`, async () => {
      const before = upstream.received.length;
      const { responses } = await rawExchange(gw.port, head);
      assert.equal(responses.length, 1);
      assert.equal(responses[0]!.status, 400, `answered ${responses[0]!.status}: ${responses[0]!.body}`);
      assert.equal(problemOf(responses[0]!).code, 'GW_BAD_REQUEST');
      assert.equal(upstream.received.length, before);
    });
  }

  it('accepts a Host with a port and an IPv6 literal host', async () => {
    for (const host of ['gateway.test:8090', '[::1]:8090', '127.0.0.1']) {
      const { responses } = await rawExchange(gw.port, `GET /public/host-ok HTTP/1.1\r\nHost: ${host}\r\nConnection: close\r\n\r\n`);
      assert.equal(responses[0]!.status, 200, `Host: ${host} answered ${responses[0]!.status}`);
    }
  });

  it('still serves well-framed pipelined requests, one upstream request each', async () => {
    const before = upstream.received.length;
    const { responses } = await rawExchange(
      gw.port,
      'POST /public/one HTTP/1.1\r\nHost: gateway.test\r\nContent-Length: 5\r\n\r\nhello' +
        'POST /public/two HTTP/1.1\r\nHost: gateway.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nworld\r\n0\r\n\r\n' +
        'GET /public/three HTTP/1.1\r\nHost: gateway.test\r\nConnection: close\r\n\r\n',
    );
    assert.deepEqual(responses.map((r) => r.status), [200, 200, 200]);
    const reached = upstream.received.slice(before);
    assert.deepEqual(reached.map((r) => r.url).sort(), ['/public/one', '/public/three', '/public/two']);
    assert.deepEqual(reached.map((r) => r.bodyBytes).sort(), [0, 5, 5]);
  });
});
