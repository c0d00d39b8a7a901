import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { request } from 'undici';
import { routesFor, type TestGateway, startTestGateway } from '../helpers/gateway.js';
import { startUpstream, type TestUpstream } from '../helpers/upstream.js';
import { header, rawExchange } from '../helpers/raw-http.js';

// undici refuses to send most of these fields, so requests carrying them are written by hand.
function get(path: string, lines: string[]): string {
  return `GET ${path} HTTP/1.1\r\nHost: gateway.test\r\n${lines.map((l) => `${l}\r\n`).join('')}\r\n`;
}

describe('hop-by-hop request fields stay at the gateway', () => {
  let upstream: TestUpstream;
  let gw: TestGateway;

  before(async () => {
    upstream = await startUpstream();
    gw = await startTestGateway(routesFor(upstream.url, [{ name: 'open', prefix: '/public', auth: 'public' }]));
  });
  after(async () => {
    await gw.close();
    await upstream.close();
  });

  async function forwarded(path: string, lines: string[]) {
    const before = upstream.received.length;
    const { responses } = await rawExchange(gw.port, get(path, lines));
    assert.equal(responses.length, 1);
    assert.equal(responses[0]!.status, 200, responses[0]!.body);
    assert.equal(upstream.received.length, before + 1);
    return upstream.received.at(-1)!;
  }

  it('drops the RFC 9110 connection-specific fields and keeps end-to-end ones', async () => {
    const seen = await forwarded('/public/hop', [
      'Connection: close',
      'Keep-Alive: timeout=600, max=1000',
      'TE: trailers, deflate',
      'Trailer: X-Checksum',
      'Proxy-Authorization: Basic cHJveHk6cHJveHktcGFzcw==',
      'Proxy-Connection: keep-alive',
      'X-End-To-End: kept',
    ]);
    for (const name of ['keep-alive', 'te', 'trailer', 'proxy-authorization', 'proxy-connection']) {
      assert.equal(seen.headers[name], undefined, `${name} reached the upstream`);
    }
    // The upstream connection is the gateway's own, so its Connection field is the pool's, never the client's.
    assert.notEqual(seen.headers.connection, 'close');
    assert.equal(seen.headers['x-end-to-end'], 'kept');
    assert.ok(!seen.rawHeaders.join('\n').includes('cHJveHk6cHJveHktcGFzcw=='), 'proxy credentials reached the upstream');
  });

  it('drops Upgrade, and a request asking for one is proxied as plain HTTP', async () => {
    const seen = await forwarded('/public/ws', ['Connection: Upgrade, close', 'Upgrade: websocket', 'Sec-WebSocket-Version: 13']);
    assert.equal(seen.headers.upgrade, undefined);
    assert.ok(!/upgrade/i.test(String(seen.headers.connection)));
  });

  it('drops every field the client names in Connection, across several Connection lines and in any case', async () => {
    const seen = await forwarded('/public/named', [
      'Connection: keep-alive, X-Secret-Hop',
      'connection: x-other-HOP , close',
      'X-Secret-Hop: hop-secret-1',
      'X-Other-Hop: hop-secret-2',
      'X-End-To-End: kept',
    ]);
    assert.equal(seen.headers['x-secret-hop'], undefined);
    assert.equal(seen.headers['x-other-hop'], undefined);
    assert.ok(!seen.rawHeaders.some((v) => v.startsWith('hop-secret')), 'a Connection-named field reached the upstream');
    assert.equal(seen.headers['x-end-to-end'], 'kept');
  });

  it('keeps the request framing intact when the client names Content-Length in Connection', async () => {
    const before = upstream.received.length;
    const { responses } = await rawExchange(
      gw.port,
      'POST /public/named-length HTTP/1.1\r\nHost: gateway.test\r\nConnection: close, Content-Length\r\nContent-Length: 5\r\n\r\nhello',
    );
    assert.equal(responses[0]!.status, 200);
    assert.equal(upstream.received.length, before + 1);
    assert.equal(upstream.received.at(-1)!.bodyBytes, 5);
  });

  it('passes an upload sent with Expect: 100-continue on to the upstream', async () => {
    // curl adds Expect: 100-continue to large uploads; Node has already answered it on the client hop.
    const before = upstream.received.length;
    const { responses } = await rawExchange(
      gw.port,
      'POST /public/upload HTTP/1.1\r\nHost: gateway.test\r\nContent-Length: 5\r\nExpect: 100-continue\r\nConnection: close\r\n\r\nhello',
    );
    const final = responses.filter((r) => r.status >= 200);
    assert.equal(final.length, 1);
    assert.equal(final[0]!.status, 200, `the upload was answered ${final[0]!.status}: ${final[0]!.body}`);
    assert.equal(upstream.received.length, before + 1);
    assert.equal(upstream.received.at(-1)!.bodyBytes, 5);
    assert.equal(upstream.received.at(-1)!.headers.expect, undefined);
  });
});

describe('hop-by-hop response fields stay at the gateway', () => {
  let upstream: TestUpstream;
  let gw: TestGateway;

  before(async () => {
    upstream = await startUpstream((_req, res) => {
      res.writeHead(200, {
        'content-type': 'text/plain',
        connection: 'keep-alive, X-Internal-Hop, x-debug-HOST',
        'keep-alive': 'timeout=999, max=7',
        'x-internal-hop': 'internal-secret-1',
        'x-debug-host': 'internal-secret-2',
        'proxy-authenticate': 'Basic realm="internal"',
        'proxy-connection': 'keep-alive',
        upgrade: 'h2c',
        trailer: 'x-checksum',
        'x-end-to-end': 'kept',
      });
      res.addTrailers({ 'x-checksum': 'internal-secret-3' });
      res.end('body');
    });
    gw = await startTestGateway(routesFor(upstream.url, [{ name: 'open', prefix: '/public', auth: 'public' }]));
  });
  after(async () => {
    await gw.close();
    await upstream.close();
  });

  it('drops them on the way to the client, and the upstream connection options are not the client\'s', async () => {
    const { responses, text } = await rawExchange(gw.port, get('/public/res', ['Connection: close']));
    assert.equal(responses.length, 1);
    const res = responses[0]!;
    assert.equal(res.status, 200);
    assert.equal(res.body, 'body');
    for (const name of ['x-internal-hop', 'x-debug-host', 'proxy-authenticate', 'proxy-connection', 'upgrade', 'trailer', 'keep-alive']) {
      assert.equal(header(res, name), undefined, `${name} reached the client`);
    }
    assert.equal(header(res, 'connection'), 'close');
    assert.equal(header(res, 'x-end-to-end'), 'kept');
    assert.ok(!text.includes('internal-secret'), 'an upstream hop-by-hop value reached the client');
    assert.ok(!text.includes('timeout=999'));
  });

  it('keeps the client connection under the gateway\'s own keep-alive policy', async () => {
    const res = await request(`${gw.url}/public/res`);
    assert.equal(res.statusCode, 200);
    assert.equal(await res.body.text(), 'body');
    assert.equal(res.headers['x-internal-hop'], undefined);
    assert.notEqual(res.headers['keep-alive'], 'timeout=999, max=7');
    assert.deepEqual(res.trailers, {});
  });
});
