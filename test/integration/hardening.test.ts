import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import type { IncomingHttpHeaders } from 'node:http';
import { connect as http2Connect, type IncomingHttpHeaders as Http2Headers } from 'node:http2';
import { request as httpsRequest } from 'node:https';
import { connect } from 'node:net';
import { Readable } from 'node:stream';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { request } from 'undici';
import { createAuthStandIn, TEST_USERS } from '../../dev/stand-ins/auth-rbac.js';
import { close, listen } from '../../dev/stand-ins/http-util.js';
import { shippedRoutes, startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { expectProblem, send, type Answer } from '../helpers/http.js';
import { until } from '../helpers/poll.js';
import { freePort } from '../helpers/ports.js';
import { header, parseResponses, problemOf, type RawResponse } from '../helpers/raw-http.js';
import { TEST_SECRET } from '../helpers/tokens.js';
import { startUpstream, type TestUpstream } from '../helpers/upstream.js';

/**
 * Hardening fixes, each checked from the outside:
 * - a login the gateway refuses itself (no healthy auth-rbac instance) gives its attempt back;
 * - a refusal of a request whose body is still streaming closes the connection at once;
 * - an upstream's Strict-Transport-Security never replaces or doubles the gateway's;
 * - /health counts a discovered service with no instance as unhealthy.
 */

/** The gateway's own load signals pinned far away: /health answers about the dependencies only. */
const HEALTH_ENV = { HEALTH_CACHE_MS: '0', MEMORY_LIMIT_MB: '65536', HEALTH_EVENT_LOOP_THRESHOLD_MS: '10000' };

interface ServiceHealth {
  status: string;
  healthy: number;
  total: number;
}

interface HealthBody {
  status: string;
  dependencies: Record<string, string>;
  audit?: { status: string };
  services: Record<string, ServiceHealth>;
}

async function health(url: string): Promise<{ statusCode: number; body: HealthBody }> {
  const res = await send(`${url}/health`);
  return { statusCode: res.statusCode, body: JSON.parse(res.text) as HealthBody };
}

/** Waits until /health reports `healthy` instances in rotation for a service. */
function untilInRotation(gw: TestGateway, service: string, healthy: number, timeoutMs = 5_000): Promise<true> {
  return until(`${service} with ${healthy} instance(s) in rotation`, timeoutMs, async () => ((await health(gw.url)).body.services[service]?.healthy === healthy ? true : undefined), 25);
}

// ---------------------------------------------------------------------------------------------
// 1. login attempts the gateway refused itself are given back

const provider = TEST_USERS.find((u) => u.email === 'provider@hospital.com')!;
const LOGIN = '/api/v1/auth/login';

function attemptLogin(gw: TestGateway): Promise<Answer> {
  return send(`${gw.url}${LOGIN}`, { json: { email: provider.email, password: provider.password } });
}

describe('login attempts refused by the gateway itself (shipped routes, LOGIN_MAX_FAILURES_PER_ACCOUNT=2)', () => {
  let authPort = 0;
  let gw: TestGateway | undefined;
  let authServer: ReturnType<typeof createAuthStandIn> | undefined;

  after(async () => {
    await gw?.close();
    if (authServer?.listening) await close(authServer);
  });

  /** The shipped routes with auth-rbac at a port nothing listens on (yet), with the given health policy. */
  async function gatewayWithDeadAuth(authRbac: Record<string, unknown>): Promise<TestGateway> {
    authPort = await freePort();
    const authUrl = `http://127.0.0.1:${authPort}`;
    return startTestGateway(shippedRoutes({ services: { 'auth-rbac': { instances: [authUrl], healthPath: '/health', ...authRbac } } }), {
      ...HEALTH_ENV,
      AUTH_SERVICE_URL: authUrl,
      CHAT_HISTORY_URL: 'http://127.0.0.1:9',
      LOGIN_MAX_FAILURES_PER_ACCOUNT: '2',
      AUDIT_ENABLED: 'false',
    });
  }

  /** The auth-rbac stand-in, listening on the port the gateway was pointed at. */
  async function authComesUp(): Promise<void> {
    authServer = createAuthStandIn({ jwtSecret: TEST_SECRET, expiresIn: 600 });
    await listen(authServer, authPort);
  }

  async function teardown(): Promise<void> {
    await gw?.close();
    gw = undefined;
    if (authServer?.listening) await close(authServer);
    authServer = undefined;
  }

  it('auth-rbac out of rotation by its health checks: four 502 GW_NO_HEALTHY_UPSTREAM for one account, never 429; the login succeeds once auth-rbac is back', { timeout: 15_000 }, async () => {
    try {
      gw = await gatewayWithDeadAuth({ healthCheck: { intervalMs: 100, timeoutMs: 100, unhealthyThreshold: 1, healthyThreshold: 1 } });
      await untilInRotation(gw, 'auth-rbac', 0);
      for (let i = 1; i <= 4; i++) {
        const res = await attemptLogin(gw);
        assert.notEqual(res.statusCode, 429, `attempt ${i} was refused as too many failed sign-ins, though none reached auth-rbac: ${res.text}`);
        expectProblem(res, 502, 'GW_NO_HEALTHY_UPSTREAM');
      }

      await authComesUp();
      await untilInRotation(gw, 'auth-rbac', 1);
      const ok = await attemptLogin(gw);
      assert.equal(ok.statusCode, 200, `the login once auth-rbac is back: ${ok.text}`);
      assert.equal(typeof (JSON.parse(ok.text) as { access_token?: unknown }).access_token, 'string');
    } finally {
      await teardown();
    }
  });

  it('auth-rbac refusing connections, then ejected: 502 GW_UPSTREAM_UNAVAILABLE and 502 GW_NO_HEALTHY_UPSTREAM for one account, never 429; the login succeeds once auth-rbac is back', { timeout: 15_000 }, async () => {
    try {
      gw = await gatewayWithDeadAuth({ healthCheck: false, outlierDetection: { consecutiveFailures: 2, baseEjectionMs: 1_500, maxEjectionMs: 1_500, maxEjectedPercent: 100 } });
      const codes: string[] = [];
      for (let i = 1; i <= 4; i++) {
        const res = await attemptLogin(gw);
        assert.notEqual(res.statusCode, 429, `attempt ${i} was refused as too many failed sign-ins, though none reached auth-rbac: ${res.text}`);
        codes.push((JSON.parse(res.text) as { code: string }).code);
      }
      // Two connection failures eject the only instance: the next two are the gateway's own refusals.
      assert.deepEqual(codes, ['GW_UPSTREAM_UNAVAILABLE', 'GW_UPSTREAM_UNAVAILABLE', 'GW_NO_HEALTHY_UPSTREAM', 'GW_NO_HEALTHY_UPSTREAM']);

      await authComesUp();
      await untilInRotation(gw, 'auth-rbac', 1, 5_000);
      const ok = await attemptLogin(gw);
      assert.equal(ok.statusCode, 200, `the login once auth-rbac is back: ${ok.text}`);
    } finally {
      await teardown();
    }
  });
});

// ---------------------------------------------------------------------------------------------
// 2. a refused upload whose body is still streaming does not hold the connection

interface StreamedUpload {
  /** Milliseconds from the request head to the first byte of the answer; null without an answer. */
  answeredMs: number | null;
  /** The server closed the connection before the deadline. */
  closed: boolean;
  responses: RawResponse[];
  text: string;
}

/**
 * Sends a request head and the first part of its body, then keeps sending more of the body
 * every 50 ms and never ends it, until the server closes the connection or `deadlineMs` passes.
 */
function streamingUpload(port: number, head: string, part: () => string, deadlineMs: number): Promise<StreamedUpload> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    const socket = connect(port, '127.0.0.1');
    const started = performance.now();
    let answeredMs: number | null = null;
    let closed = false;
    let settled = false;
    const feeder = setInterval(() => {
      if (socket.writable) socket.write(part());
    }, 50);
    const finish = () => {
      if (settled) return;
      settled = true;
      clearInterval(feeder);
      clearTimeout(deadline);
      const bytes = Buffer.concat(chunks);
      let responses: RawResponse[] = [];
      try {
        responses = parseResponses(bytes);
      } catch {
        // an answer cut short is reported through `text`
      }
      resolve({ answeredMs, closed, responses, text: bytes.toString('latin1') });
    };
    const deadline = setTimeout(() => {
      socket.destroy();
      finish();
    }, deadlineMs);
    socket.on('data', (d: Buffer) => {
      answeredMs ??= performance.now() - started;
      chunks.push(d);
    });
    // Writing into a connection the server has closed: expected.
    socket.on('error', () => undefined);
    socket.on('close', () => {
      closed = true;
      finish();
    });
    socket.write(head + part());
  });
}

