import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { after, before, describe, it } from 'node:test';
import { Pool, request } from 'undici';
import { createAuditStandIn } from '../../dev/stand-ins/audit-logging.js';
import { close as closeServer, listen } from '../../dev/stand-ins/http-util.js';
import { startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { expectProblem, read, send, type Answer } from '../helpers/http.js';
import { until } from '../helpers/poll.js';
import { freePort } from '../helpers/ports.js';
import { spawnGateway, startGatewayProcess } from '../helpers/process.js';
import { signToken } from '../helpers/tokens.js';
import { startUpstream, type TestUpstream } from '../helpers/upstream.js';

/** Subjects are UUIDs, as the auth service issues them. */
const PROVIDER = '7c9e6679-7425-40de-944b-e07fc1f90ae7';
const ADMIN = '1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d';
const STAFF = '0f1e2d3c-4b5a-4968-8776-655443322110';

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;
/** An access record (write-ahead routes: every PHI route), appended before the upstream is called. */
const ACCESS_FIELDS = ['event_id', 'timestamp', 'type', 'request_id', 'user_id', 'role', 'route', 'route_name', 'method', 'client_ip', 'break_glass', 'phi', 'service'].sort();
/** The event of a finished exchange (on a write-ahead route, the completion of its access record). */
const EVENT_FIELDS = [...ACCESS_FIELDS, 'status', 'duration_ms', 'bytes_out', 'upstream', 'retries'].sort();

interface AuditEvent {
  event_id: string;
  timestamp: string;
  request_id: string;
  user_id: string | null;
  role: string | null;
  route: string;
  route_name: string;
  method: string;
  status: number;
  client_ip: string;
  break_glass: boolean;
  phi: boolean;
  [key: string]: unknown;
}

/** The audit stand-in on a loopback port, started now or later (an outage first). */
interface AuditService {
  port: number;
  url: string;
  events: AuditEvent[];
  start(): Promise<void>;
  stop(): Promise<void>;
}

async function auditService(): Promise<AuditService> {
  const standIn = createAuditStandIn();
  const port = await freePort();
  let running = false;
  return {
    port,
    url: `http://127.0.0.1:${port}`,
    events: standIn.events as AuditEvent[],
    async start() {
      await listen(standIn.server, port);
      running = true;
    },
    async stop() {
      if (running) await closeServer(standIn.server);
      running = false;
    },
  };
}

/** The events of a finished exchange the audit service holds for one request id (duplicates included). */
function eventsOf(audit: AuditService, requestId: string): AuditEvent[] {
  return audit.events.filter((e) => e.request_id === requestId && e.type === 'api_request');
}

/** The access records the audit service holds for one request id (duplicates included). */
function accessRecordsOf(audit: AuditService, requestId: string): AuditEvent[] {
  return audit.events.filter((e) => e.request_id === requestId && e.type === 'api_access');
}

/** Waits for the first event of a finished exchange of a request id to reach the audit service. */
async function deliveredEvent(audit: AuditService, requestId: string, timeoutMs = 10_000): Promise<AuditEvent> {
  return until(`the audit event of ${requestId}`, timeoutMs, async () => eventsOf(audit, requestId)[0]);
}

/** A PHI route on its own service and a non-PHI authenticated route beside it. */
function phiAndNotes(notesUrl: string, phiUrl: string): Record<string, unknown> {
  return {
    services: { backend: { instances: [notesUrl] }, records: { instances: [phiUrl] } },
    routes: [
      { name: 'records', service: 'records', pattern: '/api/records/:id', methods: ['GET'], permission: 'records:read', phi: true },
      { name: 'notes', service: 'backend', path: '/api/notes', methods: ['GET'] },
    ],
  };
}

function metric(text: string, name: string): number {
  const m = new RegExp(`^${name}(?:\\{[^}]*\\})? (\\S+)$`, 'm').exec(text);
  assert.ok(m !== null, `no ${name} in /metrics`);
  return Number(m[1]);
}

async function metrics(url: string): Promise<string> {
  const res = await send(`${url}/metrics`);
  assert.equal(res.statusCode, 200);
  return res.text;
}

interface Health {
  status: string;
  audit?: { status: string; detail: string };
}

async function health(url: string): Promise<{ statusCode: number; body: Health }> {
  const res = await send(`${url}/health`);
  return { statusCode: res.statusCode, body: JSON.parse(res.text) as Health };
}

/** Runs `task(0..count-1)` with at most `concurrency` in flight. */
async function concurrently(count: number, concurrency: number, task: (i: number) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(concurrency, count) }, async () => {
      while (next < count) await task(next++);
    }),
  );
}

async function tokenFor(role: string, sub: string, claims: Record<string, unknown> = {}): Promise<string> {
  return signToken({ sub, role, claims: { phi_access_level: role === 'admin' ? 'break_glass' : 'full', ...claims } });
}

