import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Pool } from 'undici';
import { close, listen } from '../../dev/stand-ins/http-util.js';
import { send } from '../helpers/http.js';
import { until } from '../helpers/poll.js';
import { spawnGateway, type GatewayProcess } from '../helpers/process.js';
import { signToken } from '../helpers/tokens.js';
import { startUpstream, type TestUpstream } from '../helpers/upstream.js';

/**
 * Nothing lost across a crash: a PHI route under load with the audit service down, the gateway
 * killed with SIGKILL (an OOM kill, a node failure) at a different moment in each round, restarted
 * on the same spool; then the audit service comes back. Every answer a client received with 200
 * has its access record delivered, every access record has exactly one completion (marked
 * incomplete when the kill fell between the two), and no record arrives twice under two ids.
 */

const PROVIDER = '7c9e6679-7425-40de-944b-e07fc1f90ae7';
const ROUNDS = 4;
const CONCURRENCY = 12;

interface AuditEvent {
  event_id: string;
  type: string;
  request_id: string;
  status: number | null;
  incomplete?: boolean;
  access_event_id?: string;
  [key: string]: unknown;
}

/** An audit service that answers 503 while down, and records every event it accepts (duplicates too). */
async function recordingAuditService(): Promise<{ url: string; events: AuditEvent[]; up: boolean; close(): Promise<void> }> {
  const state = { url: '', events: [] as AuditEvent[], up: false, close: async () => undefined as void };
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      if (!state.up) return void res.writeHead(503).end();
      state.events.push(...(JSON.parse(Buffer.concat(chunks).toString('utf8')) as { events: AuditEvent[] }).events);
      res.writeHead(202, { 'content-type': 'application/json' }).end('{}');
    });
  });
  state.url = `http://127.0.0.1:${await listen(server, 0)}`;
  state.close = () => close(server);
  return state;
}

