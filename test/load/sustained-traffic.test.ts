import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { Agent, request } from 'undici';
import { routesFor, startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { signToken } from '../helpers/tokens.js';
import { startUpstream, type TestUpstream } from '../helpers/upstream.js';

/** Bounded in count: the suite stops by itself whatever the machine's speed. */
const REQUESTS = 5_000;
const CONCURRENCY = 64;

describe('sustained concurrent traffic', () => {
  let upstream: TestUpstream;
  let gw: TestGateway;
  let client: Agent;

  before(async () => {
    upstream = await startUpstream();
    gw = await startTestGateway(
      routesFor(upstream.url, [
        { name: 'open', prefix: '/open', auth: 'public' },
        { name: 'closed', prefix: '/closed', auth: 'required' },
      ]),
      { LOG_LEVEL: 'WARN' },
    );
    client = new Agent({ connections: CONCURRENCY });
  });
  after(async () => {
    await client.close();
    await gw.close();
    await upstream.close();
  });

  async function run(path: string, headers: Record<string, string>): Promise<Map<number, number>> {
    const statuses = new Map<number, number>();
    let next = 0;
    const worker = async () => {
      while (next < REQUESTS) {
        const i = next++;
        const res = await request(`${gw.url}${path}/${i}?n=${i}`, { dispatcher: client, headers });
        const body = (await res.body.json()) as { url: string };
        assert.equal(body.url, `${path}/${i}?n=${i}`, 'each response belongs to its own request');
        statuses.set(res.statusCode, (statuses.get(res.statusCode) ?? 0) + 1);
      }
    };
    await Promise.all(Array.from({ length: CONCURRENCY }, worker));
    return statuses;
  }

  it(`proxies ${REQUESTS} public requests over ${CONCURRENCY} connections with no failure or mix-up`, async () => {
    const before = upstream.received.length;
    const statuses = await run('/open', {});
    assert.deepEqual([...statuses], [[200, REQUESTS]]);
    assert.equal(upstream.received.length - before, REQUESTS);
  });

  it(`verifies ${REQUESTS} bearer tokens under concurrency and forwards each caller's identity`, async () => {
    const token = await signToken({ sub: 'load-user', role: 'care_staff' });
    const before = upstream.received.length;
    const statuses = await run('/closed', { authorization: `Bearer ${token}` });
    assert.deepEqual([...statuses], [[200, REQUESTS]]);
    const seen = upstream.received.slice(before);
    assert.ok(seen.every((r) => r.headers['x-user-id'] === 'load-user'));
  });
});
