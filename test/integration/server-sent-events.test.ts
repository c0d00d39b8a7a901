import assert from 'node:assert/strict';
import { once } from 'node:events';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { after, before, describe, it } from 'node:test';
import { request } from 'undici';
import { routesFor, startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { until } from '../helpers/poll.js';
import { signToken } from '../helpers/tokens.js';
import { startUpstream, type TestUpstream } from '../helpers/upstream.js';

/**
 * Server-sent events and other long answers: the route's deadline is for the response head only;
 * after it, a stream runs as long as it sends, each event reaching the client as it is sent (no
 * buffering in the gateway), cut only when it goes quiet longer than the route's
 * streamIdleTimeoutMs; a client that leaves ends the upstream request at once.
 */

const EVENTS = 30;
const EVERY_MS = 1_000;

describe('server-sent events through the gateway', () => {
  let upstream: TestUpstream;
  let gw: TestGateway;
  /** Upstream requests still open, by path. */
  const open = new Map<string, IncomingMessage>();

  before(async () => {
    upstream = await startUpstream((req: IncomingMessage, res: ServerResponse) => {
      open.set(req.url!, req);
      req.once('close', () => open.delete(req.url!));
      res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-store' });
      res.flushHeaders();
      if (req.url!.startsWith('/events/stall')) {
        res.write('data: one\n\n');
        return; // and nothing more: the gateway's idle limit ends it
      }
      let n = 0;
      const tick = () => {
        // Each event carries the moment it was sent (the test and the upstream share a clock).
        res.write(`id: ${n}\ndata: ${performance.now().toFixed(3)}\n\n`);
        if (++n === EVENTS) res.end();
      };
      tick();
      const timer = setInterval(() => (n < EVENTS && !res.destroyed ? tick() : clearInterval(timer)), EVERY_MS);
      res.once('close', () => clearInterval(timer));
    });
    gw = await startTestGateway(
      routesFor(upstream.url, [
        // A 5 s response deadline: for the head. The stream then runs six times as long.
        { name: 'events', prefix: '/events', timeoutMs: 5_000, streamIdleTimeoutMs: 3_000 },
        { name: 'stalling', prefix: '/events/stall', timeoutMs: 5_000, streamIdleTimeoutMs: 400 },
      ]),
    );
  });
  after(async () => {
    await gw?.close();
    await upstream?.close();
  });

  it(`an event every second for ${(EVENTS * EVERY_MS) / 1000} s: each arrives as it is sent, past the 5 s response deadline`, { timeout: 90_000 }, async () => {
    const token = await signToken({ sub: 'sse-reader' });
    const res = await request(`${gw.url}/events/long`, { headers: { authorization: `Bearer ${token}`, accept: 'text/event-stream' }, bodyTimeout: 10_000 });
    assert.equal(res.statusCode, 200);
    assert.match(String(res.headers['content-type']), /text\/event-stream/);
    const delays: number[] = [];
    let text = '';
    for await (const chunk of res.body) {
      const arrived = performance.now();
      text += (chunk as Buffer).toString();
      let end: number;
      while ((end = text.indexOf('\n\n')) !== -1) {
        const event = text.slice(0, end);
        text = text.slice(end + 2);
        const sent = Number(/^data: (.*)$/m.exec(event)![1]);
        delays.push(arrived - sent);
      }
    }
    assert.equal(delays.length, EVENTS, 'every event arrived, and the stream ended when the upstream ended it');
    const sorted = [...delays].sort((a, b) => a - b);
    const median = sorted[Math.floor(sorted.length / 2)]!;
    // Buffering would hold events back by whole seconds (they are a second apart) or until the end.
    // The median is held to 50 ms; a single late one to half the gap between events, which a busy
    // machine's scheduling can reach but buffering always exceeds.
    assert.ok(median < 50, `median delay ${median.toFixed(1)} ms (all: ${delays.map((d) => d.toFixed(0)).join(' ')})`);
    assert.ok(sorted.at(-1)! < EVERY_MS / 2, `slowest event ${sorted.at(-1)!.toFixed(1)} ms`);
  });

  it('a stream quiet for longer than the route\'s streamIdleTimeoutMs is ended', async () => {
    const res = await request(`${gw.url}/events/stall/1`, { headers: { authorization: `Bearer ${await signToken({ sub: 'sse-stall' })}` } });
    assert.equal(res.statusCode, 200);
    let text = '';
    await assert.rejects(
      (async () => {
        for await (const chunk of res.body) text += (chunk as Buffer).toString();
      })(),
      'the stream is cut, not ended as if complete',
    );
    assert.equal(text, 'data: one\n\n');
    await until('the upstream request ended', 2_000, async () => (open.has('/events/stall/1') ? undefined : true), 10);
  });

  it('a client that goes away ends the upstream request at once', async () => {
    const controller = new AbortController();
    const res = await request(`${gw.url}/events/leaving`, { headers: { authorization: `Bearer ${await signToken({ sub: 'sse-leaver' })}` }, signal: controller.signal });
    assert.equal(res.statusCode, 200);
    const first = once(res.body, 'data');
    await first;
    assert.ok(open.has('/events/leaving'), 'the upstream request is open while the client reads');
    controller.abort();
    await until('the upstream request closed after the client left', 2_000, async () => (open.has('/events/leaving') ? undefined : true), 5);
  });
});
