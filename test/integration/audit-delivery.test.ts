import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { createServer } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { after, before, describe, it } from 'node:test';
import { Pool } from 'undici';
import { close, listen } from '../../dev/stand-ins/http-util.js';
import { startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { send } from '../helpers/http.js';
import { until } from '../helpers/poll.js';
import { signToken } from '../helpers/tokens.js';
import { startUpstream, type TestUpstream } from '../helpers/upstream.js';

/**
 * How the audit trail (src/audit/audit-trail.ts) treats the audit service's answers:
 * - 404 and 401 (a wrong path, missing credentials) are outages: the events stay in the spool,
 *   in order, and are delivered once the service takes them;
 * - 400 and 422 (this content is invalid) set the batch aside in <spool>/rejected/ and delivery
 *   goes on with the next events;
 * - 413 (too large) halves the batch until it fits: every event arrives.
 */

const PROVIDER = '7c9e6679-7425-40de-944b-e07fc1f90ae7';

interface AuditEvent {
  event_id: string;
  request_id: string;
  [key: string]: unknown;
}

interface Post {
  requestIds: string[];
  status: number;
}

/** An audit service whose answer to each POST the test decides; it records every POST and the events it accepted. */
interface AuditStandIn {
  url: string;
  /** Each POST of events that was answered, in order, with what it carried and the status it got. */
  posts: Post[];
  /** POSTs that arrived (answered or not yet). */
  arrivals: number;
  /** The events of every POST answered 2xx, in order. */
  accepted: AuditEvent[];
  /** The status for a batch; may wait before deciding. */
  respond: (events: AuditEvent[]) => number | Promise<number>;
  close(): Promise<void>;
}

async function startAuditStandIn(respond: AuditStandIn['respond']): Promise<AuditStandIn> {
  const server = createServer((req, res) => {
    void (async () => {
      const chunks: Buffer[] = [];
      for await (const chunk of req) chunks.push(chunk as Buffer);
      if (req.method !== 'POST' || req.url !== '/api/v1/audit/events') {
        res.writeHead(404).end();
        return;
      }
      standIn.arrivals++;
      const events = (JSON.parse(Buffer.concat(chunks).toString('utf8')) as { events: AuditEvent[] }).events;
      const status = await standIn.respond(events);
      standIn.posts.push({ requestIds: events.map((e) => e.request_id), status });
      if (status >= 200 && status < 300) standIn.accepted.push(...events);
      const body = JSON.stringify(status < 300 ? { accepted: events.length } : { error: `answered ${status}` });
      res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) }).end(body);
    })().catch(() => res.destroy());
  });
  const standIn: AuditStandIn = {
    url: '',
    posts: [],
    arrivals: 0,
    accepted: [],
    respond,
    close: () => close(server),
  };
  standIn.url = `http://127.0.0.1:${await listen(server, 0)}`;
  return standIn;
}

function metric(text: string, name: string): number {
  const m = new RegExp(`^${name}(?:\\{[^}]*\\})? (\\S+)$`, 'm').exec(text);
  assert.ok(m !== null, `no ${name} in /metrics`);
  return Number(m[1]);
}

interface AuditCounters {
  delivered: number;
  rejected: number;
  failures: number;
  spoolBytes: number;
}

async function counters(gw: TestGateway): Promise<AuditCounters> {
  const res = await send(`${gw.url}/metrics`);
  assert.equal(res.statusCode, 200);
  return {
    delivered: metric(res.text, 'api_gateway_audit_events_delivered_total'),
    rejected: metric(res.text, 'api_gateway_audit_events_rejected_total'),
    failures: metric(res.text, 'api_gateway_audit_delivery_failures_total'),
    spoolBytes: metric(res.text, 'api_gateway_audit_spool_bytes'),
  };
}

async function auditHealth(gw: TestGateway): Promise<{ statusCode: number; audit: { status: string; detail: string } | undefined }> {
  const res = await send(`${gw.url}/health`);
  return { statusCode: res.statusCode, audit: (JSON.parse(res.text) as { audit?: { status: string; detail: string } }).audit };
}

/** The set-aside batches: every line of every file in <spool>/rejected/, parsed. */
async function rejectedEvents(spoolDir: string): Promise<AuditEvent[]> {
  const dir = join(spoolDir, 'rejected');
  if (!existsSync(dir)) return [];
  const out: AuditEvent[] = [];
  for (const name of (await readdir(dir)).sort()) {
    assert.match(name, /\.jsonl$/);
    for (const line of (await readFile(join(dir, name), 'utf8')).split('\n')) if (line !== '') out.push(JSON.parse(line) as AuditEvent);
  }
  return out;
}