describe('a request refused by the circuit breaker while its body is still streaming', () => {
  let upstream: TestUpstream;
  let gw: TestGateway;
  let release: () => void = () => undefined;
  let held: Promise<unknown> | null = null;

  before(async () => {
    const gate = new Promise<void>((resolve) => (release = resolve));
    upstream = await startUpstream(async (req, res) => {
      if (req.url === '/upload/held') await gate;
      let bytes = 0;
      for await (const chunk of req) bytes += (chunk as Buffer).length;
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ bytes }));
    });
    gw = await startTestGateway(
      {
        services: { backend: { instances: [upstream.url], healthCheck: false, maxConcurrentRequests: 1 } },
        routes: [{ name: 'upload', prefix: '/upload', service: 'backend', methods: ['GET', 'POST'], auth: 'public', timeoutMs: 20_000, maxBodyBytes: 10_000_000 }],
      },
      { AUDIT_ENABLED: 'false' },
    );
    held = send(`${gw.url}/upload/held`, { timeoutMs: 20_000 });
    await until('the first request held at the upstream', 3_000, async () => (upstream.received.length === 1 ? true : undefined));
  });
  after(async () => {
    release();
    await held?.catch(() => undefined);
    await gw.close();
    await upstream.close();
  });

  function assertRefusedAndClosed(upload: StreamedUpload): void {
    assert.ok(upload.answeredMs !== null, `no answer at all: ${JSON.stringify(upload.text)}`);
    assert.ok(upload.closed, `the gateway answered but kept the connection open while the body streamed: ${JSON.stringify(upload.text)}`);
    assert.equal(upload.responses.length, 1, upload.text);
    const res = upload.responses[0]!;
    assert.equal(res.status, 503, upload.text);
    assert.equal(problemOf(res).code, 'GW_UPSTREAM_OVERLOADED');
    assert.match(header(res, 'retry-after') ?? '', /^[123]$/);
    assert.equal(header(res, 'connection')?.toLowerCase(), 'close', `the refusal must say Connection: close: ${upload.text}`);
    assert.ok(upload.answeredMs < 3_000, `answered after ${upload.answeredMs.toFixed(0)} ms`);
  }

  it('a chunked upload gets 503 GW_UPSTREAM_OVERLOADED with Connection: close at once, and the connection is closed', { timeout: 10_000 }, async () => {
    const head = 'POST /upload/chunked HTTP/1.1\r\nHost: gateway.test\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n';
    const upload = await streamingUpload(gw.port, head, () => '400\r\n' + 'x'.repeat(0x400) + '\r\n', 3_000);
    assertRefusedAndClosed(upload);
    assert.equal(upstream.received.length, 1, 'the refused upload never reached the upstream');
  });

  it('an upload with a Content-Length not yet sent in full gets the same answer, and the connection is closed', { timeout: 10_000 }, async () => {
    const head = 'POST /upload/sized HTTP/1.1\r\nHost: gateway.test\r\nContent-Type: application/octet-stream\r\nContent-Length: 5000000\r\n\r\n';
    const upload = await streamingUpload(gw.port, head, () => 'x'.repeat(1024), 3_000);
    assertRefusedAndClosed(upload);
    assert.equal(upstream.received.length, 1, 'the refused upload never reached the upstream');
  });

  it('once the held request ends, a chunked upload passes: the refusals left nothing counted in flight', { timeout: 10_000 }, async () => {
    release();
    const first = (await held) as Answer;
    assert.equal(first.statusCode, 200, first.text);
    const body = Buffer.alloc(50_000, 'y');
    const res = await request(`${gw.url}/upload/after`, {
      method: 'POST',
      headers: { 'content-type': 'application/octet-stream' },
      // A stream without a length: undici sends it chunked.
      body: Readable.from([body.subarray(0, 25_000), body.subarray(25_000)]),
      headersTimeout: 5_000,
      bodyTimeout: 5_000,
    });
    const text = await res.body.text();
    assert.equal(res.statusCode, 200, text);
    assert.equal((JSON.parse(text) as { bytes: number }).bytes, body.length);
  });
});