function get(url: string, path: string, options: { token?: string | null; headers?: Record<string, string>; method?: 'GET' | 'POST' | 'OPTIONS'; body?: string } = {}): Promise<Answer> {
  const headers: Record<string, string> = { ...options.headers };
  if (options.token) headers.authorization = `Bearer ${options.token}`;
  return read(request(`${url}${path}`, { method: options.method ?? 'GET', headers, body: options.body, headersTimeout: 10_000, bodyTimeout: 10_000 }));
}

const folders: string[] = [];
async function folder(prefix: string): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), prefix));
  folders.push(dir);
  return dir;
}

/** Every line of every segment file of a spool folder. */
async function spoolText(dir: string): Promise<string> {
  if (!existsSync(dir)) return '';
  const names = (await readdir(dir)).filter((n) => n.endsWith('.jsonl')).sort();
  let text = '';
  for (const name of names) text += await readFile(join(dir, name), 'utf8');
  return text;
}

describe('the audit trail', { timeout: 90_000 }, () => {
  let upstream: TestUpstream;

  before(async () => {
    upstream = await startUpstream();
  });
  after(async () => {
    await upstream.close();
    for (const dir of folders) await rm(dir, { recursive: true, force: true });
  });

  it('keeps every event through an audit outage and a restart, and delivers them in spool order once the service is back', { timeout: 60_000 }, async () => {
    const audit = await auditService();
    const spoolDir = join(await folder('gw-audit-accept-'), 'spool');
    const routes = { services: { backend: { instances: [upstream.url] } }, routes: [{ name: 'records', service: 'backend', pattern: '/api/records/:id', methods: ['GET'], permission: 'records:read', phi: true }] };
    const env = {
      AUDIT_SERVICE_URL: audit.url,
      AUDIT_SPOOL_DIR: spoolDir,
      HEALTH_CACHE_MS: '0',
      RATE_LIMIT_PER_MINUTE: '1000000',
      SHUTDOWN_TIMEOUT_MS: '10000',
    };
    const token = await tokenFor('health_provider', PROVIDER);
    const ids = (phase: number) => Array.from({ length: 500 }, (_, i) => `accept-p${phase}-${String(i).padStart(4, '0')}`);

    const serve = async (gwUrl: string, requestIds: string[]) => {
      const pool = new Pool(gwUrl, { connections: 20 });
      try {
        await concurrently(requestIds.length, 20, async (i) => {
          const id = requestIds[i]!;
          const res = await pool.request({ path: `/api/records/r-${i}`, method: 'GET', headers: { authorization: `Bearer ${token}`, 'x-request-id': id }, headersTimeout: 10_000 });
          const text = await res.body.text();
          assert.equal(res.statusCode, 200, `${id}: ${text}`);
          assert.equal(res.headers['x-request-id'], id);
        });
      } finally {
        await pool.close();
      }
    };

    // The audit service is down from the start.
    const first = await spawnGateway(routes, env);
    try {
      await serve(first.url, ids(1));
      const during = await health(first.url);
      assert.equal(during.body.audit?.status, 'degraded', `while the audit service is down: ${JSON.stringify(during.body)}`);
      assert.ok(first.child.kill('SIGTERM'));
      assert.equal(await first.exited, 0, `exit code of the first gateway; stderr:\n${first.stderr()}`);
    } finally {
      await first.stop();
    }
    // What the first process wrote is on disk, all of it, and nothing was delivered.
    const left = (await spoolText(spoolDir)).split('\n').filter(Boolean);
    assert.equal(left.length, 1000, 'the first process left its 500 access records and 500 completions in the spool');
    assert.equal(audit.events.length, 0);
    assert.ok(!existsSync(join(spoolDir, 'LOCK')), 'a clean shutdown releases the spool LOCK');

    const second = await spawnGateway(routes, env);
    try {
      await serve(second.url, ids(2));
      await audit.start();
      const wanted = new Set([...ids(1), ...ids(2)]);
      await until('all 1,000 request ids at the audit service', 40_000, async () => {
        const seen = new Set(audit.events.map((e) => e.request_id));
        return [...wanted].every((id) => seen.has(id)) ? true : undefined;
      }, 100);

      // Two events per request (its access record and its completion): event ids unique, a
      // duplicate only of the same event.
      const byEventId = new Map<string, AuditEvent>();
      for (const e of audit.events) {
        const earlier = byEventId.get(e.event_id);
        if (earlier !== undefined) assert.deepEqual(e, earlier, 'a redelivered event is the same event');
        else byEventId.set(e.event_id, e);
      }
      const firsts = [...byEventId.values()];
      assert.equal(firsts.length, 2000, `${firsts.length} distinct events for 1,000 requests`);
      const access = firsts.filter((e) => e.type === 'api_access');
      const completions = firsts.filter((e) => e.type === 'api_request');
      assert.equal(new Set(access.map((e) => e.request_id)).size, 1000);
      assert.equal(new Set(completions.map((e) => e.request_id)).size, 1000);
      const accessIds = new Map(access.map((e) => [e.request_id, e.event_id]));
      for (const c of completions) assert.equal(c.access_event_id, accessIds.get(c.request_id), `the completion of ${c.request_id} names its access record`);
      for (const e of firsts) assert.match(e.event_id, UUID);

      // Spool order: everything the first process wrote, then the second's; within one process in
      // the order written (timestamps never go back).
      const phases = firsts.map((e) => (e.request_id.startsWith('accept-p1-') ? 1 : 2));
      const lastOfFirst = phases.lastIndexOf(1);
      const firstOfSecond = phases.indexOf(2);
      assert.ok(lastOfFirst < firstOfSecond, `events of the first run must all come before the second's (last first-run event at ${lastOfFirst}, first second-run event at ${firstOfSecond})`);
      for (let i = 1; i < firsts.length; i++) {
        if (phases[i] !== phases[i - 1]) continue;
        assert.ok(
          Date.parse(firsts[i]!.timestamp) >= Date.parse(firsts[i - 1]!.timestamp),
          `delivery order is not spool order at ${i}: ${firsts[i - 1]!.timestamp} then ${firsts[i]!.timestamp}`,
        );
      }

      await until('/health audit healthy and an empty spool', 10_000, async () => {
        const h = await health(second.url);
        const text = await metrics(second.url);
        return h.body.audit?.status === 'healthy' && metric(text, 'api_gateway_audit_spool_bytes') === 0 ? true : undefined;
      }, 100);
      const text = await metrics(second.url);
      assert.ok(metric(text, 'api_gateway_audit_events_delivered_total') >= 1000);
      assert.equal(metric(text, 'api_gateway_audit_events_dropped_total'), 0);
      assert.ok(metric(text, 'api_gateway_audit_delivery_failures_total') > 0, 'the outage was seen as failed deliveries');
      assert.equal((await health(second.url)).body.audit?.detail, 'events delivered');

      assert.ok(second.child.kill('SIGTERM'));
      assert.equal(await second.exited, 0, `exit code of the second gateway; stderr:\n${second.stderr()}`);
    } finally {
      await second.stop();
      await audit.stop();
    }
  });

  describe('event content', () => {
    let audit: AuditService;
    let gw: TestGateway;
    let phiUpstream: TestUpstream;

    before(async () => {
      audit = await auditService();
      await audit.start();
      phiUpstream = await startUpstream();
      gw = await startTestGateway(
        {
          services: { backend: { instances: [upstream.url] }, records: { instances: [phiUpstream.url] } },
          routes: [
            { name: 'records', service: 'records', pattern: '/api/records/:id', methods: ['GET', 'POST'], permission: 'records:read', phi: true, breakGlass: true },
            { name: 'records-write', service: 'records', path: '/api/records-write', methods: ['POST'], permission: 'records:write', phi: true },
            { name: 'files', service: 'backend', prefix: '/api/files' },
            { name: 'notes', service: 'backend', path: '/api/notes', methods: ['GET', 'POST'] },
            { name: 'public-info', service: 'backend', path: '/api/public', auth: 'public' },
          ],
        },
        { AUDIT_SERVICE_URL: audit.url },
      );
    });
    after(async () => {
      await gw.close();
      await phiUpstream.close();
      await audit.stop();
    });

    it('has who, what, when, from where and whether by break-glass; 401 and 403 are audited; public routes and preflights are not', async () => {
      const started = Date.now();
      const provider = await tokenFor('health_provider', PROVIDER);
      const tag = randomBytes(4).toString('hex');

      const ok = await get(gw.url, '/api/records/rec-4711', { token: provider, headers: { 'x-request-id': `b-ok-${tag}` } });
      assert.equal(ok.statusCode, 200, ok.text);
      const noToken = await get(gw.url, '/api/records/rec-4712', { headers: { 'x-request-id': `b-401-${tag}` } });
      expectProblem(noToken, 401, 'GW_AUTH_TOKEN_MISSING');
      const staff = await get(gw.url, '/api/records-write', { token: await tokenFor('care_staff', STAFF), method: 'POST', headers: { 'x-request-id': `b-403-${tag}` } });
      expectProblem(staff, 403, 'GW_FORBIDDEN');
      const pub = await get(gw.url, '/api/public', { token: provider, headers: { 'x-request-id': `b-public-${tag}` } });
      assert.equal(pub.statusCode, 200);
      const pre = await get(gw.url, '/api/records/rec-4713', {
        method: 'OPTIONS',
        headers: { origin: 'https://app.example.org', 'access-control-request-method': 'GET', 'access-control-request-headers': 'authorization', 'x-request-id': `b-preflight-${tag}` },
      });
      assert.equal(pre.statusCode, 204, pre.text);
      const notFound = await get(gw.url, '/api/nowhere', { token: provider, headers: { 'x-request-id': `b-404-${tag}` } });
      assert.equal(notFound.statusCode, 404);
      const own = await get(gw.url, '/health/live', { token: provider, headers: { 'x-request-id': `b-own-${tag}` } });
      assert.equal(own.statusCode, 200);
      const notes = await get(gw.url, '/api/notes', { token: provider, headers: { 'x-request-id': `b-notes-${tag}` } });
      assert.equal(notes.statusCode, 200);
      // Last: once its event is here, any event of the requests before it would be too (FIFO).
      const marker = await get(gw.url, '/api/notes', { token: provider, headers: { 'x-request-id': `b-marker-${tag}` } });
      assert.equal(marker.statusCode, 200);
      await deliveredEvent(audit, `b-marker-${tag}`);
      const finished = Date.now();

      const event = eventsOf(audit, `b-ok-${tag}`);
      assert.equal(event.length, 1);
      const e = event[0]!;
      assert.deepEqual(Object.keys(e).sort(), [...EVENT_FIELDS, 'access_event_id'].sort(), `fields of ${JSON.stringify(e)}`);
      // A PHI route's request has its access record too, written before the upstream was called.
      const accessRecords = accessRecordsOf(audit, `b-ok-${tag}`);
      assert.equal(accessRecords.length, 1);
      const a = accessRecords[0]!;
      assert.deepEqual(Object.keys(a).sort(), ACCESS_FIELDS, `fields of ${JSON.stringify(a)}`);
      assert.equal(e.access_event_id, a.event_id);
      assert.deepEqual(
        { user_id: a.user_id, role: a.role, route: a.route, route_name: a.route_name, method: a.method, client_ip: a.client_ip, break_glass: a.break_glass, phi: a.phi },
        { user_id: PROVIDER, role: 'health_provider', route: '/api/records/:id', route_name: 'records', method: 'GET', client_ip: '127.0.0.1', break_glass: false, phi: true },
      );
      assert.ok(Date.parse(a.timestamp) <= Date.parse(e.timestamp));
      assert.equal(e.upstream, phiUpstream.url);
      assert.equal(e.retries, 0);
      assert.equal(e.bytes_out, Buffer.byteLength(ok.text));
      assert.ok(typeof e.duration_ms === 'number' && e.duration_ms >= 0);
      assert.match(e.event_id, UUID);
      assert.match(e.timestamp, /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/);
      assert.ok(Date.parse(e.timestamp) >= started - 1 && Date.parse(e.timestamp) <= finished + 1, `timestamp ${e.timestamp}`);
      assert.deepEqual(
        { request_id: e.request_id, user_id: e.user_id, role: e.role, route: e.route, route_name: e.route_name, method: e.method, status: e.status, client_ip: e.client_ip, break_glass: e.break_glass, phi: e.phi },
        { request_id: `b-ok-${tag}`, user_id: PROVIDER, role: 'health_provider', route: '/api/records/:id', route_name: 'records', method: 'GET', status: 200, client_ip: '127.0.0.1', break_glass: false, phi: true },
      );
      assert.equal(e.request_id, ok.headers['x-request-id']);

      const unauth = eventsOf(audit, `b-401-${tag}`);
      assert.equal(unauth.length, 1, 'a request without a token to an authenticated route is audited');
      assert.deepEqual(accessRecordsOf(audit, `b-401-${tag}`), [], 'a request refused before admission has no access record');
      assert.deepEqual(
        { user_id: unauth[0]!.user_id, role: unauth[0]!.role, status: unauth[0]!.status, route: unauth[0]!.route, phi: unauth[0]!.phi },
        { user_id: null, role: null, status: 401, route: '/api/records/:id', phi: true },
      );
      const forbidden = eventsOf(audit, `b-403-${tag}`);
      assert.equal(forbidden.length, 1, 'a refused request is audited');
      assert.deepEqual(
        { user_id: forbidden[0]!.user_id, role: forbidden[0]!.role, status: forbidden[0]!.status, route: forbidden[0]!.route, method: forbidden[0]!.method },
        { user_id: STAFF, role: 'care_staff', status: 403, route: '/api/records-write', method: 'POST' },
      );
      const nonPhi = eventsOf(audit, `b-notes-${tag}`);
      assert.equal(nonPhi.length, 1, 'an authenticated route without PHI is audited too');
      assert.equal(nonPhi[0]!.phi, false);
      assert.deepEqual(Object.keys(nonPhi[0]!).sort(), EVENT_FIELDS, 'a route without write-ahead audit has one event, with no access record');
      assert.deepEqual(accessRecordsOf(audit, `b-notes-${tag}`), []);

      for (const skipped of ['public', 'preflight', '404', 'own']) assert.deepEqual(audit.events.filter((x) => x.request_id === `b-${skipped}-${tag}`), [], `${skipped}: no audit event`);
      // The raw path is never in an event, only the template.
      const text = JSON.stringify(audit.events);
      for (const raw of ['rec-4711', 'rec-4712', 'rec-4713']) assert.ok(!text.includes(raw), `the raw path segment ${raw} reached the audit trail`);
    });

    it('a prefix route is audited by its template, never by the raw path', async () => {
      const provider = await tokenFor('health_provider', PROVIDER);
      const res = await get(gw.url, '/api/files/resident-8812/scan.pdf', { token: provider, headers: { 'x-request-id': 'b-prefix' } });
      assert.equal(res.statusCode, 200);
      const e = await deliveredEvent(audit, 'b-prefix');
      assert.equal(e.route, '/api/files/*');
      assert.equal(e.route_name, 'files');
      assert.ok(!JSON.stringify(e).includes('resident-8812'));
    });

    it('break-glass: flagged, and the reason is nowhere in the event', async () => {
      const reason = `Emergency: patient unresponsive in room ${randomBytes(3).toString('hex')}`;
      const admin = await tokenFor('admin', ADMIN);
      const before = phiUpstream.received.length;
      const res = await get(gw.url, '/api/records/rec-9001', { token: admin, headers: { 'x-break-glass-reason': reason, 'x-request-id': 'b-break-glass' } });
      assert.equal(res.statusCode, 200, res.text);
      assert.equal(phiUpstream.received.length, before + 1);
      const e = await deliveredEvent(audit, 'b-break-glass');
      assert.equal(e.break_glass, true);
      assert.equal(accessRecordsOf(audit, 'b-break-glass')[0]?.break_glass, true, 'the access record is flagged too');
      assert.equal(e.role, 'admin');
      assert.equal(e.user_id, ADMIN);
      assert.equal(e.status, 200);
      const text = JSON.stringify(e);
      assert.ok(!text.includes(reason), 'the break-glass reason reached the audit trail');
      assert.ok(!text.includes('unresponsive'), 'part of the break-glass reason reached the audit trail');

      // Without a reason: refused, audited, not flagged.
      const refused = await get(gw.url, '/api/records/rec-9001', { token: admin, headers: { 'x-request-id': 'b-break-glass-no-reason' } });
      expectProblem(refused, 403, 'GW_BREAK_GLASS_REASON_REQUIRED');
      const r = await deliveredEvent(audit, 'b-break-glass-no-reason');
      assert.equal(r.status, 403);
      assert.equal(r.break_glass, false);
    });

    it('canary PHI in the path, query, body, headers and token claims never reaches an audit event or the spool', async () => {
      const c = (what: string) => `CANARY${what}${randomBytes(6).toString('hex')}`;
      const canaries = {
        path: c('PATH'),
        prefixPath: c('PREFIX'),
        unauthPath: c('UNAUTHPATH'),
        query: c('QUERY'),
        queryName: c('QNAME'),
        body: c('BODY'),
        formBody: c('FORM'),
        header: c('HEADER'),
        cookie: c('COOKIE'),
        userAgent: c('UA'),
        referer: c('REFERER'),
        forwardedFor: c('XFF'),
        reason: c('REASON'),
        claim: c('CLAIM'),
        refusedReason: c('REFUSED'),
      };
      const provider = await tokenFor('health_provider', PROVIDER, { name: canaries.claim, diagnosis: canaries.claim });
      const admin = await tokenFor('admin', ADMIN, { name: canaries.claim });
      const headers = {
        'x-patient-name': canaries.header,
        cookie: `session=${canaries.cookie}`,
        'user-agent': canaries.userAgent,
        referer: `https://app.example.org/patients/${canaries.referer}`,
        'x-forwarded-for': canaries.forwardedFor,
      };
      const requests: Array<{ id: string; path: string; token?: string | null; method?: 'GET' | 'POST'; body?: string; headers?: Record<string, string> }> = [
        { id: 'c-path', path: `/api/records/${canaries.path}`, token: provider },
        { id: 'c-query', path: `/api/records/r1?name=${canaries.query}&${canaries.queryName}=1`, token: provider },
        { id: 'c-body', path: '/api/records/r2', token: provider, method: 'POST', body: JSON.stringify({ diagnosis: canaries.body }), headers: { 'content-type': 'application/json' } },
        { id: 'c-form', path: '/api/notes', token: provider, method: 'POST', body: `note=${canaries.formBody}`, headers: { 'content-type': 'application/x-www-form-urlencoded' } },
        { id: 'c-headers', path: '/api/records/r3', token: provider, headers },
        { id: 'c-prefix', path: `/api/files/${canaries.prefixPath}/x?q=${canaries.query}`, token: provider },
        { id: 'c-unauth', path: `/api/records/${canaries.unauthPath}?q=${canaries.query}`, token: null, headers },
        { id: 'c-break-glass', path: `/api/records/${canaries.path}?q=${canaries.query}`, token: admin, headers: { ...headers, 'x-break-glass-reason': canaries.reason } },
        // An over-long reason is refused (403): the refusal is audited, the reason still nowhere.
        { id: 'c-refused', path: '/api/records/r4', token: admin, headers: { 'x-break-glass-reason': `${canaries.refusedReason}${'x'.repeat(600)}` } },
      ];
      for (const r of requests) {
        const res = await get(gw.url, r.path, { token: r.token ?? null, method: r.method, body: r.body, headers: { ...r.headers, 'x-request-id': r.id } });
        assert.ok([200, 401, 403].includes(res.statusCode), `${r.id}: ${res.statusCode} ${res.text}`);
      }
      for (const r of requests) await deliveredEvent(audit, r.id);
      assert.equal(eventsOf(audit, 'c-break-glass')[0]!.break_glass, true);

      const delivered = JSON.stringify(audit.events);
      const spool = await spoolText(join(dirname(gw.routesFile), 'audit-spool'));
      assert.ok(spool.includes('"c-break-glass"'), 'the spool holds the events searched');
      for (const [where, canary] of Object.entries(canaries)) {
        for (const [what, text] of [
          ['a delivered audit event', delivered],
          ['the spool on disk', spool],
        ] as const) {
          assert.ok(!text.toLowerCase().includes(canary.toLowerCase()), `the ${where} canary reached ${what}`);
          assert.ok(!text.includes(canary.slice('CANARY'.length)), `part of the ${where} canary reached ${what}`);
        }
      }
    });
  });

  it('with the spool full: PHI routes answer 503 without reaching the upstream, other routes serve, /health says why; all recovers once the audit service is back', { timeout: 60_000 }, async () => {
    const audit = await auditService();
    const phiUpstream = await startUpstream();
    const gw = await startTestGateway(
      phiAndNotes(upstream.url, phiUpstream.url),
      { AUDIT_SERVICE_URL: audit.url, AUDIT_SPOOL_MAX_MB: '1', HEALTH_CACHE_MS: '0' },
    );
    try {
      const token = await tokenFor('health_provider', PROVIDER);
      let audited = 0;
      const pool = new Pool(gw.url, { connections: 20 });
      try {
        // Long request ids make bigger events: ~2,000 fill 1 MiB.
        const pad = 'f'.repeat(100);
        let round = 0;
        await until('the spool to fill up', 30_000, async () => {
          round++;
          await concurrently(200, 20, async (i) => {
            const res = await pool.request({ path: '/api/notes', method: 'GET', headers: { authorization: `Bearer ${token}`, 'x-request-id': `d-${round}-${i}-${pad}` } });
            await res.body.dump();
            assert.equal(res.statusCode, 200, 'a non-PHI route serves while the spool fills');
            audited++;
          });
          return metric(await metrics(gw.url), 'api_gateway_audit_events_dropped_total') > 0 ? true : undefined;
        }, 0);
      } finally {
        await pool.close();
      }
      assert.ok(metric(await metrics(gw.url), 'api_gateway_audit_spool_bytes') >= 1024 * 1024);

      const refused = await get(gw.url, '/api/records/rec-1', { token, headers: { 'x-request-id': 'refused-while-full' } });
      audited++;
      const problem = expectProblem(refused, 503, 'GW_AUDIT_UNAVAILABLE');
      assert.equal(refused.headers['retry-after'], '30');
      assert.ok(problem.detail.length > 0);
      assert.equal(phiUpstream.received.length, 0, 'the PHI upstream must not see a request that cannot be audited');
      assert.equal(metric(await metrics(gw.url), 'api_gateway_audit_phi_refusals_unrecorded_total'), 0, 'the refusal is kept in the reserve for refusals');

      // A flood of PHI attempts past that reserve (a quarter of the 1 MiB headroom): counted, and
      // logged once per burst rather than once per attempt.
      const linesBefore = gw.logs.filter((l) => l.message === 'audit events not recorded').length;
      const floodStart = performance.now();
      const floodPool = new Pool(gw.url, { connections: 20 });
      let refusedInFlood = 0;
      try {
        await until('refused PHI attempts past the reserve', 30_000, async () => {
          await concurrently(200, 20, async (i) => {
            const res = await floodPool.request({ path: `/api/records/rec-${i}`, method: 'GET', headers: { authorization: `Bearer ${token}` } });
            await res.body.dump();
            assert.equal(res.statusCode, 503);
            audited++;
            refusedInFlood++;
          });
          return metric(await metrics(gw.url), 'api_gateway_audit_phi_refusals_unrecorded_total') > 0 ? true : undefined;
        }, 0);
      } finally {
        await floodPool.close();
      }
      const floodSeconds = (performance.now() - floodStart) / 1000;
      const unrecorded = metric(await metrics(gw.url), 'api_gateway_audit_phi_refusals_unrecorded_total');
      assert.ok(refusedInFlood - unrecorded >= 100, `the reserve kept hundreds of refusals (${refusedInFlood} refused, ${unrecorded} unrecorded)`);
      const lines = gw.logs.filter((l) => l.message === 'audit events not recorded').slice(linesBefore);
      assert.ok(lines.length <= 1 + Math.ceil(floodSeconds / 10), `${lines.length} log lines for a ${floodSeconds.toFixed(1)} s burst`);
      assert.equal(phiUpstream.received.length, 0);

      const plain = await get(gw.url, '/api/notes', { token });
      audited++;
      assert.equal(plain.statusCode, 200, 'a route without PHI still serves with the spool full');

      const h = await health(gw.url);
      assert.equal(h.statusCode, 200, JSON.stringify(h.body));
      assert.equal(h.body.status, 'degraded');
      assert.equal(h.body.audit?.status, 'unhealthy');
      assert.match(h.body.audit?.detail ?? '', /spool is full/);
      const ready = await send(`${gw.url}/health/ready`);
      assert.equal(ready.statusCode, 200, 'a full audit spool does not take the replica out of rotation');

      // The audit service comes back: the spool drains and PHI is served again.
      await audit.start();
      await until('the PHI route to serve again', 40_000, async () => {
        const res = await get(gw.url, '/api/records/rec-2', { token });
        audited++;
        // Served: its access record as well as its completion.
        if (res.statusCode === 200) audited++;
        return res.statusCode === 200 ? true : undefined;
      }, 200);
      assert.equal(phiUpstream.received.length, 1);
      await until('an empty spool and a healthy audit trail', 15_000, async () => {
        const h2 = await health(gw.url);
        return h2.body.audit?.status === 'healthy' && metric(await metrics(gw.url), 'api_gateway_audit_spool_bytes') === 0 ? true : undefined;
      }, 100);

      // Every event the spool accepted arrived; only the dropped ones are missing.
      const dropped = metric(await metrics(gw.url), 'api_gateway_audit_events_dropped_total');
      assert.ok(dropped > 0);
      const distinct = new Set(audit.events.map((e) => e.event_id)).size;
      assert.equal(distinct, audited - dropped, `${audited} events of audited requests, ${dropped} dropped, ${distinct} delivered`);
      const [kept] = eventsOf(audit, 'refused-while-full');
      assert.equal(kept?.status, 503, 'the PHI attempt refused with the spool full has its event');
      assert.equal(kept?.phi, true);
    } finally {
      await gw.close();
      await phiUpstream.close();
      await audit.stop();
    }
  });

  it(
    'PHI requests admitted concurrently just below the spool bound are all audited, or refused',
    { timeout: 30_000 },
    async () => {
      const audit = await auditService();
      const phiUpstream = await startUpstream();
      const gw = await startTestGateway(
        phiAndNotes(upstream.url, phiUpstream.url),
        { AUDIT_SERVICE_URL: audit.url, AUDIT_SPOOL_MAX_MB: '1' },
      );
      try {
        const token = await tokenFor('health_provider', PROVIDER);
        const headers = { authorization: `Bearer ${token}` };
        const max = 1024 * 1024;
        const one = await get(gw.url, '/api/notes', { token });
        assert.equal(one.statusCode, 200);
        const eventBytes = await until('the first event in the spool', 5_000, async () => {
          const bytes = metric(await metrics(gw.url), 'api_gateway_audit_spool_bytes');
          return bytes > 0 ? bytes : undefined;
        });
        // Fill to within one event of the bound (the audit service is down: nothing drains).
        for (;;) {
          const room = max - metric(await metrics(gw.url), 'api_gateway_audit_spool_bytes');
          if (room <= eventBytes) break;
          const n = Math.min(50, Math.max(1, Math.floor(room / eventBytes) - 1));
          await Promise.all(Array.from({ length: n }, () => get(gw.url, '/api/notes', { token })));
        }
        const droppedBefore = metric(await metrics(gw.url), 'api_gateway_audit_events_dropped_total');
        assert.equal(droppedBefore, 0);

        const statuses = await Promise.all(
          Array.from({ length: 20 }, async (_, i) => (await read(request(`${gw.url}/api/records/rec-${i}`, { headers }))).statusCode),
        );
        const served = statuses.filter((s) => s === 200).length;
        assert.equal(phiUpstream.received.length, served);
        // Every PHI request that reached its upstream must have its event: let the spool drain and count.
        await audit.start();
        await until('the spool to drain', 30_000, async () => (metric(await metrics(gw.url), 'api_gateway_audit_spool_bytes') === 0 ? true : undefined), 100);
        const audited = new Set(audit.events.filter((e) => e.route_name === 'records' && e.status === 200).map((e) => e.event_id)).size;
        const dropped = metric(await metrics(gw.url), 'api_gateway_audit_events_dropped_total');
        assert.equal(audited, served, `${served} PHI requests served (${statuses.join(',')}), ${audited} of them audited, ${dropped} events dropped`);
      } finally {
        await gw.close();
        await phiUpstream.close();
        await audit.stop();
      }
    },
  );

  it('AUDIT_ENABLED=false: no events, no spool folder, PHI routes serve', async () => {
    const audit = await auditService();
    await audit.start();
    const spoolDir = join(await folder('gw-audit-off-'), 'never-created');
    const gw = await startTestGateway(
      { services: { backend: { instances: [upstream.url] } }, routes: [{ name: 'records', service: 'backend', pattern: '/api/records/:id', methods: ['GET'], permission: 'records:read', phi: true }] },
      { AUDIT_ENABLED: 'false', AUDIT_SPOOL_DIR: spoolDir, AUDIT_SERVICE_URL: audit.url, HEALTH_CACHE_MS: '0' },
    );
    try {
      const token = await tokenFor('health_provider', PROVIDER);
      for (let i = 0; i < 5; i++) {
        const res = await get(gw.url, `/api/records/rec-${i}`, { token });
        assert.equal(res.statusCode, 200, res.text);
      }
      const unauth = await get(gw.url, '/api/records/rec-x');
      assert.equal(unauth.statusCode, 401);
      const h = await health(gw.url);
      assert.equal(h.body.audit, undefined, '/health has no audit entry with auditing off');
      assert.doesNotMatch(await metrics(gw.url), /api_gateway_audit_/);
      // An enabled trail delivers within milliseconds; give a disabled one ample time to show it does not.
      await delay(1_500);
      assert.equal(audit.events.length, 0);
      assert.equal(existsSync(spoolDir), false, 'no spool folder is created');
    } finally {
      await gw.close();
      await audit.stop();
    }
  });

  it('an AUDIT_SPOOL_DIR that cannot be written stops the process at start with exit 1, naming the variable', { timeout: 30_000 }, async () => {
    const dir = await folder('gw-audit-bad-');
    const file = join(dir, 'a-file');
    await writeFile(file, 'not a folder');
    const gw = await startGatewayProcess({ services: { backend: { instances: [upstream.url] } }, routes: [{ name: 'notes', service: 'backend', path: '/api/notes' }] }, { AUDIT_SPOOL_DIR: join(file, 'spool') });
    try {
      assert.equal(await gw.exited, 1, `stdout:\n${gw.stdout()}\nstderr:\n${gw.stderr()}`);
      assert.match(gw.stderr(), /AUDIT_SPOOL_DIR/);
      assert.match(gw.stderr(), /a-file/);
      assert.doesNotMatch(gw.stderr(), /\n\s+at /, 'a config error, not a stack trace');
    } finally {
      await gw.stop();
    }
  });

  it('a spool folder held by another live process stops the process at start with exit 1, naming AUDIT_SPOOL_DIR', { timeout: 30_000 }, async () => {
    const spoolDir = join(await folder('gw-audit-locked-'), 'spool');
    await mkdir(spoolDir);
    // This test process is alive, and it is not the gateway: the folder is in use.
    await writeFile(join(spoolDir, 'LOCK'), String(process.pid));
    const gw = await startGatewayProcess({ services: { backend: { instances: [upstream.url] } }, routes: [{ name: 'notes', service: 'backend', path: '/api/notes' }] }, { AUDIT_SPOOL_DIR: spoolDir });
    try {
      assert.equal(await gw.exited, 1, `stdout:\n${gw.stdout()}\nstderr:\n${gw.stderr()}`);
      assert.match(gw.stderr(), /AUDIT_SPOOL_DIR/);
      assert.match(gw.stderr(), new RegExp(`in use by process ${process.pid}`));
      assert.equal((await readFile(join(spoolDir, 'LOCK'), 'utf8')).trim(), String(process.pid), 'the holder keeps its LOCK');
    } finally {
      await gw.stop();
    }
  });
});