describe('audit delivery and the audit service answers', { timeout: 60_000 }, () => {
  let upstream: TestUpstream;
  let token: string;
  const folders: string[] = [];

  before(async () => {
    upstream = await startUpstream();
    token = await signToken({ sub: PROVIDER, role: 'health_provider', claims: { phi_access_level: 'full' } });
  });
  after(async () => {
    await upstream.close();
    for (const dir of folders) await rm(dir, { recursive: true, force: true });
  });

  /** A gateway with one authenticated route (every request to it is audited) and its own spool folder. */
  async function gateway(audit: AuditStandIn): Promise<{ gw: TestGateway; spoolDir: string }> {
    const dir = await mkdtemp(join(tmpdir(), 'gw-audit-delivery-'));
    folders.push(dir);
    const spoolDir = join(dir, 'spool');
    const gw = await startTestGateway(
      {
        services: { backend: { instances: [upstream.url], healthCheck: false } },
        routes: [{ name: 'records', service: 'backend', pattern: '/api/records/:id', methods: ['GET'], permission: 'records:read' }],
      },
      { AUDIT_SERVICE_URL: audit.url, AUDIT_SPOOL_DIR: spoolDir, AUDIT_REQUEST_TIMEOUT_MS: '2000', HEALTH_CACHE_MS: '0' },
    );
    return { gw, spoolDir };
  }

  async function audited(gw: TestGateway, requestId: string): Promise<void> {
    const res = await send(`${gw.url}/api/records/${requestId}`, { token, headers: { 'x-request-id': requestId } });
    assert.equal(res.statusCode, 200, `${requestId}: ${res.text}`);
  }

  /** Fails at once if anything was set aside: a batch the test expects kept or delivered was dropped from the queue. */
  async function nothingSetAside(gw: TestGateway, spoolDir: string): Promise<void> {
    const aside = await rejectedEvents(spoolDir);
    assert.deepEqual(
      aside.map((e) => e.request_id),
      [],
      `events were set aside as invalid (rejected_total ${(await counters(gw)).rejected}) instead of being kept for delivery`,
    );
  }

  for (const status of [404, 401]) {
    it(`${status}: the events stay in the spool (backlog, nothing delivered, /health audit degraded) and are delivered once the service answers 202`, { timeout: 20_000 }, async () => {
      const audit = await startAuditStandIn(() => status);
      const { gw, spoolDir } = await gateway(audit);
      try {
        const ids = [0, 1, 2].map((i) => `outage-${status}-${i}`);
        for (const id of ids) await audited(gw, id);

        // The same events are offered again: an answer did not drop them.
        await until(`all three events offered again after a ${status}`, 5_000, async () => {
          await nothingSetAside(gw, spoolDir);
          const last = audit.posts.at(-1);
          return audit.posts.length >= 2 && last !== undefined && ids.every((id) => last.requestIds.includes(id)) ? true : undefined;
        });
        // Each retry starts with the events of the one before, in order (it may add what arrived since).
        for (let i = 1; i < audit.posts.length; i++) {
          const before = audit.posts[i - 1]!.requestIds;
          assert.deepEqual(audit.posts[i]!.requestIds.slice(0, before.length), before, `POST ${i + 1} starts with the events of POST ${i}`);
        }
        assert.deepEqual(audit.posts.at(-1)!.requestIds, ids);
        assert.ok(audit.posts.every((p) => p.status === status));

        const during = await counters(gw);
        assert.ok(during.spoolBytes > 0, `the events wait in the spool: ${JSON.stringify(during)}`);
        assert.equal(during.delivered, 0, `nothing delivered: ${JSON.stringify(during)}`);
        assert.equal(during.rejected, 0, `nothing set aside: ${JSON.stringify(during)}`);
        assert.ok(during.failures >= 2, `failed deliveries counted: ${JSON.stringify(during)}`);
        const h = await auditHealth(gw);
        assert.equal(h.statusCode, 200);
        assert.equal(h.audit?.status, 'degraded', `audit while the service answers ${status}: ${JSON.stringify(h.audit)}`);
        assert.equal(existsSync(join(spoolDir, 'rejected')), false, 'no rejected folder');

        audit.respond = () => 202;
        await until('every event delivered once the service answers 202', 10_000, async () => {
          const seen = new Set(audit.accepted.map((e) => e.request_id));
          return ids.every((id) => seen.has(id)) ? true : undefined;
        }, 50);
        // The counters move once the gateway has read the 202: shortly after the service has the events.
        await until('an empty spool, every event counted delivered and /health audit healthy', 5_000, async () => {
          const c = await counters(gw);
          return c.spoolBytes === 0 && c.delivered >= ids.length && (await auditHealth(gw)).audit?.status === 'healthy' ? true : undefined;
        }, 50);
        assert.equal((await counters(gw)).rejected, 0);
        // Delivered in the order they were recorded.
        assert.deepEqual(
          audit.accepted.map((e) => e.request_id).filter((id, i, all) => all.indexOf(id) === i),
          ids,
        );
      } finally {
        await gw.close();
        await audit.close();
      }
    });
  }

  for (const status of [400, 422]) {
    it(`${status}: the batch is set aside in <spool>/rejected/*.jsonl, counted in api_gateway_audit_events_rejected_total, and later events are delivered`, { timeout: 20_000 }, async () => {
      let answered = 0;
      const audit = await startAuditStandIn(() => (answered++ === 0 ? status : 202));
      const { gw, spoolDir } = await gateway(audit);
      try {
        const refused = `invalid-${status}`;
        await audited(gw, refused);
        await until(`the batch answered ${status}`, 5_000, async () => (audit.posts.length >= 1 ? true : undefined));
        assert.deepEqual(audit.posts[0], { requestIds: [refused], status });

        await until('the refused batch kept aside', 5_000, async () => ((await counters(gw)).rejected >= 1 ? true : undefined));
        const aside = await rejectedEvents(spoolDir);
        assert.deepEqual(
          aside.map((e) => e.request_id),
          [refused],
          'the rejected folder holds the refused batch, one event per line',
        );
        assert.equal(aside[0]!.event_id.length > 0, true);

        const later = [`later-${status}-0`, `later-${status}-1`];
        for (const id of later) await audited(gw, id);
        await until('later events delivered', 10_000, async () => {
          const seen = new Set(audit.accepted.map((e) => e.request_id));
          return later.every((id) => seen.has(id)) ? true : undefined;
        }, 50);
        assert.ok(!audit.accepted.some((e) => e.request_id === refused), 'the refused event was not offered again');
        await until('an empty spool', 5_000, async () => ((await counters(gw)).spoolBytes === 0 ? true : undefined), 50);
        const c = await counters(gw);
        assert.equal(c.rejected, 1, JSON.stringify(c));
        assert.equal((await auditHealth(gw)).audit?.status, 'healthy');
      } finally {
        await gw.close();
        await audit.close();
      }
    });
  }

  it('413: the batch is halved until it fits, and every event arrives', { timeout: 25_000 }, async () => {
    /** The service takes at most this many events per POST. */
    const MAX = 100;
    const COUNT = 300;
    let releaseFirst!: () => void;
    const firstHeld = new Promise<void>((resolve) => (releaseFirst = resolve));
    let first = true;
    const audit = await startAuditStandIn(async (events) => {
      if (first) {
        // The first POST waits while the rest of the events pile up in the spool.
        first = false;
        await firstHeld;
      }
      return events.length > MAX ? 413 : 202;
    });
    const { gw, spoolDir } = await gateway(audit);
    try {
      const ids = Array.from({ length: COUNT }, (_, i) => `big-${String(i).padStart(3, '0')}`);
      await audited(gw, ids[0]!);
      await until('the first POST at the audit service', 5_000, async () => (audit.arrivals >= 1 ? true : undefined));
      const pool = new Pool(gw.url, { connections: 20 });
      try {
        let next = 1;
        await Promise.all(
          Array.from({ length: 20 }, async () => {
            while (next < COUNT) {
              const id = ids[next++]!;
              const res = await pool.request({ path: `/api/records/${id}`, method: 'GET', headers: { authorization: `Bearer ${token}`, 'x-request-id': id } });
              await res.body.dump();
              assert.equal(res.statusCode, 200);
            }
          }),
        );
      } finally {
        await pool.close();
      }
      // The last events are written (group commit) before the held POST is answered.
      await delay(100);
      releaseFirst();

      await until(`all ${COUNT} events at the audit service`, 15_000, async () => {
        await nothingSetAside(gw, spoolDir);
        const seen = new Set(audit.accepted.map((e) => e.request_id));
        return ids.every((id) => seen.has(id)) ? true : undefined;
      }, 50);

      const tooLarge = audit.posts.filter((p) => p.status === 413);
      assert.ok(tooLarge.length >= 1, `the service answered 413 at least once: ${JSON.stringify(audit.posts.map((p) => [p.requestIds.length, p.status]))}`);
      for (let i = 1; i < tooLarge.length; i++) {
        assert.ok(tooLarge[i]!.requestIds.length < tooLarge[i - 1]!.requestIds.length, `each 413 is followed by a smaller batch: ${JSON.stringify(audit.posts.map((p) => [p.requestIds.length, p.status]))}`);
      }
      for (const p of audit.posts.filter((x) => x.status === 202)) assert.ok(p.requestIds.length <= MAX);
      const c = await until('every event counted delivered', 5_000, async () => {
        const now = await counters(gw);
        return now.delivered >= COUNT && now.spoolBytes === 0 ? now : undefined;
      }, 50);
      assert.equal(c.rejected, 0, JSON.stringify(c));
      assert.equal(existsSync(join(spoolDir, 'rejected')), false, 'nothing set aside');
    } finally {
      releaseFirst();
      await gw.close();
      await audit.close();
    }
  });
});
