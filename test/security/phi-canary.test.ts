import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { request, type Dispatcher } from 'undici';
import { createAuditStandIn, type AuditStandIn } from '../../dev/stand-ins/audit-logging.js';
import { TEST_USERS } from '../../dev/stand-ins/auth-rbac.js';
import { close as closeServer, listen } from '../../dev/stand-ins/http-util.js';
import { login, startAuthService, type AuthService } from '../helpers/auth-service.js';
import { shippedRoutes, startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { handmadeToken } from '../helpers/jwt.js';
import { until } from '../helpers/poll.js';
import { freePort } from '../helpers/ports.js';
import { signToken } from '../helpers/tokens.js';
import { startUpstream, type TestUpstream } from '../helpers/upstream.js';

/**
 * PHI canaries: unique strings sent wherever a client can put data (query, JSON body, a custom
 * header, Authorization, X-Break-Glass-Reason, cookies, login fields), to public, authenticated
 * and PHI routes and to the auth flows, with tracing and audit on. None may come out in a log
 * line, the metrics, an exported span or an audit event.
 */

const PROVIDER = TEST_USERS.find((u) => u.role === 'health_provider')!;
const ADMIN = TEST_USERS.find((u) => u.role === 'admin')!;

/** A minimal OTLP/HTTP JSON receiver: keeps every export body as text. */
async function startReceiver(): Promise<{ url: string; bodies: string[]; server: Server }> {
  const bodies: string[] = [];
  const server = createServer((req, res) => {
    let body = '';
    req.setEncoding('utf8');
    req.on('data', (c: string) => (body += c));
    req.on('end', () => {
      bodies.push(body);
      res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, bodies, server };
}

describe('PHI canaries never reach logs, metrics, spans or audit events', () => {
  let auth: AuthService;
  let upstream: TestUpstream;
  let receiver: Awaited<ReturnType<typeof startReceiver>>;
  let audit: AuditStandIn;
  let gw: TestGateway;
  let closed = false;

  /** Every canary sent, with where it was sent: the failure message names the leaking input. */
  const canaries = new Map<string, string>();
  const canary = (where: string) => {
    const value = `CANARY-PHI-${randomUUID()}`;
    canaries.set(value, where);
    return value;
  };
  /** Encoded forms (a Basic credential, a token) that carry a canary and must not appear either. */
  const encoded = new Map<string, string>();
  /** Request ids of every request sent, and those on authenticated routes (which the audit records). */
  const requestIds: string[] = [];
  const auditedIds: string[] = [];
  let metricsText = '';
  let statusText = '';
  let adminPort = 0;
  let spansText = '';
  let auditText = '';
  let logQueryValue = '';
  let logQueryRequestId = '';

  before(async () => {
    auth = await startAuthService();
    upstream = await startUpstream();
    receiver = await startReceiver();
    audit = createAuditStandIn();
    const auditPort = await listen(audit.server, 0);
    adminPort = await freePort();
    gw = await startTestGateway(
      shippedRoutes({
        services: { backend: { instances: [upstream.url] }, gone: { instances: [`http://127.0.0.1:${await freePort()}`], healthCheck: false, retry: false, outlierDetection: false } },
        routes: [
          { name: 'open-page', prefix: '/open', auth: 'public', service: 'backend' },
          { name: 'patient-records', pattern: '/api/v1/patients/:patientId/records', auth: 'required', phi: true, service: 'backend' },
          { name: 'lookup', path: '/api/v1/lookup', methods: ['GET'], auth: 'required', service: 'backend', logQuery: ['session_id'] },
          { name: 'gone-records', prefix: '/api/v1/gone', auth: 'required', phi: true, service: 'gone' },
        ],
      }),
      {
        AUTH_SERVICE_URL: auth.url,
        CHAT_HISTORY_URL: upstream.url,
        AUDIT_SERVICE_URL: `http://127.0.0.1:${auditPort}`,
        ADMIN_PORT: String(adminPort),
        OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url,
        // Nothing hidden from the check by its level.
        LOG_LEVEL: 'DEBUG',
        // Exercises the lockout path within the login route's own rate limit (10 a minute).
        LOGIN_MAX_FAILURES_PER_ACCOUNT: '3',
      },
    );
  });
  after(async () => {
    if (!closed) await gw?.close();
    await upstream?.close();
    await auth?.stop();
    if (audit) await closeServer(audit.server);
    if (receiver) await closeServer(receiver.server);
  });

  async function send(method: Dispatcher.HttpMethod, path: string, status: number, headers: Record<string, string> = {}, body?: unknown, audited = false): Promise<string> {
    const text = typeof body === 'string' ? body : body === undefined ? undefined : JSON.stringify(body);
    const res = await request(`${gw.url}${path}`, { method, headers: { ...(text !== undefined ? { 'content-type': 'application/json' } : {}), ...headers }, body: text });
    const answer = await res.body.text();
    assert.equal(res.statusCode, status, `${method} ${path}: ${answer}`);
    const id = res.headers['x-request-id'] as string;
    requestIds.push(id);
    if (audited) auditedIds.push(id);
    return id;
  }

  it('sends canaries through every input, on every kind of route', async () => {
    const provider = await login(gw.url, PROVIDER);
    const admin = await login(gw.url, ADMIN);
    const bearer = (t: string) => ({ authorization: `Bearer ${t}` });

    // A public route: query, custom header, cookie, body, Authorization, break-glass reason.
    await send('GET', `/open/page?ssn=${canary('query (public)')}&dob=${canary('second query value (public)')}`, 200, {
      'x-patient-name': canary('custom header (public)'),
      cookie: `patient=${canary('cookie (public)')}; theme=dark`,
    });
    await send('POST', '/open/form', 200, { 'x-break-glass-reason': canary('break-glass reason (public)'), authorization: `Bearer ${canary('bearer token (public)')}` }, { diagnosis: canary('JSON body (public)'), nested: { mrn: canary('nested JSON body (public)') } });

    // An authenticated PHI route with a valid token: query, headers, cookies, body.
    await send('GET', `/api/v1/patients/p-1/records?name=${canary('query (PHI route)')}`, 200, {
      ...bearer(provider.accessToken),
      'x-patient-name': canary('custom header (PHI route)'),
      cookie: `sid=${canary('cookie (PHI route)')}`,
    }, undefined, true);
    await send('POST', '/api/v1/patients/p-1/records', 200, bearer(provider.accessToken), { note: canary('JSON body (PHI route)'), allergies: [canary('JSON array (PHI route)')] }, true);

    // Bad credentials carrying canaries: refused with 401, each one audited as a refusal.
    await send('GET', '/api/v1/patients/p-2/records', 401, { authorization: `Bearer ${canary('bearer token (not a JWT)')}` }, undefined, true);
    const basic = Buffer.from(`${canary('Basic user')}:${canary('Basic password')}`).toString('base64');
    encoded.set(basic, 'Basic credential');
    await send('GET', '/api/v1/patients/p-2/records', 401, { authorization: `Basic ${basic}` }, undefined, true);
    const forged = handmadeToken({ alg: 'HS256', typ: 'JWT' }, { sub: canary('sub of a forged token'), role: 'health_provider', exp: Math.floor(Date.now() / 1000) + 600 }, 'bm90LWEtc2lnbmF0dXJl');
    encoded.set(forged, 'forged token');
    await send('GET', '/api/v1/patients/p-2/records', 401, bearer(forged), undefined, true);
    const expired = await signToken({ sub: canary('sub of an expired token'), expiresInSeconds: -3600 });
    encoded.set(expired, 'expired token');
    await send('GET', '/api/v1/patients/p-2/records', 401, bearer(expired), undefined, true);
    // A valid token with a claim the gateway does not use: the claim stays out of everything.
    const extraClaim = await signToken({ sub: 'canary-claims-user', role: 'health_provider', claims: { patient_name: canary('unused JWT claim') } });
    encoded.set(extraClaim, 'token with an extra claim');
    await send('GET', '/api/v1/patients/p-3/records', 200, bearer(extraClaim), undefined, true);

    // The shipped PHI route, with a session token from the auth service.
    await send('GET', `/api/v1/chat/history?session_id=${canary('chat session_id query')}&q=${canary('chat query')}`, 200, { ...bearer(provider.accessToken), cookie: `c=${canary('cookie (chat)')}` }, undefined, true);
    // Break-glass: the reason is PHI-bearing free text; the access itself is flagged, the reason never kept.
    await send('GET', `/api/v1/chat/history?session_id=${canary('break-glass query')}`, 200, { ...bearer(admin.accessToken), 'x-break-glass-reason': canary('break-glass reason') }, undefined, true);
    await send('GET', '/api/v1/chat/history', 403, bearer(admin.accessToken), undefined, true);
    await send('POST', '/api/v1/chat/history', 405, { ...bearer(provider.accessToken), 'x-patient-name': canary('custom header (405)') }, { note: canary('JSON body (405)') });

    // Login: canaries in the email and the password, through failures, the lockout and invalid bodies.
    const email = `${canary('login email')}@example.com`;
    for (let i = 0; i < 3; i++) await send('POST', '/api/v1/auth/login', 401, {}, { email, password: canary(`login password ${i}`) });
    await send('POST', '/api/v1/auth/login', 429, {}, { email, password: canary('login password past the lockout') });
    await send('POST', '/api/v1/auth/login', 401, {}, { email: PROVIDER.email, password: canary('wrong password of a real account') });
    await send('POST', '/api/v1/auth/login', 400, {}, `{"email": "${canary('malformed login JSON')}", `);
    await send('POST', '/api/v1/auth/login', 400, {}, { email: PROVIDER.email, password: 'x', [canary('unknown login field name')]: canary('unknown login field value') });
    // Refresh and logout with canary tokens.
    await send('POST', '/api/v1/auth/refresh', 400, {}, { refresh_token: canary('refresh token (not a JWT)') });
    const foreignRefresh = handmadeToken({ alg: 'HS256', typ: 'JWT' }, { sub: canary('sub of a refresh token'), typ: 'refresh', jti: canary('jti of a refresh token') });
    encoded.set(foreignRefresh, 'forged refresh token');
    await send('POST', '/api/v1/auth/refresh', 401, {}, { refresh_token: foreignRefresh });
    await send('POST', '/api/v1/auth/logout', 400, bearer(provider.accessToken), { refresh_token: foreignRefresh }, true);

    // An unknown path, and a PHI route whose service is down (the upstream-failure log line).
    await send('GET', `/nowhere?x=${canary('query (404)')}`, 404, { 'x-patient-name': canary('custom header (404)') });
    await send('GET', `/api/v1/gone/r-1?mrn=${canary('query (502)')}`, 502, { ...bearer(provider.accessToken), cookie: `p=${canary('cookie (502)')}` }, undefined, true);

    // logQuery: only session_id may show in the access log.
    logQueryValue = `session-${randomUUID()}`;
    logQueryRequestId = await send('GET', `/api/v1/lookup?patient=${canary('query beside session_id')}&session_id=${logQueryValue}&note=${canary('second query beside session_id')}`, 200, bearer(provider.accessToken), undefined, true);

    assert.ok(canaries.size >= 40, `${canaries.size} canaries sent`);
    // Every canary did reach the gateway's upstreams where it was meant to (the test is not vacuous).
    const upstreamSaw = JSON.stringify(upstream.received);
    assert.ok(upstreamSaw.includes([...canaries].find(([, where]) => where === 'custom header (PHI route)')![0]));

    const metrics = await request(`${gw.url}/metrics`);
    metricsText = await metrics.body.text();
    assert.equal(metrics.statusCode, 200);
    for (const path of ['/status', '/status.json']) {
      const page = await request(`http://127.0.0.1:${adminPort}${path}`);
      assert.equal(page.statusCode, 200);
      statusText += await page.body.text();
    }

    // Shut down: flushes the access log, exports the buffered spans, drains the audit spool.
    await gw.close();
    closed = true;
    spansText = receiver.bodies.join('\n');
    await until('the audit events of every authenticated request', 5_000, async () => (auditedIds.every((id) => JSON.stringify(audit.events).includes(id)) ? true : undefined));
    auditText = JSON.stringify(audit.events);
  });

  function assertNoCanary(sink: string, text: string): void {
    const leaks: string[] = [];
    for (const [value, where] of canaries) if (text.includes(value)) leaks.push(`${where} (${value})`);
    for (const [value, what] of encoded) if (text.includes(value)) leaks.push(what);
    assert.deepEqual(leaks, [], `${sink} contains canaries`);
  }

  it('no log line contains a canary', () => {
    assert.ok(gw.logs.length > requestIds.length, 'the log was captured');
    for (const id of requestIds) assert.ok(gw.logs.some((l) => l.request_id === id && (l.message === 'request' || l.message === 'slow request')), `access line of ${id}`);
    assert.ok(gw.logs.some((l) => l.message === 'break-glass access'));
    assert.ok(gw.logs.some((l) => l.message === 'login refused: too many failed attempts'));
    assert.ok(gw.logs.some((l) => l.message === 'upstream request failed'));
    for (const line of gw.logs) assertNoCanary(`the log line ${JSON.stringify(line).slice(0, 200)}`, JSON.stringify(line));
  });

  it('the status page and its JSON contain no canary', () => {
    assert.match(statusText, /patient-records/);
    assertNoCanary('/status and /status.json', statusText);
  });

  it('the metrics contain no canary', () => {
    assert.match(metricsText, /api_gateway_requests_total/);
    assertNoCanary('/metrics', metricsText);
  });

  it('no exported span contains a canary', () => {
    assert.ok(spansText.includes('GET /api/v1/chat/history') && spansText.includes('POST /api/v1/auth/login'), 'the spans of the requests were exported');
    assertNoCanary('the exported spans', spansText);
  });

  it('no audit event contains a canary', () => {
    assert.ok(audit.events.length >= auditedIds.length, `${audit.events.length} audit events`);
    const breakGlass = (audit.events as Array<Record<string, unknown>>).filter((e) => e.break_glass === true);
    assert.ok(breakGlass.length >= 1, 'the break-glass access is in the audit trail');
    assertNoCanary('the audit events', auditText);
  });

  it('a route with logQuery: [session_id] logs that one value and no other query value', () => {
    const line = gw.logs.find((l) => l.request_id === logQueryRequestId && l.message === 'request');
    assert.ok(line, 'the access line of the logQuery request');
    assert.deepEqual(line.query, { session_id: logQueryValue });
    assert.equal(line.path, '/api/v1/lookup', 'the path without its query');
    // The other routes log no query at all.
    for (const l of gw.logs) if (l.message === 'request' && l.request_id !== logQueryRequestId) assert.equal(l.query, undefined, JSON.stringify(l));
  });
});