// ---------------------------------------------------------------------------------------------
// 3. an upstream's Strict-Transport-Security never overrides the gateway's

const HSTS = 'max-age=31536000; includeSubDomains';

interface TlsAnswer {
  status: number;
  headers: IncomingHttpHeaders;
  rawHeaders: string[];
  body: string;
}

function h1(port: number, path: string, ca: Buffer, headers: Record<string, string> = {}): Promise<TlsAnswer> {
  return new Promise((resolve, reject) => {
    // node:https offers no ALPN: the gateway answers HTTP/1.1.
    const req = httpsRequest({ host: '127.0.0.1', port, path, ca, agent: false, headers, timeout: 5_000 }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, rawHeaders: res.rawHeaders, body: Buffer.concat(chunks).toString('utf8') }));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error(`no answer to ${path} within 5 s`)));
    req.on('error', reject);
    req.end();
  });
}

function h2(port: number, path: string, ca: Buffer, headers: Record<string, string> = {}): Promise<{ status: number; headers: Http2Headers; body: string }> {
  return new Promise((resolve, reject) => {
    const session = http2Connect(`https://127.0.0.1:${port}`, { ca });
    session.on('error', reject);
    const stream = session.request({ ':path': path, ...headers });
    let got: Http2Headers = {};
    const chunks: Buffer[] = [];
    stream.on('response', (h) => (got = h));
    stream.on('data', (c: Buffer) => chunks.push(c));
    stream.on('end', () => {
      session.close();
      resolve({ status: Number(got[':status']), headers: got, body: Buffer.concat(chunks).toString('utf8') });
    });
    stream.on('error', reject);
    stream.end();
  });
}