describe('write-ahead audit across SIGKILL', { timeout: 240_000 }, () => {
  let upstream: TestUpstream;
  let audit: Awaited<ReturnType<typeof recordingAuditService>>;
  let dir: string;
  let gw: GatewayProcess | null = null;

  before(async () => {
    upstream = await startUpstream();
    audit = await recordingAuditService();
    dir = await mkdtemp(join(tmpdir(), 'gw-crash-'));
  });
  after(async () => {
    await gw?.stop();
    await upstream?.close();
    await audit?.close();
    await rm(dir, { recursive: true, force: true });
  });

  it(`${ROUNDS} rounds of load and SIGKILL: every PHI answer a client received has its access record, each record once, each with one completion`, async (t) => {
    const routes = { services: { records: { instances: [upstream.url] } }, routes: [{ name: 'records', service: 'records', pattern: '/api/records/:id', methods: ['GET'], permission: 'records:read', phi: true }] };
    const env = { AUDIT_SERVICE_URL: audit.url, AUDIT_SPOOL_DIR: join(dir, 'spool'), RATE_LIMIT_PER_MINUTE: '1000000', LOG_LEVEL: 'WARN' };
    const token = await signToken({ sub: PROVIDER, role: 'health_provider', claims: { phi_access_level: 'full' } });
    /** Request ids of the answers clients received with 200. */
    const received = new Set<string>();
    let sent = 0;

    for (let round = 1; round <= ROUNDS; round++) {
      gw = await spawnGateway(routes, env);
      const killAfter = 60 + round * 90;
      let answered = 0;
      const pool = new Pool(gw.url, { connections: CONCURRENCY, pipelining: 1 });
      const victim = gw;
      const worker = async (w: number) => {
        for (let i = 0; ; i++) {
          const id = `crash-r${round}-w${w}-${i}`;
          sent++;
          try {
            const res = await pool.request({ path: `/api/records/${i}`, method: 'GET', headers: { authorization: `Bearer ${token}`, 'x-request-id': id }, headersTimeout: 10_000, bodyTimeout: 10_000 });
            // Received means the whole answer: its head and body.
            await res.body.text();
            if (res.statusCode === 200) received.add(id);
            else assert.fail(`${id}: ${res.statusCode}`);
          } catch (err) {
            if ((err as Error).name === 'AssertionError') throw err;
            return; // the gateway is gone
          }
          if (++answered === killAfter) victim.child.kill('SIGKILL');
        }
      };
      await Promise.all(Array.from({ length: CONCURRENCY }, (_, w) => worker(w)));
      assert.equal(await victim.exited, null, 'killed by a signal');
      await pool.destroy();
      await victim.stop();
      gw = null;
      assert.ok(answered >= killAfter, `round ${round}: ${answered} answers before the kill`);
    }

    // Restarted once more on the same spool, with the audit service back.
    gw = await spawnGateway(routes, env);
    audit.up = true;
    const final = gw;
    await until('the spool to drain', 60_000, async () => {
      const text = (await send(`${final.url}/metrics`)).text;
      return /^api_gateway_audit_spool_bytes 0$/m.test(text) ? true : undefined;
    }, 200);

    // No record twice under two ids (a redelivery is the same event, same id).
    const byId = new Map<string, AuditEvent>();
    for (const e of audit.events) {
      const earlier = byId.get(e.event_id);
      if (earlier !== undefined) assert.deepEqual(e, earlier, 'a redelivered event is the same event');
      byId.set(e.event_id, e);
    }
    const events = [...byId.values()];
    const access = events.filter((e) => e.type === 'api_access');
    const completions = events.filter((e) => e.type === 'api_request');
    const accessByRequest = new Map<string, AuditEvent>();
    for (const a of access) {
      assert.ok(!accessByRequest.has(a.request_id), `two access records for ${a.request_id}`);
      accessByRequest.set(a.request_id, a);
    }

    // Every answer received has its access record: counted exactly.
    const missing = [...received].filter((id) => !accessByRequest.has(id));
    assert.deepEqual(missing, [], `${missing.length} of ${received.size} answers received have no access record`);
    // Records of requests whose answer never reached its client: at most those in flight at each kill.
    const unanswered = access.filter((a) => !received.has(a.request_id)).length;
    assert.ok(unanswered <= ROUNDS * CONCURRENCY, `${unanswered} access records of requests the clients did not see answered`);
    assert.equal(access.length, received.size + unanswered);

    // Each access record has exactly one completion: with its status, or marked incomplete.
    const completionsOf = new Map<string, AuditEvent[]>();
    for (const c of completions) {
      assert.ok(c.access_event_id !== undefined, `a completion without its access record: ${JSON.stringify(c)}`);
      completionsOf.set(c.access_event_id, [...(completionsOf.get(c.access_event_id) ?? []), c]);
    }
    let incomplete = 0;
    for (const a of access) {
      const done = completionsOf.get(a.event_id) ?? [];
      assert.equal(done.length, 1, `${a.request_id}: ${done.length} completions`);
      const c = done[0]!;
      assert.equal(c.request_id, a.request_id);
      if (c.incomplete === true) {
        incomplete++;
        assert.equal(c.status, null);
      } else if (received.has(a.request_id)) assert.equal(c.status, 200);
    }
    assert.equal(completions.length, access.length);
    t.diagnostic(`${sent} sent, ${received.size} answered 200, ${unanswered} admitted and not seen answered, ${incomplete} completed as incomplete`);
    const reported = (await send(`${final.url}/metrics`)).text;
    assert.ok(sent > received.size, 'requests were in flight at the kills');
    assert.ok(/^api_gateway_audit_incomplete_total \d+$/m.test(reported));
    // The incomplete ones are what the kills interrupted: each one an exchange the gateway never saw end.
    assert.ok(incomplete <= unanswered + ROUNDS * CONCURRENCY, `${incomplete} incomplete`);
  });
});
