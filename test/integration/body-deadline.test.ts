import assert from 'node:assert/strict';
import { connect } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { request } from 'undici';
import { routesFor, startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { read } from '../helpers/http.js';
import { parseResponses } from '../helpers/raw-http.js';
import { startUpstream, type TestUpstream } from '../helpers/upstream.js';

/**
 * Every body the gateway waits for has a deadline: a body it reads itself (login, refresh, logout,
 * revoke) must arrive whole within the route's body timeout, and a proxied upload may not pause
 * longer than it. Past it: 408 GW_REQUEST_TIMEOUT and the connection closes.
 */

/**
 * Sends `head`, then each of `chunks` after its delay, and collects what comes back until the
 * gateway closes the connection. The generous ceiling turns a hang into a failure; it is never
 * the expected path.
 */
function slowClient(port: number, head: string, chunks: Array<[delayMs: number, bytes: string]>): Promise<{ text: string; sentAll: boolean }> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, '127.0.0.1');
    const received: Buffer[] = [];
    let sentAll = false;
    let closed = false;
    const ceiling = setTimeout(() => {
      socket.destroy();
      reject(new Error(`no answer and no close: ${Buffer.concat(received).toString()}`));
    }, 20_000);
    socket.on('data', (d: Buffer) => received.push(d));
    socket.on('error', () => undefined);
    socket.on('close', () => {
      closed = true;
      clearTimeout(ceiling);
      resolve({ text: Buffer.concat(received).toString('latin1'), sentAll });
    });
    socket.write(head);
    const next = (i: number) => {
      if (closed) return;
      if (i === chunks.length) {
        sentAll = true;
        return;
      }
      const [delay, bytes] = chunks[i]!;
      setTimeout(() => {
        if (!closed) socket.write(bytes);
        next(i + 1);
      }, delay);
    };
    next(0);
  });
}

const loginHead = (length: number) => `POST /login HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\nContent-Length: ${length}\r\n\r\n`;
const uploadHead = (length: number) => `POST /upload/x HTTP/1.1\r\nHost: gw\r\nContent-Type: application/octet-stream\r\nContent-Length: ${length}\r\n\r\n`;

function expect408(text: string): void {
  const [first, ...more] = parseResponses(Buffer.from(text, 'latin1'));
  assert.ok(first !== undefined, `an answer: ${text}`);
  assert.equal(first.status, 408, text);
  assert.equal(JSON.parse(first.body).code, 'GW_REQUEST_TIMEOUT');
  assert.equal(first.headers.get('connection')?.[0], 'close');
  assert.equal(more.length, 0);
}

describe('body deadlines', () => {
  let upstream: TestUpstream;
  let gw: TestGateway;
  /** The upload route's upstream reads nothing for a while: the gateway then waits on it, not on the client. */
  let readLate = false;

  before(async () => {
    upstream = await startUpstream((req, res, entry) => {
      const drain = () => {
        req.on('data', (c: Buffer) => (entry.bodyBytes += c.length));
        req.on('end', () => res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ bytes: entry.bodyBytes })));
      };
      if (readLate) setTimeout(drain, 1_500);
      else drain();
    });
    gw = await startTestGateway(
      routesFor(upstream.url, [
        { name: 'login', path: '/login', methods: ['POST'], auth: 'public', action: 'login', bodyTimeoutMs: 400 },
        { name: 'upload', prefix: '/upload', methods: ['POST'], auth: 'public', bodyTimeoutMs: 400, maxBodyBytes: 64 * 1024 * 1024 },
      ]),
    );
  });
  after(async () => {
    await gw.close();
    await upstream.close();
  });

  it('a login that declares a body and never sends it is answered 408 and closed; the auth service sees nothing', async () => {
    const before = upstream.received.length;
    const { text, sentAll } = await slowClient(gw.port, loginHead(100), [[0, '{"email":']]);
    expect408(text);
    assert.ok(sentAll);
    assert.equal(upstream.received.length, before);
  });

  it('a login body that trickles in, a byte at a time, is cut at the deadline, however steadily it comes', async () => {
    const before = upstream.received.length;
    const body = JSON.stringify({ email: 'provider@hospital.com', password: 'x'.repeat(40) });
    const { text, sentAll } = await slowClient(gw.port, loginHead(body.length), [...body].map((c): [number, string] => [100, c]));
    expect408(text);
    assert.equal(sentAll, false, 'answered before the client was done');
    assert.equal(upstream.received.length, before);
  });

  it('an upload that stops is cut once it has paused longer than the body timeout', async () => {
    const { text } = await slowClient(gw.port, uploadHead(1_000), [[0, 'x'.repeat(100)]]);
    expect408(text);
  });

  it('an upload that pauses too long between chunks is cut; one that keeps coming within the timeout passes', async () => {
    expect408((await slowClient(gw.port, uploadHead(300), [[0, 'a'.repeat(100)], [900, 'b'.repeat(100)], [0, 'c'.repeat(100)]])).text);
    const steady = await slowClient(gw.port, `${uploadHead(300).replace('HTTP/1.1\r\n', 'HTTP/1.1\r\nConnection: close\r\n')}`, [
      [0, 'a'.repeat(100)],
      [100, 'b'.repeat(100)],
      [100, 'c'.repeat(100)],
    ]);
    const [answer] = parseResponses(Buffer.from(steady.text, 'latin1'));
    assert.equal(answer?.status, 200, steady.text);
    assert.deepEqual(JSON.parse(answer!.body), { bytes: 300 });
  });

  it('an upload held back by a slow upstream is not the client pausing: it goes through', async () => {
    readLate = true;
    try {
      const size = 32 * 1024 * 1024;
      const res = await read(request(`${gw.url}/upload/big`, { method: 'POST', body: Buffer.alloc(size, 1), headers: { 'content-type': 'application/octet-stream' } }));
      assert.equal(res.statusCode, 200, res.text);
      assert.deepEqual(JSON.parse(res.text), { bytes: size });
    } finally {
      readLate = false;
    }
  });
});