function stsFields(rawHeaders: string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < rawHeaders.length; i += 2) if (rawHeaders[i]!.toLowerCase() === 'strict-transport-security') out.push(rawHeaders[i + 1]!);
  return out;
}

describe('HSTS over TLS with an upstream that sends its own Strict-Transport-Security', () => {
  let dir: string;
  let cert: Buffer;
  let upstream: TestUpstream;
  let gw: TestGateway;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'gw-hsts-'));
    const certFile = join(dir, 'gw.crt');
    const keyFile = join(dir, 'gw.key');
    execFileSync(
      'openssl',
      ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', keyFile, '-out', certFile, '-days', '1', '-subj', '/CN=localhost', '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1'],
      { stdio: ['ignore', 'ignore', 'pipe'] },
    );
    cert = await readFile(certFile);
    upstream = await startUpstream((req, res) => {
      req.resume();
      req.on('end', () => {
        // One upstream turns HSTS off, another sends two fields, one of them weaker.
        res.setHeader('strict-transport-security', req.url === '/twice' ? ['max-age=0', 'max-age=60'] : 'max-age=0');
        res.writeHead(200, { 'content-type': 'text/plain' }).end('upstream');
      });
    });
    gw = await startTestGateway(
      {
        services: { backend: { instances: [upstream.url], healthCheck: false } },
        routes: [
          { name: 'plain', prefix: '/plain', rewrite: '/', service: 'backend', auth: 'public' },
          { name: 'twice', prefix: '/twice', rewrite: '/twice', service: 'backend', auth: 'public' },
          { name: 'cors', prefix: '/cors', rewrite: '/', service: 'backend', auth: 'public', cors: { origins: ['https://app.example'] } },
        ],
      },
      { TLS_CERT_FILE: certFile, TLS_KEY_FILE: keyFile, AUDIT_ENABLED: 'false' },
    );
  });
  after(async () => {
    await gw?.close();
    await upstream?.close();
    await rm(dir, { recursive: true, force: true });
  });

  for (const [what, path, headers] of [
    ['an upstream with max-age=0', '/plain/x', {}],
    ['an upstream with two fields', '/twice', {}],
    ['a CORS route answering an allowed Origin', '/cors/x', { origin: 'https://app.example' }],
  ] as Array<[string, string, Record<string, string>]>) {
    it(`HTTP/1.1, ${what}: exactly one Strict-Transport-Security field, the gateway's`, async () => {
      const res = await h1(gw.port, path, cert, headers);
      assert.equal(res.status, 200, res.body);
      assert.equal(res.body, 'upstream', 'the answer is the upstream one');
      assert.deepEqual(stsFields(res.rawHeaders), [HSTS]);
      if (headers.origin !== undefined) assert.equal(res.headers['access-control-allow-origin'], headers.origin);
    });

    it(`HTTP/2, ${what}: the one Strict-Transport-Security value is the gateway's`, async () => {
      const res = await h2(gw.port, path, cert, headers);
      assert.equal(res.status, 200, res.body);
      assert.equal(res.body, 'upstream');
      assert.equal(res.headers['strict-transport-security'], HSTS);
    });
  }
});

