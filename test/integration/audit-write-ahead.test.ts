import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { request } from 'undici';
import { slowSyncs } from '../../src/audit/spool.js';
import { startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { expectProblem, read, send, type Answer } from '../helpers/http.js';
import { until } from '../helpers/poll.js';
import { parseExposition, sampleValue } from '../helpers/prometheus.js';
import { signToken } from '../helpers/tokens.js';
import { startUpstream, type TestUpstream } from '../helpers/upstream.js';

/**
 * Write-ahead audit: on a PHI route (and one with `audit: write-ahead`) the request's access
 * record is appended when it is admitted, and no byte of the answer reaches the client before
 * that record is durable. The spool's commits are slowed here by a test hook (a slow disk): the
 * hook learns which records a commit carries and says when they count as durable.
 */

const PROVIDER = '7c9e6679-7425-40de-944b-e07fc1f90ae7';

/** The request ids of the access records in one commit's bytes. */
function accessIds(data: Buffer): string[] {
  const ids: string[] = [];
  for (const line of data.toString('utf8').split('\n')) {
    if (!line.includes('"type":"api_access"')) continue;
    ids.push((JSON.parse(line) as { request_id: string }).request_id);
  }
  return ids;
}

describe('write-ahead audit on a slow disk', { timeout: 60_000 }, () => {
  let upstream: TestUpstream;
  let gw: TestGateway;
  let spoolDir: string;
  let token: string;
  /** Request ids whose access record the disk has made durable. */
  const durable = new Set<string>();
  /** While set, commits wait for it to resolve. */
  let hold: Promise<void> | null = null;
  /** Every commit that carries this request id's access record fails (other commits pass), until cleared. */
  let failFor: string | null = null;
  /** Each commit is this much slower than the disk. */
  let delayMs = 0;

  before(async () => {
    spoolDir = join(await mkdtemp(join(tmpdir(), 'gw-write-ahead-')), 'spool');
    slowSyncs.set(resolve(spoolDir), async (data) => {
      if (hold !== null) await hold;
      if (delayMs > 0) await new Promise((r) => setTimeout(r, delayMs));
      if (failFor !== null && accessIds(data).includes(failFor)) {
        throw Object.assign(new Error('EIO: i/o error, write'), { code: 'EIO' });
      }
      for (const id of accessIds(data)) durable.add(id);
    });
    upstream = await startUpstream();
    gw = await startTestGateway(
      {
        services: { backend: { instances: [upstream.url] } },
        routes: [
          { name: 'records', service: 'backend', pattern: '/api/records/:id', methods: ['GET'], permission: 'records:read', phi: true },
          { name: 'orders', service: 'backend', path: '/api/orders', methods: ['GET'], audit: 'write-ahead' },
          { name: 'notes', service: 'backend', path: '/api/notes', methods: ['GET'] },
        ],
      },
      // The audit service is away: nothing here depends on delivery.
      { AUDIT_SERVICE_URL: 'http://127.0.0.1:9', AUDIT_SPOOL_DIR: spoolDir },
    );
    token = await signToken({ sub: PROVIDER, role: 'health_provider', claims: { phi_access_level: 'full' } });
  });
  after(async () => {
    await gw?.close();
    await upstream?.close();
    slowSyncs.delete(resolve(spoolDir));
    await rm(join(spoolDir, '..'), { recursive: true, force: true });
  });

  /** Sends a request; when its answer's head arrives, notes whether its access record was durable by then. */
  function sendNoting(path: string, id: string): { answer: Promise<Answer>; durableAtHead: Promise<boolean> } {
    let atHead!: (v: boolean) => void;
    const durableAtHead = new Promise<boolean>((r) => (atHead = r));
    const pending = request(`${gw.url}${path}`, { headers: { authorization: `Bearer ${token}`, 'x-request-id': id }, headersTimeout: 20_000 });
    const answer = pending.then((res) => {
      atHead(durable.has(id));
      return read(res);
    });
    return { answer, durableAtHead };
  }

  for (const [route, path] of [
    ['a PHI route', '/api/records/r1'],
    ['a route with audit: write-ahead', '/api/orders'],
  ] as const) {
    it(`${route}: the upstream is called at once, and the answer waits until the access record is durable`, async () => {
      let release!: () => void;
      hold = new Promise((r) => (release = r));
      const id = `held-${path.length}-${Date.now()}`;
      const before = upstream.received.length;
      const { answer, durableAtHead } = sendNoting(path, id);
      let answered = false;
      void answer.then(() => (answered = true));
      // The commit runs while the upstream call is in flight: the upstream has the request, and answered it.
      await until('the upstream to receive the request', 5_000, async () => (upstream.received.length > before ? true : undefined));
      // A whole exchange on a route without write-ahead audit goes through meanwhile.
      const other = await send(`${gw.url}/api/notes`, { token });
      assert.equal(other.statusCode, 200, 'a route without write-ahead audit does not wait for the disk');
      assert.equal(answered, false, 'the answer reached the client before its access record was durable');
      release();
      hold = null;
      const res = await answer;
      assert.equal(res.statusCode, 200, res.text);
      assert.equal(await durableAtHead, true);
    });
  }

  it('under concurrency with every commit slow: no answer reaches its client before its record is durable, and the wait is in /metrics', async () => {
    delayMs = 25;
    try {
      const sent = Array.from({ length: 40 }, (_, i) => sendNoting(i % 4 === 3 ? '/api/orders' : `/api/records/c${i}`, `concurrent-${i}-${Date.now()}`));
      const answers = await Promise.all(sent.map((s) => s.answer));
      for (const a of answers) assert.equal(a.statusCode, 200, a.text);
      const atHead = await Promise.all(sent.map((s) => s.durableAtHead));
      assert.equal(atHead.filter(Boolean).length, 40, 'answers whose record was durable when their head arrived');
    } finally {
      delayMs = 0;
    }
    const samples = parseExposition((await send(`${gw.url}/metrics`)).text);
    const count = sampleValue(samples, 'api_gateway_audit_durability_wait_seconds_count', {}) ?? 0;
    const sum = sampleValue(samples, 'api_gateway_audit_durability_wait_seconds_sum', {}) ?? 0;
    const quick = sampleValue(samples, 'api_gateway_audit_durability_wait_seconds_bucket', { le: '0.005' }) ?? 0;
    assert.ok(count >= 42, `${count} waits observed`);
    assert.ok(sum > 0.02, `the waits add up to ${sum} s`);
    assert.ok(quick < count, 'some answers waited longer than 5 ms');
  });

  it('a record the disk fails to make durable: the answer becomes 503 GW_AUDIT_UNAVAILABLE, then PHI is refused before the upstream until the disk takes writes again', async () => {
    failFor = `disk-fails-${Date.now()}`;
    const before = upstream.received.length;
    const id = failFor;
    const failed = await send(`${gw.url}/api/records/f1`, { token, headers: { 'x-request-id': id } });
    expectProblem(failed, 503, 'GW_AUDIT_UNAVAILABLE');
    assert.ok(!durable.has(id));
    // The upstream call starts with the write; the failed write may abort it before it arrives.
    const reached = upstream.received.length;
    assert.ok(reached <= before + 1);
    assert.ok(!failed.text.includes('"method"'), 'nothing of the upstream answer reached the client');
    // The spool now refuses new records until a retry succeeds: PHI is refused at the door,
    // without reaching the upstream.
    const refused = await send(`${gw.url}/api/records/f2`, { token });
    expectProblem(refused, 503, 'GW_AUDIT_UNAVAILABLE');
    assert.equal(upstream.received.length, reached, 'a PHI request refused at the door never reaches the upstream');
    // The disk takes writes again.
    failFor = null;
    const served = await until('PHI served again once the disk takes writes', 10_000, async () => {
      const res = await send(`${gw.url}/api/records/f3`, { token });
      return res.statusCode === 200 ? res : undefined;
    }, 100);
    assert.equal(served.statusCode, 200);
  });
});
