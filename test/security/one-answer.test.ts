import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { routesFor, startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { rawExchange } from '../helpers/raw-http.js';
import { startUpstream, type TestUpstream } from '../helpers/upstream.js';

/**
 * RFC 9112 9.6: after the response that ends an exchange (Connection: close, HTTP/1.0, a refused
 * framing), nothing more is written on the connection. Bytes a client sends after such a request
 * (an unframed body, garbage after a refused Transfer-Encoding) are not a second request: the
 * client gets exactly one status line, and the connection closes.
 */
describe('one answer per connection', () => {
  let upstream: TestUpstream;
  let gw: TestGateway;

  before(async () => {
    upstream = await startUpstream();
    gw = await startTestGateway(routesFor(upstream.url, [{ name: 'open', prefix: '/open', auth: 'public' }]));
  });
  after(async () => {
    await gw.close();
    await upstream.close();
  });

  const statusLines = (text: string) => text.match(/^HTTP\/1\.[01] \d{3}/gm) ?? [];

  const cases: Array<[what: string, bytes: string, status: number]> = [
    ['HTTP/1.0 with Transfer-Encoding (refused), then bytes that are not a chunk', 'GET /open/a HTTP/1.0\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\nGARBAGE GARBAGE\r\n\r\n', 400],
    ['two Host lines (refused), then garbage', 'GET /open/b HTTP/1.1\r\nHost: gw\r\nHost: other\r\n\r\nGARBAGE\r\n\r\n', 400],
    ['Connection: close, then a body the request never declared', 'GET /open/c HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\nthis is not http\r\n\r\n', 200],
    ['an HTTP/1.0 request, then more bytes than its Content-Length', 'POST /open/d HTTP/1.0\r\nHost: gw\r\nContent-Length: 2\r\n\r\nabXYZ NOT HTTP\r\n\r\n', 200],
    ['a kept-alive request, then garbage', 'GET /open/e HTTP/1.1\r\nHost: gw\r\n\r\nNOT A REQUEST LINE\r\n\r\n', 200],
  ];
  for (const [what, bytes, status] of cases) {
    it(`${what}: exactly one status line (${status})`, async () => {
      const { text } = await rawExchange(gw.port, bytes);
      assert.deepEqual(statusLines(text), [`HTTP/1.1 ${status}`], text);
    });
  }

  it('a request that is itself malformed still gets its 400', async () => {
    const { text } = await rawExchange(gw.port, 'GET /open/f HTTP/1.1\r\nHost gw\r\n\r\n');
    assert.deepEqual(statusLines(text), ['HTTP/1.1 400'], text);
  });
});