// ---------------------------------------------------------------------------------------------
// 4. /health and a discovered service with no instance

describe('/health with a discovered service that has no instance', () => {
  let auth: TestUpstream;
  let backend: TestUpstream;
  let gw: TestGateway;

  before(async () => {
    // Everything else healthy: the auth probe answered, a listed service in rotation, no audit.
    auth = await startUpstream();
    backend = await startUpstream();
    gw = await startTestGateway(
      {
        services: {
          backend: { instances: [backend.url], healthCheck: { intervalMs: 100, timeoutMs: 100 } },
          ghost: { discovery: { host: 'no-such-host.invalid', port: 80, intervalMs: 200 } },
        },
        routes: [
          { name: 'backend', prefix: '/backend', service: 'backend', auth: 'public' },
          { name: 'ghost', prefix: '/ghost', service: 'ghost', auth: 'public' },
        ],
      },
      { ...HEALTH_ENV, AUTH_SERVICE_URL: auth.url, AUDIT_ENABLED: 'false' },
    );
  });
  after(async () => {
    await gw.close();
    await backend.close();
    await auth.close();
  });

  it('reports it { status: unhealthy, healthy: 0, total: 0 } and the gateway degraded (HTTP 200), everything else healthy', async () => {
    const { statusCode, body } = await health(gw.url);
    assert.equal(statusCode, 200, JSON.stringify(body));
    assert.deepEqual(body.services.ghost, { status: 'unhealthy', healthy: 0, total: 0 });
    assert.deepEqual(body.services.backend, { status: 'healthy', healthy: 1, total: 1 });
    assert.deepEqual(body.dependencies, { 'auth-service': 'healthy', database: 'healthy' });
    assert.equal(body.status, 'degraded', `the service with no instance makes the gateway degraded: ${JSON.stringify(body)}`);
    // Ready all the same: a replica is not pulled for a service outage.
    const ready = await send(`${gw.url}/health/ready`);
    assert.equal(ready.statusCode, 200, ready.text);
  });

  it('a request to it is refused 502 GW_NO_HEALTHY_UPSTREAM, and the listed service still serves', async () => {
    expectProblem(await send(`${gw.url}/ghost/x`), 502, 'GW_NO_HEALTHY_UPSTREAM');
    const ok = await send(`${gw.url}/backend/x`);
    assert.equal(ok.statusCode, 200, ok.text);
  });
});
