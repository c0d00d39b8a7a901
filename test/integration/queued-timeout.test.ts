import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { request } from 'undici';
import { startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { expectProblem, read } from '../helpers/http.js';
import { startUpstream, type TestUpstream } from '../helpers/upstream.js';

const TIMEOUT_MS = 200;

describe('route timeout for a request waiting on a busy upstream pool', () => {
  let upstream: TestUpstream;
  let gw: TestGateway;
  let release!: () => void;
  const released = new Promise<void>((resolve) => (release = resolve));
  let firstArrived!: () => void;
  const arrived = new Promise<void>((resolve) => (firstArrived = resolve));

  before(async () => {
    upstream = await startUpstream(async (_req, res) => {
      firstArrived();
      await released;
      res.end('late');
    });
    gw = await startTestGateway({
      // One connection: the second request waits in the pool and is never written upstream.
      services: { backend: { instances: [upstream.url], maxConnections: 1 } },
      routes: [
        { name: 'hold', path: '/hold', service: 'backend', auth: 'public', timeoutMs: 10_000 },
        { name: 'quick', path: '/quick', service: 'backend', auth: 'public', timeoutMs: TIMEOUT_MS },
      ],
    });
  });
  after(async () => {
    release();
    await gw.close();
    await upstream.close();
  });

  it('answers 504 when the route timeout passes while the request is still queued', { timeout: 10_000 }, async () => {
    const holding = read(request(`${gw.url}/hold`));
    await arrived;
    const started = performance.now();
    const res = await read(request(`${gw.url}/quick`));
    const elapsed = performance.now() - started;
    expectProblem(res, 504, 'GW_UPSTREAM_TIMEOUT');
    assert.ok(elapsed < TIMEOUT_MS + 800, `answered after ${elapsed.toFixed(0)} ms`);
    assert.deepEqual(
      upstream.received.map((r) => r.url),
      ['/hold'],
      'the queued request never reached the upstream',
    );
    release();
    assert.equal((await holding).statusCode, 200);
    // The abandoned request must not be sent once the connection frees up.
    const after = await read(request(`${gw.url}/hold`));
    assert.equal(after.statusCode, 200);
    assert.deepEqual(upstream.received.map((r) => r.url), ['/hold', '/hold']);
  });
});
