import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { request } from 'undici';
import { routesFor, type TestGateway, startTestGateway } from '../helpers/gateway.js';
import { startUpstream, type TestUpstream } from '../helpers/upstream.js';
import { header, problemOf, rawExchange } from '../helpers/raw-http.js';
import { accessLine, UUID, waitForLog } from './support.js';

describe('X-Request-ID', () => {
  let upstream: TestUpstream;
  let gw: TestGateway;

  before(async () => {
    // The upstream answers with an id of its own, which must not replace the gateway's.
    upstream = await startUpstream((req, res, received) => {
      req.resume();
      req.on('end', () => {
        res.writeHead(200, { 'content-type': 'application/json', 'x-request-id': 'upstream-made-this-up' });
        res.end(JSON.stringify({ url: received.url }));
      });
    });
    gw = await startTestGateway(routesFor(upstream.url, [{ name: 'open', prefix: '/public', auth: 'public' }]));
  });
  after(async () => {
    await gw.close();
    await upstream.close();
  });

  /** The id as the client, the upstream and the access log each saw it. */
  async function idsFor(headers: Record<string, string | string[]>) {
    const before = upstream.received.length;
    const res = await request(`${gw.url}/public/trace`, { headers });
    assert.equal(res.statusCode, 200);
    await res.body.dump();
    assert.equal(upstream.received.length, before + 1);
    const inResponse = res.headers['x-request-id'];
    assert.equal(typeof inResponse, 'string');
    const line = await accessLine(gw, inResponse as string);
    return { response: inResponse as string, upstream: upstream.received.at(-1)!.headers['x-request-id'], log: line.request_id };
  }

  for (const good of ['client-req-1', 'a', '0f8fad5b-d9cb-469f-a165-70867728950e', 'trace:span.01_x-y', `a${'b'.repeat(127)}`]) {
    it(`keeps a well-formed id end to end (${good.length > 40 ? `${good.length} chars` : good})`, async () => {
      const ids = await idsFor({ 'x-request-id': good });
      assert.deepEqual(ids, { response: good, upstream: good, log: good });
    });
  }

  const bad: Array<[string, string | string[]]> = [
    ['encoded CR/LF', 'abc%0D%0AX-Injected: yes'],
    ['a space', 'abc def'],
    ['129 characters', `a${'b'.repeat(128)}`],
    ['a list in one line', 'first-id, second-id'],
    ['two header lines', ['first-id', 'second-id']],
    ['a JSON breaker', 'abc"},"level":"ERROR'],
    // Not hex, so no generated UUID in the log can contain it by chance.
    ['a leading dash', '-xyz'],
    ['a non-ASCII byte', 'caf\u00e9'],
    ['a tab', 'abc\tdef'],
  ];
  for (const [what, value] of bad) {
    it(`replaces an id with ${what} by a fresh UUID, the same one everywhere`, async () => {
      const ids = await idsFor({ 'x-request-id': value });
      assert.match(ids.response, UUID);
      assert.deepEqual(ids, { response: ids.response, upstream: ids.response, log: ids.response });
      const sent = Array.isArray(value) ? value : [value];
      for (const v of sent) assert.ok(!JSON.stringify(gw.logs).includes(v), `the refused id ${JSON.stringify(v)} was logged`);
    });
  }

  it('a raw CR/LF injection attempt is refused with a generated id, and the injected text is not logged', async () => {
    for (const injected of ['abc\rX-Injected: cr-only', 'abc\nX-Injected: lf-only', 'abc\r\n X-Injected: folded']) {
      const before = upstream.received.length;
      const { responses } = await rawExchange(gw.port, `GET /public/trace HTTP/1.1\r\nHost: gateway.test\r\nX-Request-ID: ${injected}\r\nConnection: close\r\n\r\n`);
      assert.equal(responses.length, 1);
      const res = responses[0]!;
      assert.equal(res.status, 400);
      const id = header(res, 'x-request-id')!;
      assert.match(id, UUID);
      assert.equal(problemOf(res).request_id, id);
      const line = await waitForLog(gw, (l) => l.request_id === id);
      assert.equal(line.error_code, 'GW_BAD_REQUEST');
      assert.equal(upstream.received.length, before);
      assert.ok(!JSON.stringify(gw.logs).includes('X-Injected'));
    }
  });

  it('answers the gateway\'s own errors with the same id rules', async () => {
    const kept = await request(`${gw.url}/nowhere`, { headers: { 'x-request-id': 'client-404' } });
    assert.equal(kept.statusCode, 404);
    assert.equal(kept.headers['x-request-id'], 'client-404');
    assert.equal(((await kept.body.json()) as { request_id: string }).request_id, 'client-404');

    const replaced = await request(`${gw.url}/nowhere`, { headers: { 'x-request-id': 'bad id' } });
    assert.equal(replaced.statusCode, 404);
    const id = replaced.headers['x-request-id'] as string;
    assert.match(id, UUID);
    assert.equal(((await replaced.body.json()) as { request_id: string }).request_id, id);
    assert.equal((await accessLine(gw, id)).error_code, 'GW_ROUTE_NOT_FOUND');
  });

  it('gives every request without an id a different one', async () => {
    const seen = new Set<string>();
    for (let i = 0; i < 20; i++) {
      const res = await request(`${gw.url}/public/trace`);
      await res.body.dump();
      seen.add(res.headers['x-request-id'] as string);
    }
    assert.equal(seen.size, 20);
    for (const id of seen) assert.match(id, UUID);
  });
});
