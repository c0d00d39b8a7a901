import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { copyFile, mkdir, mkdtemp, readFile, rename, rm, writeFile } from 'node:fs/promises';
import type { IncomingHttpHeaders } from 'node:http';
import { connect as http2Connect, type ClientHttp2Session, type IncomingHttpHeaders as Http2Headers } from 'node:http2';
import { createServer as createHttpsServer, request as httpsRequest, type Server as HttpsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { connect as tlsConnect, createServer as createTlsServer, type ConnectionOptions, type TLSSocket } from 'node:tls';
import { after, before, describe, it } from 'node:test';
import { request } from 'undici';
import { buildGateway } from '../../src/app.js';
import { ConfigError, loadConfig } from '../../src/config/load.js';
import { createLoggers } from '../../src/observability/logger.js';
import { startGateway } from '../../src/start.js';
import { LogCapture, routesFor, startTestGateway, writeRoutesFile, type TestGateway } from '../helpers/gateway.js';
import { expectProblem, read } from '../helpers/http.js';
import { until } from '../helpers/poll.js';
import { TEST_SECRET } from '../helpers/tokens.js';
import { HEALTH_CHECK_AGENT, startUpstream, type TestUpstream } from '../helpers/upstream.js';

/**
 * TLS termination and HTTP/2 (src/tls.ts, src/app.ts): both protocols on one port by ALPN, HSTS,
 * certificate renewal without a restart, the upstream CA bundle, production's TLS requirement
 * and shutdown with HTTP/2 sessions open. Certificates are made with openssl for each run.
 */

const HSTS = 'max-age=31536000; includeSubDomains';
/** The gateway's own load signals pinned far away: /health answers about the services only. */
const HEALTH_ENV = { HEALTH_CACHE_MS: '0', MEMORY_LIMIT_MB: '65536', HEALTH_EVENT_LOOP_THRESHOLD_MS: '10000' };
const REFUSED = 'renewed TLS certificate refused; the current one stays';
/** A client that offers TLS 1.1 only (SECLEVEL=0: OpenSSL 3 would not offer it otherwise). */
const TLS_1_1: ConnectionOptions = { minVersion: 'TLSv1.1', maxVersion: 'TLSv1.1', ciphers: 'DEFAULT@SECLEVEL=0' };

// ---------------------------------------------------------------------------------------------
// certificates

interface Pair {
  certFile: string;
  keyFile: string;
  cert: Buffer;
  key: Buffer;
  fingerprint: string;
}

function openssl(args: string[]): void {
  execFileSync('openssl', args, { stdio: ['ignore', 'ignore', 'pipe'] });
}

/** P-256 keys: as good as RSA for these tests, and made in milliseconds. */
const EC_KEY = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
const SAN = 'subjectAltName=DNS:localhost,IP:127.0.0.1';

async function pairFrom(certFile: string, keyFile: string): Promise<Pair> {
  const cert = await readFile(certFile);
  return { certFile, keyFile, cert, key: await readFile(keyFile), fingerprint: new X509Certificate(cert).fingerprint256 };
}

/** A self-signed certificate for localhost and 127.0.0.1 (openssl picks a random serial). */
async function selfSigned(dir: string, name: string, cn: string): Promise<Pair> {
  const certFile = join(dir, `${name}.crt`);
  const keyFile = join(dir, `${name}.key`);
  openssl(['req', '-x509', ...EC_KEY, '-keyout', keyFile, '-out', certFile, '-days', '1', '-subj', `/CN=${cn}`, '-addext', SAN]);
  return pairFrom(certFile, keyFile);
}

/** A certificate authority of the test's own and a localhost leaf it signed. */
async function caAndLeaf(dir: string): Promise<{ ca: Pair; leaf: Pair }> {
  const caCert = join(dir, 'ca.crt');
  const caKey = join(dir, 'ca.key');
  openssl(['req', '-x509', ...EC_KEY, '-keyout', caKey, '-out', caCert, '-days', '1', '-subj', '/CN=Gateway Test Upstream CA']);
  const csr = join(dir, 'leaf.csr');
  const ext = join(dir, 'leaf.ext');
  await writeFile(ext, `${SAN}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n`);
  openssl(['req', '-new', ...EC_KEY, '-keyout', join(dir, 'leaf.key'), '-out', csr, '-subj', '/CN=localhost']);
  openssl(['x509', '-req', '-in', csr, '-CA', caCert, '-CAkey', caKey, '-set_serial', '0x5eed', '-days', '1', '-out', join(dir, 'leaf.crt'), '-extfile', ext]);
  return { ca: await pairFrom(caCert, caKey), leaf: await pairFrom(join(dir, 'leaf.crt'), join(dir, 'leaf.key')) };
}

// ---------------------------------------------------------------------------------------------
// clients

interface H1Answer {
  status: number;
  headers: IncomingHttpHeaders;
  body: string;
  httpVersion: string;
  /** What ALPN settled on: false when nothing was negotiated. */
  alpn: string | false | null;
}

/** One HTTP/1.1 request over TLS on a connection of its own (node:https, no ALPN unless asked). */
function h1(port: number, path: string, ca: Buffer | Buffer[], options: { ALPNProtocols?: string[]; headers?: Record<string, string> } = {}): Promise<H1Answer> {
  return new Promise((resolve, reject) => {
    const req = httpsRequest(
      { host: '127.0.0.1', port, path, ca, agent: false, headers: options.headers, ...(options.ALPNProtocols ? { ALPNProtocols: options.ALPNProtocols } : {}), timeout: 5_000 },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () =>
          resolve({
            status: res.statusCode!,
            headers: res.headers,
            body: Buffer.concat(chunks).toString('utf8'),
            httpVersion: res.httpVersion,
            alpn: (res.socket as unknown as { alpnProtocol: string | false | null }).alpnProtocol,
          }),
        );
        res.on('error', reject);
      },
    );
    req.on('timeout', () => req.destroy(new Error(`no answer to ${path} within 5 s`)));
    req.on('error', reject);
    req.end();
  });
}

/** An HTTP/2 session to the gateway, once the TLS handshake is done. */
function h2Session(port: number, ca: Buffer | Buffer[]): Promise<ClientHttp2Session> {
  return new Promise((resolve, reject) => {
    const session = http2Connect(`https://127.0.0.1:${port}`, { ca });
    session.once('connect', () => {
      session.off('error', reject);
      // A GOAWAY or a reset after the test is done with the session is not a failure.
      session.on('error', () => undefined);
      resolve(session);
    });
    session.once('error', reject);
  });
}

interface H2Answer {
  status: number;
  headers: Http2Headers;
  body: string;
}

function h2Request(session: ClientHttp2Session, path: string, headers: Record<string, string> = {}, body?: string | Buffer): Promise<H2Answer> {
  return new Promise((resolve, reject) => {
    const stream = session.request({ ':path': path, ...headers });
    stream.setTimeout(5_000, () => stream.close());
    let head: Http2Headers | undefined;
    const chunks: Buffer[] = [];
    stream.on('response', (h) => (head = h));
    stream.on('data', (c: Buffer) => chunks.push(c));
    stream.on('end', () => {
      if (head === undefined) reject(new Error(`stream of ${path} ended without a response`));
      else resolve({ status: Number(head[':status']), headers: head, body: Buffer.concat(chunks).toString('utf8') });
    });
    stream.on('error', reject);
    stream.on('close', () => {
      if (head === undefined) reject(new Error(`stream of ${path} closed (code ${stream.rstCode}) without a response`));
    });
    // Without Content-Length, as HTTP/2 allows (RFC 9113 8.1): the DATA frames carry the body.
    stream.end(body);
  });
}

/** Closes a client session; a session the server already ended is fine. */
async function closeSession(session: ClientHttp2Session | undefined): Promise<void> {
  if (session === undefined || session.destroyed) return;
  await new Promise<void>((resolve) => {
    session.close(() => resolve());
    setTimeout(() => {
      session.destroy();
      resolve();
    }, 1_000).unref();
  });
}

interface Handshake {
  protocol: string | null;
  alpn: string | false | null;
  fingerprint: string;
}

/** A bare TLS handshake: which version, which ALPN protocol, which certificate. */
function handshake(port: number, options: ConnectionOptions = {}): Promise<Handshake> {
  return new Promise((resolve, reject) => {
    const socket = tlsConnect({ host: '127.0.0.1', port, rejectUnauthorized: false, ...options }, () => {
      const result = { protocol: socket.getProtocol(), alpn: socket.alpnProtocol, fingerprint: socket.getPeerCertificate().fingerprint256 };
      socket.end();
      resolve(result);
    });
    socket.setTimeout(5_000, () => socket.destroy(new Error('no TLS handshake within 5 s')));
    socket.once('error', reject);
  });
}

/** The certificate the server presents to a new connection. */
async function servedFingerprint(port: number): Promise<string> {
  return (await handshake(port)).fingerprint;
}

function tlsEnv(pair: Pair, extra: Record<string, string> = {}): Record<string, string> {
  return { TLS_CERT_FILE: pair.certFile, TLS_KEY_FILE: pair.keyFile, ...HEALTH_ENV, ...extra };
}

/** What the upstreams here echo: the request as it arrived. */
interface Echo {
  method: string;
  url: string;
  headers: Record<string, string>;
  body?: string;
}

/**
 * An upstream that echoes the request with its body; under /h2-settings it also answers with an
 * HTTP2-Settings field, which HTTP/1.1 carries but HTTP/2 forbids (connection-specific).
 */
function echoUpstream(): Promise<TestUpstream> {
  return startUpstream((req, res, entry) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      entry.bodyBytes = body.length;
      const text = JSON.stringify({ method: entry.method, url: entry.url, headers: entry.headers, body: body.toString('utf8') });
      const extra = req.url!.startsWith('/h2-settings') ? { 'http2-settings': 'AAMAAABkAAQAoAAAAAIAAAAA' } : {};
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text), ...extra }).end(text);
    });
  });
}

/** Waits for the TLS socket's peer to close it, up to `ms`; resolves with the wait or 'timeout'. */
async function closedWithin(socket: { once(event: 'close', cb: () => void): unknown; closed?: boolean; destroyed?: boolean }, ms: number): Promise<number | 'timeout'> {
  const started = performance.now();
  if (socket.closed === true || socket.destroyed === true) return 0;
  return within(
    new Promise<number>((resolve) => socket.once('close', () => resolve(performance.now() - started))),
    ms,
  );
}

/** An HTTP/1.1 keep-alive request on a raw TLS socket, left open once the answer is in (answers with Content-Length only). */
function h1KeepAlive(port: number, ca: Buffer, path: string): Promise<{ socket: TLSSocket; head: string }> {
  return new Promise((resolve, reject) => {
    const socket = tlsConnect({ host: '127.0.0.1', port, ca, ALPNProtocols: ['http/1.1'] }, () => {
      socket.write(`GET ${path} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n\r\n`);
    });
    let text = '';
    socket.on('data', (d: Buffer) => {
      text += d.toString('latin1');
      const end = text.indexOf('\r\n\r\n');
      const length = /\r\ncontent-length: (\d+)/i.exec(text);
      if (end !== -1 && length !== null && text.length >= end + 4 + Number(length[1])) {
        socket.setTimeout(0);
        resolve({ socket, head: text.slice(0, end) });
      }
    });
    socket.on('error', reject);
    socket.setTimeout(5_000, () => socket.destroy(new Error(`no complete answer to ${path} within 5 s: ${JSON.stringify(text)}`)));
  });
}

/** Resolves with what `promise` gave, or 'timeout' after `ms`: a hang fails the test, not the run. */
async function within<T>(promise: Promise<T>, ms: number): Promise<T | 'timeout'> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([promise, new Promise<'timeout'>((resolve) => (timer = setTimeout(() => resolve('timeout'), ms)))]);
  } finally {
    clearTimeout(timer);
  }
}

let workDir: string;
let first: Pair;

/**
 * Runs the real start-up (src/start.ts) with the routes and environment given, expecting a
 * ConfigError: its problems. Everything it could leave behind lives in folders removed here.
 */
async function refusedStart(routes: unknown, env: Record<string, string>): Promise<string[]> {
  const written = await writeRoutesFile(routes);
  try {
    const running = await startGateway(
      { HOST: '127.0.0.1', PORT: '0', JWT_SECRET: TEST_SECRET, AUTH_SERVICE_URL: 'http://127.0.0.1:9', ROUTES_FILE: written.file, ROUTES_WATCH: 'false', AUDIT_SPOOL_DIR: join(written.dir, 'audit-spool'), ...env },
      new LogCapture(),
    );
    await running.gateway.close();
  } catch (err) {
    assert.ok(err instanceof ConfigError, String(err));
    return err.problems;
  } finally {
    await rm(written.dir, { recursive: true, force: true });
  }
  assert.fail('the gateway started');
}

before(async () => {
  workDir = await mkdtemp(join(tmpdir(), 'gw-tls-'));
  first = await selfSigned(workDir, 'gateway', 'localhost');
});
after(async () => {
  await rm(workDir, { recursive: true, force: true });
});

// ---------------------------------------------------------------------------------------------

describe('HTTPS with HTTP/2 by ALPN (the default)', () => {
  let upstream: TestUpstream;
  let gw: TestGateway;
  let session: ClientHttp2Session | undefined;

  before(async () => {
    upstream = await echoUpstream();
    gw = await startTestGateway(
      routesFor(upstream.url, [
        { name: 'echo', prefix: '/echo', rewrite: '/', auth: 'public' },
        { name: 'hosted', prefix: '/hosted', rewrite: '/', auth: 'public', preserveHost: true },
        { name: 'small', prefix: '/small', rewrite: '/', auth: 'public', maxBodyBytes: 1000 },
      ]),
      tlsEnv(first),
    );
    session = await h2Session(gw.port, first.cert);
  });
  after(async () => {
    await closeSession(session);
    await gw?.close();
    await upstream?.close();
  });

  it('proxies an HTTP/1.1 request (no ALPN offered) with X-Forwarded-Proto https and HSTS', async () => {
    const res = await h1(gw.port, '/echo/items?x=1', first.cert);
    assert.equal(res.status, 200, res.body);
    assert.equal(res.httpVersion, '1.1');
    assert.equal(res.alpn, false, 'node:https offers no ALPN: the server must not pick one');
    assert.equal(res.headers['strict-transport-security'], HSTS);
    const echo = JSON.parse(res.body) as Echo;
    assert.equal(echo.url, '/items?x=1');
    assert.equal(echo.headers['x-forwarded-proto'], 'https');
    assert.equal(echo.headers['x-forwarded-host'], `127.0.0.1:${gw.port}`);
  });

  it('answers HTTP/1.1 to a client that offers only http/1.1 by ALPN', async () => {
    const res = await h1(gw.port, '/echo/a', first.cert, { ALPNProtocols: ['http/1.1'] });
    assert.equal(res.status, 200);
    assert.equal(res.alpn, 'http/1.1');
    assert.equal(res.httpVersion, '1.1');
  });

  it('negotiates h2 for a client that offers it, and proxies with X-Forwarded-Proto https and HSTS', async () => {
    assert.equal(session!.alpnProtocol, 'h2');
    const both = await handshake(gw.port, { ALPNProtocols: ['h2', 'http/1.1'] });
    assert.equal(both.alpn, 'h2', 'a client offering h2 and http/1.1 gets h2');

    const res = await h2Request(session!, '/echo/items?y=2', { 'x-request-id': 'h2-proxied-1' });
    assert.equal(res.status, 200, res.body);
    assert.equal(res.headers['strict-transport-security'], HSTS);
    assert.equal(res.headers.connection, undefined);
    assert.equal(res.headers['x-request-id'], 'h2-proxied-1');
    const echo = JSON.parse(res.body) as Echo;
    assert.equal(echo.url, '/items?y=2');
    assert.equal(echo.method, 'GET');
    assert.equal(echo.headers['x-forwarded-proto'], 'https');
    assert.equal(echo.headers['x-request-id'], 'h2-proxied-1');
    // The exchange is recorded as answered, not as a client that went away.
    const line = await until('the access line of the h2 request', 2_000, async () => gw.logs.find((l) => l.request_id === 'h2-proxied-1' && l.message === 'request'));
    assert.equal(line.status_code, 200);
    assert.equal(line.method, 'GET');
  });

  it('forwards an h2 request body that declares its Content-Length', async () => {
    const res = await h2Request(session!, '/echo/upload', { ':method': 'POST', 'content-type': 'text/plain', 'content-length': '5' }, 'hello');
    assert.equal(res.status, 200, res.body);
    const echo = JSON.parse(res.body) as Echo;
    assert.equal(echo.method, 'POST');
    assert.equal(echo.body, 'hello');
  });

  it('forwards an h2 request body sent without Content-Length', async () => {
    const res = await h2Request(session!, '/echo/upload', { ':method': 'POST', 'content-type': 'text/plain' }, 'hello');
    assert.equal(res.status, 200, res.body);
    assert.equal((JSON.parse(res.body) as Echo).body, 'hello');
  });

  it('refuses an h2 body over maxBodyBytes sent without Content-Length (413)', async () => {
    const before = upstream.received.length;
    const res = await h2Request(session!, '/small/upload', { ':method': 'POST', 'content-type': 'application/octet-stream' }, Buffer.alloc(5_000, 120));
    expectProblem({ statusCode: res.status, headers: res.headers as Record<string, string>, text: res.body }, 413, 'GW_BODY_TOO_LARGE');
    assert.equal(upstream.received.slice(before).filter((r) => r.bodyBytes > 0).length, 0);
  });

  it('refuses an h2 body over maxBodyBytes that declares its Content-Length (413), and the session goes on', async () => {
    const res = await h2Request(session!, '/small/upload', { ':method': 'POST', 'content-length': '5000' }, Buffer.alloc(5_000, 120));
    expectProblem({ statusCode: res.status, headers: res.headers as Record<string, string>, text: res.body }, 413, 'GW_BODY_TOO_LARGE');
    assert.equal(res.headers.connection, undefined);
    assert.equal(res.headers['strict-transport-security'], HSTS);
    assert.equal((await h2Request(session!, '/echo/after-413')).status, 200);
  });

  it('proxies an upstream answer with an HTTP/2-forbidden field (HTTP2-Settings) to an h2 client, without the field', async () => {
    const one = await h1(gw.port, '/echo/h2-settings', first.cert);
    assert.equal(one.status, 200, 'HTTP/1.1 gets the answer');
    const res = await h2Request(session!, '/echo/h2-settings');
    assert.equal(res.status, 200);
    assert.equal(res.headers['http2-settings'], undefined);
  });

  it('forwards no pseudo-header and takes Host from :authority', async () => {
    const before = upstream.received.length;
    const res = await h2Request(session!, '/hosted/p?q=1', { ':authority': 'api.example.test', 'x-custom': 'kept' });
    assert.equal(res.status, 200, res.body);
    const plain = await h2Request(session!, '/echo/p', { ':authority': 'api.example.test' });
    assert.equal(plain.status, 200, plain.body);

    const [hosted, echoed] = upstream.received.slice(before);
    assert.ok(hosted !== undefined && echoed !== undefined);
    for (const seen of [hosted, echoed]) {
      const names = Object.keys(seen.headers);
      assert.deepEqual(
        names.filter((n) => n.startsWith(':')),
        [],
        `the upstream saw pseudo-headers: ${names.join(', ')}`,
      );
      for (let i = 0; i < seen.rawHeaders.length; i += 2) assert.ok(!seen.rawHeaders[i]!.startsWith(':'), `raw header ${seen.rawHeaders[i]}`);
      assert.equal(seen.headers['x-forwarded-host'], 'api.example.test');
      assert.equal(seen.headers['x-forwarded-proto'], 'https');
    }
    // preserveHost: the upstream's Host is the client's :authority; otherwise the upstream's own.
    assert.equal(hosted.headers.host, 'api.example.test');
    assert.equal(hosted.url, '/p?q=1');
    assert.equal(hosted.headers['x-custom'], 'kept');
    assert.equal(echoed.headers.host, `127.0.0.1:${upstream.port}`);
  });

  it('refuses an HTTP/2 request whose Host differs from :authority', async () => {
    const res = await h2Request(session!, '/echo/x', { ':authority': 'api.example.test', host: 'evil.example.test' });
    const body = expectProblem({ statusCode: res.status, headers: res.headers as Record<string, string>, text: res.body }, 400, 'GW_BAD_REQUEST');
    assert.match(body.detail, /:authority and Host differ/);
    // The stream is refused, not the session: the next request on it is served.
    assert.equal((await h2Request(session!, '/echo/after')).status, 200);
  });

  it('serves /health and /health/live over both protocols, with HSTS', async () => {
    for (const path of ['/health', '/health/live']) {
      const one = await h1(gw.port, path, first.cert);
      assert.equal(one.status, 200, `${path} over HTTP/1.1: ${one.body}`);
      assert.equal(one.headers['strict-transport-security'], HSTS);
      assert.equal((JSON.parse(one.body) as { service: string }).service, 'api-gateway');

      const two = await h2Request(session!, path);
      assert.equal(two.status, 200, `${path} over h2: ${two.body}`);
      assert.equal(two.headers['strict-transport-security'], HSTS);
      assert.equal((JSON.parse(two.body) as { service: string }).service, 'api-gateway');
    }
  });

  it('answers a gateway error over h2 with the problem body, HSTS and no Connection field', async () => {
    const res = await h2Request(session!, '/nowhere');
    expectProblem({ statusCode: res.status, headers: res.headers as Record<string, string>, text: res.body }, 404, 'GW_ROUTE_NOT_FOUND');
    assert.equal(res.headers.connection, undefined);
    assert.equal(res.headers['strict-transport-security'], HSTS);

    // The same over HTTP/1.1, and a 405 from the framework's side (an own endpoint).
    const one = await h1(gw.port, '/nowhere', first.cert);
    expectProblem({ statusCode: one.status, headers: one.headers as Record<string, string>, text: one.body }, 404, 'GW_ROUTE_NOT_FOUND');
    assert.equal(one.headers['strict-transport-security'], HSTS);
    const own = await h2Request(session!, '/health', { ':method': 'POST' });
    expectProblem({ statusCode: own.status, headers: own.headers as Record<string, string>, text: own.body }, 405, 'GW_METHOD_NOT_ALLOWED');
    assert.equal(own.headers['strict-transport-security'], HSTS);
    // The session survives the error answers.
    assert.equal((await h2Request(session!, '/echo/still')).status, 200);
  });

  it('answers a CORS preflight over h2 with HSTS', async () => {
    const res = await h2Request(session!, '/echo/x', { ':method': 'OPTIONS', origin: 'https://app.example.test', 'access-control-request-method': 'GET' });
    assert.equal(res.status, 204, res.body);
    assert.equal(res.headers['strict-transport-security'], HSTS);
  });

  it('refuses TLS 1.1 and accepts TLS 1.2 and 1.3', async () => {
    // SECLEVEL=0 lets this client offer TLS 1.1 at all (OpenSSL 3 refuses it by default): the
    // refusal must come from the gateway, which the control server below shows.
    const old = TLS_1_1;
    const control = createTlsServer({ cert: first.cert, key: first.key, minVersion: 'TLSv1', ciphers: 'DEFAULT@SECLEVEL=0' }, (s) => s.end());
    await new Promise<void>((resolve) => control.listen(0, '127.0.0.1', resolve));
    try {
      const accepted = await handshake((control.address() as AddressInfo).port, old);
      assert.equal(accepted.protocol, 'TLSv1.1', 'the control server speaks TLS 1.1 with this client');
    } finally {
      control.close();
    }
    await assert.rejects(handshake(gw.port, old), (err: NodeJS.ErrnoException) => {
      assert.match(`${err.code} ${err.message}`, /protocol|version/i);
      return true;
    });
    assert.equal((await handshake(gw.port, { maxVersion: 'TLSv1.2' })).protocol, 'TLSv1.2');
    assert.equal((await handshake(gw.port)).protocol, 'TLSv1.3');
  });

  it('refuses plain HTTP on the TLS port', async () => {
    await assert.rejects(read(request(`http://127.0.0.1:${gw.port}/health/live`, { headersTimeout: 3_000, bodyTimeout: 3_000 })));
  });
});

// ---------------------------------------------------------------------------------------------

describe('certificate renewal without a restart', () => {
  let upstream: TestUpstream;
  let gw: TestGateway;
  let live: string;
  let second: Pair;
  let third: Pair;
  const sessions: ClientHttp2Session[] = [];

  /** Puts a file in place in one step (as a renewal agent or a Secret mount does). */
  async function install(from: string, to: string): Promise<void> {
    const staged = `${to}.tmp`;
    await copyFile(from, staged);
    await rename(staged, to);
  }

  before(async () => {
    live = join(workDir, 'live');
    await mkdir(live);
    const staging = join(workDir, 'renewal');
    await mkdir(staging);
    second = await selfSigned(staging, 'second', 'localhost-renewed');
    third = await selfSigned(staging, 'third', 'localhost-third');
    await copyFile(first.certFile, join(live, 'tls.crt'));
    await copyFile(first.keyFile, join(live, 'tls.key'));
    upstream = await startUpstream();
    gw = await startTestGateway(routesFor(upstream.url, [{ name: 'echo', prefix: '/echo', rewrite: '/', auth: 'public' }]), {
      ...tlsEnv({ ...first, certFile: join(live, 'tls.crt'), keyFile: join(live, 'tls.key') }),
    });
  });
  after(async () => {
    for (const s of sessions) await closeSession(s);
    await gw?.close();
    await upstream?.close();
  });

  it('serves a renewed pair to new connections and keeps the open session working', { timeout: 15_000 }, async () => {
    assert.notEqual(first.fingerprint, second.fingerprint);
    assert.equal(await servedFingerprint(gw.port), first.fingerprint);
    const old = await h2Session(gw.port, first.cert);
    sessions.push(old);
    assert.equal((await h2Request(old, '/echo/before')).status, 200);

    await install(second.certFile, join(live, 'tls.crt'));
    await install(second.keyFile, join(live, 'tls.key'));
    await until('the renewed certificate served to new connections', 5_000, async () => ((await servedFingerprint(gw.port)) === second.fingerprint ? true : undefined), 50);
    assert.ok(
      gw.logs.some((l) => l.level === 'INFO' && l.message === 'TLS certificate reloaded'),
      'the reload is logged',
    );

    // A client that trusts only the new certificate connects and is served over h2.
    const fresh = await h2Session(gw.port, second.cert);
    sessions.push(fresh);
    assert.equal(fresh.alpnProtocol, 'h2');
    assert.equal((await h2Request(fresh, '/echo/new')).status, 200);
    assert.equal((await h1(gw.port, '/echo/new', second.cert)).status, 200);
    // The renewed context keeps the protocol floor.
    await assert.rejects(handshake(gw.port, TLS_1_1));
    assert.equal((await handshake(gw.port, { maxVersion: 'TLSv1.2' })).protocol, 'TLSv1.2');
    // The session opened before the swap keeps its certificate and keeps working.
    assert.equal(old.closed || old.destroyed, false);
    const again = await h2Request(old, '/echo/after');
    assert.equal(again.status, 200, again.body);
    assert.equal((old.socket as unknown as { getPeerCertificate(): { fingerprint256: string } }).getPeerCertificate().fingerprint256, first.fingerprint);
  });

  it('refuses a mismatched pair, logs an ERROR and keeps serving the current certificate', { timeout: 15_000 }, async () => {
    const seen = gw.logs.length;
    // The third certificate with the second key: not a pair.
    await install(third.certFile, join(live, 'tls.crt'));
    const refusal = await until('the refusal logged', 5_000, async () => gw.logs.slice(seen).find((l) => l.message === REFUSED), 50);
    assert.equal(refusal.level, 'ERROR');
    assert.match(JSON.stringify(refusal.problems), /TLS_CERT_FILE/);

    assert.equal(await servedFingerprint(gw.port), second.fingerprint, 'the current (second) certificate stays');
    const client = await h2Session(gw.port, second.cert);
    sessions.push(client);
    assert.equal((await h2Request(client, '/echo/still')).status, 200);
    assert.ok(!gw.logs.slice(seen).some((l) => l.message === 'TLS certificate reloaded'), 'nothing was reloaded');

    // gateway.reload() (SIGHUP) re-reads the files too: still the broken pair, still refused.
    const before = gw.logs.length;
    await gw.gateway.reload();
    assert.ok(gw.logs.slice(before).some((l) => l.message === REFUSED && l.level === 'ERROR'));
    assert.equal(await servedFingerprint(gw.port), second.fingerprint);
  });
});

// ---------------------------------------------------------------------------------------------

describe('HTTP2_ENABLED=false', () => {
  let upstream: TestUpstream;
  let gw: TestGateway;

  before(async () => {
    upstream = await startUpstream();
    gw = await startTestGateway(routesFor(upstream.url, [{ name: 'echo', prefix: '/echo', rewrite: '/', auth: 'public' }]), tlsEnv(first, { HTTP2_ENABLED: 'false' }));
  });
  after(async () => {
    await gw?.close();
    await upstream?.close();
  });

  it('serves HTTPS over HTTP/1.1 only', async () => {
    const res = await h1(gw.port, '/echo/one', first.cert, { ALPNProtocols: ['h2', 'http/1.1'] });
    assert.equal(res.status, 200, res.body);
    assert.equal(res.httpVersion, '1.1');
    assert.notEqual(res.alpn, 'h2', 'h2 must not be negotiated');
    assert.equal(res.headers['strict-transport-security'], HSTS);
    assert.equal((JSON.parse(res.body) as Echo).headers['x-forwarded-proto'], 'https');
    assert.equal((await h1(gw.port, '/health/live', first.cert)).status, 200);
  });

  it('does not offer h2: an h2-only client cannot talk to it', async () => {
    // Either the handshake fails (no common protocol) or it completes without h2.
    const offered = await handshake(gw.port, { ALPNProtocols: ['h2'] }).catch((err: Error) => err);
    if (!(offered instanceof Error)) assert.notEqual(offered.alpn, 'h2');
    let session: ClientHttp2Session | undefined;
    try {
      await assert.rejects(
        (async () => {
          session = await h2Session(gw.port, first.cert);
          await h2Request(session, '/echo/two');
        })(),
      );
    } finally {
      session?.destroy();
    }
  });
});

// ---------------------------------------------------------------------------------------------

describe('HSTS_MAX_AGE_SECONDS=0', () => {
  let upstream: TestUpstream;
  let gw: TestGateway;
  let session: ClientHttp2Session | undefined;

  before(async () => {
    upstream = await startUpstream();
    gw = await startTestGateway(routesFor(upstream.url, [{ name: 'echo', prefix: '/echo', rewrite: '/', auth: 'public' }]), tlsEnv(first, { HSTS_MAX_AGE_SECONDS: '0' }));
    session = await h2Session(gw.port, first.cert);
  });
  after(async () => {
    await closeSession(session);
    await gw?.close();
    await upstream?.close();
  });

  it('sends no Strict-Transport-Security on any answer', async () => {
    const answers: Array<{ what: string; status: number; headers: Record<string, unknown> }> = [];
    for (const path of ['/echo/x', '/health', '/nowhere']) {
      const one = await h1(gw.port, path, first.cert);
      answers.push({ what: `HTTP/1.1 ${path}`, status: one.status, headers: one.headers });
      const two = await h2Request(session!, path);
      answers.push({ what: `h2 ${path}`, status: two.status, headers: two.headers });
    }
    const pre = await h2Request(session!, '/echo/x', { ':method': 'OPTIONS', origin: 'https://app.example.test', 'access-control-request-method': 'GET' });
    answers.push({ what: 'h2 preflight', status: pre.status, headers: pre.headers });
    assert.deepEqual(
      answers.map((a) => a.status),
      [200, 200, 200, 200, 404, 404, 204],
    );
    for (const a of answers) assert.equal(a.headers['strict-transport-security'], undefined, a.what);
  });
});

// ---------------------------------------------------------------------------------------------

describe('TLS configuration at start-up', () => {
  let routes: { file: string; dir: string };
  let spools = 0;
  /** Each gateway built here gets an audit spool of its own. */
  const base = () => ({ JWT_SECRET: TEST_SECRET, ROUTES_FILE: routes.file, ROUTES_WATCH: 'false', AUDIT_SPOOL_DIR: join(routes.dir, `spool-${++spools}`) });
  const routesObject = { ...routesFor('http://127.0.0.1:9', [{ name: 'echo', prefix: '/echo', auth: 'public' }]), services: { backend: { instances: ['http://127.0.0.1:9'], healthCheck: false } } };

  before(async () => {
    routes = await writeRoutesFile(routesObject);
  });
  after(async () => {
    await rm(routes.dir, { recursive: true, force: true });
  });

  async function configProblems(source: Record<string, string>): Promise<string[]> {
    try {
      await loadConfig(source);
    } catch (err) {
      assert.ok(err instanceof ConfigError, String(err));
      return err.problems;
    }
    assert.fail('loadConfig accepted the configuration');
  }

  /** Builds the gateway from a config that loads, expecting the build to refuse it. */
  async function buildProblems(source: Record<string, string>): Promise<string[]> {
    const config = await loadConfig(source);
    const capture = new LogCapture();
    try {
      const gateway = await buildGateway(config, createLoggers('silent', capture));
      await gateway.close();
    } catch (err) {
      assert.ok(err instanceof ConfigError, String(err));
      return err.problems;
    }
    assert.fail('buildGateway accepted the TLS files');
  }

  it('production without a certificate is refused, naming TLS_CERT_FILE', async () => {
    const problems = await configProblems({ ...base(), NODE_ENV: 'production', REDIS_URL: 'redis://127.0.0.1:1' });
    assert.equal(problems.length, 1, problems.join('\n'));
    assert.ok(problems[0]!.startsWith('TLS_CERT_FILE:'), problems[0]);
    assert.match(problems[0]!, /TLS_TERMINATED_BY_PROXY/);
  });

  it('production without a certificate is accepted with TLS_TERMINATED_BY_PROXY=true', async () => {
    const config = await loadConfig({ ...base(), NODE_ENV: 'production', REDIS_URL: 'redis://127.0.0.1:1', TLS_TERMINATED_BY_PROXY: 'true' });
    assert.equal(config.env.TLS_TERMINATED_BY_PROXY, true);
    assert.equal(config.env.TLS_CERT_FILE, undefined);
  });

  it('production with a certificate is accepted', async () => {
    const config = await loadConfig({ ...base(), NODE_ENV: 'production', REDIS_URL: 'redis://127.0.0.1:1', TLS_CERT_FILE: first.certFile, TLS_KEY_FILE: first.keyFile });
    assert.equal(config.env.TLS_CERT_FILE, first.certFile);
  });

  it('a certificate file that does not exist is refused, naming TLS_CERT_FILE', async () => {
    const missing = join(workDir, 'absent.crt');
    const problems = await buildProblems({ ...base(), TLS_CERT_FILE: missing, TLS_KEY_FILE: first.keyFile });
    assert.equal(problems.length, 1, problems.join('\n'));
    assert.ok(problems[0]!.startsWith('TLS_CERT_FILE:'), problems[0]);
    assert.match(problems[0]!, /absent\.crt/);
    assert.match(problems[0]!, /ENOENT/);
  });

  it('a certificate with the key of another is refused, naming TLS_CERT_FILE', async () => {
    const other = await selfSigned(workDir, 'other', 'localhost-other');
    const problems = await buildProblems({ ...base(), TLS_CERT_FILE: first.certFile, TLS_KEY_FILE: other.keyFile });
    assert.equal(problems.length, 1, problems.join('\n'));
    assert.match(problems[0]!, /^TLS_CERT_FILE/);
  });

  it('a file that is not PEM is refused, naming TLS_CERT_FILE, through the real start-up', async () => {
    const junk = join(workDir, 'junk.crt');
    await writeFile(junk, 'not a certificate\n');
    const problems = await refusedStart(routesObject, { TLS_CERT_FILE: junk, TLS_KEY_FILE: first.keyFile });
    assert.equal(problems.length, 1, problems.join('\n'));
    assert.match(problems[0]!, /^TLS_CERT_FILE/);
  });

  it('a refused certificate leaves nothing claimed: the same audit spool serves the next gateway', async () => {
    const env = { ...base(), AUDIT_SPOOL_DIR: join(routes.dir, 'shared-spool') };
    const problems = await buildProblems({ ...env, TLS_CERT_FILE: join(workDir, 'absent.crt'), TLS_KEY_FILE: first.keyFile });
    assert.match(problems[0]!, /^TLS_CERT_FILE/);
    const gateway = await buildGateway(await loadConfig(env), createLoggers('silent', new LogCapture()));
    await gateway.close();
  });
});

// ---------------------------------------------------------------------------------------------

describe('https upstreams and UPSTREAM_CA_FILE', () => {
  let server: HttpsServer;
  let origin: string;
  let ca: Pair;
  const received: string[] = [];
  const healthChecks: string[] = [];
  const gateways: TestGateway[] = [];

  before(async () => {
    const dir = join(workDir, 'upstream-ca');
    await mkdir(dir);
    const made = await caAndLeaf(dir);
    ca = made.ca;
    server = createHttpsServer({ cert: made.leaf.cert, key: made.leaf.key }, (req, res) => {
      (req.headers['user-agent'] === HEALTH_CHECK_AGENT ? healthChecks : received).push(req.url!);
      req.resume();
      const body = JSON.stringify({ secure: true, url: req.url });
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) }).end(body);
    });
    server.on('tlsClientError', () => undefined);
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    origin = `https://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  after(async () => {
    for (const gw of gateways) await gw.close();
    server?.closeAllConnections();
    await new Promise<void>((resolve) => (server ? server.close(() => resolve()) : resolve()));
  });

  /**
   * The same https instance twice: `backend` with fast health checks (one failure takes it out),
   * `direct` without any, so the traffic pool's verification is seen on its own.
   */
  const routes = () => ({
    services: {
      backend: { instances: [origin], healthCheck: { intervalMs: 100, timeoutMs: 100, unhealthyThreshold: 1 }, retry: false, outlierDetection: false },
      direct: { instances: [origin], healthCheck: false, retry: false, outlierDetection: false },
    },
    routes: [
      { name: 'secure', service: 'backend', prefix: '/secure', rewrite: '/', auth: 'public' },
      { name: 'direct', service: 'direct', prefix: '/direct', rewrite: '/', auth: 'public' },
    ],
  });

  interface ServicesHealth {
    services: Record<string, { status: string; healthy: number; total: number }>;
  }
  const servicesOf = async (gw: TestGateway) => (JSON.parse((await read(request(`${gw.url}/health`))).text) as ServicesHealth).services;

  it('without the CA, the upstream certificate is not trusted: 502 and failing health checks', { timeout: 10_000 }, async () => {
    const gw = await startTestGateway(routes(), HEALTH_ENV);
    gateways.push(gw);
    // No health checks on `direct`: the request tries the instance and the handshake fails verification.
    const res = await read(request(`${gw.url}/direct/a`));
    expectProblem(res, 502, 'GW_UPSTREAM_UNAVAILABLE');
    // The checks of `backend` fail the same way and take the instance out.
    await until('the checked service reported unhealthy', 5_000, async () => ((await servicesOf(gw)).backend?.status === 'unhealthy' ? true : undefined), 50);
    expectProblem(await read(request(`${gw.url}/secure/a`)), 502, 'GW_NO_HEALTHY_UPSTREAM');
    assert.deepEqual(received, [], 'no request may reach an upstream whose certificate failed verification');
    assert.deepEqual(healthChecks, [], 'nor a health check');
    await gw.close();
  });

  it('with UPSTREAM_CA_FILE, requests are proxied over TLS and health checks pass', { timeout: 10_000 }, async () => {
    healthChecks.length = 0;
    const gw = await startTestGateway(routes(), { ...HEALTH_ENV, UPSTREAM_CA_FILE: ca.certFile });
    gateways.push(gw);
    const res = await read(request(`${gw.url}/direct/b?z=1`));
    assert.equal(res.statusCode, 200, res.text);
    assert.deepEqual(JSON.parse(res.text), { secure: true, url: '/b?z=1' });
    assert.deepEqual(received, ['/b?z=1']);
    // Several rounds of checks over TLS, every one passing (one failure would take it out).
    await until('three health checks over TLS', 5_000, async () => (healthChecks.length >= 3 ? true : undefined), 50);
    assert.deepEqual((await servicesOf(gw)).backend, { status: 'healthy', healthy: 1, total: 1 });
    const checked = await read(request(`${gw.url}/secure/c`));
    assert.equal(checked.statusCode, 200, checked.text);
    assert.deepEqual(received, ['/b?z=1', '/c']);
  });

  it('an UPSTREAM_CA_FILE that cannot be read is refused at start-up, naming it', async () => {
    const problems = await refusedStart(routes(), { UPSTREAM_CA_FILE: join(workDir, 'no-such-ca.pem') });
    assert.equal(problems.length, 1, problems.join('\n'));
    assert.match(problems[0]!, /^UPSTREAM_CA_FILE/);
    assert.match(problems[0]!, /ENOENT/);
  });
});

// ---------------------------------------------------------------------------------------------

describe('shutdown with HTTP/2 sessions open', () => {
  let upstream: TestUpstream;
  let arrived!: () => void;
  let slowArrived = new Promise<void>((resolve) => (arrived = resolve));
  let release!: () => void;
  let released = new Promise<void>((resolve) => (release = resolve));
  const open: ClientHttp2Session[] = [];
  const running: TestGateway[] = [];

  before(async () => {
    upstream = await startUpstream(async (req, res) => {
      req.resume();
      if (req.url === '/slow') {
        arrived();
        await released;
      }
      const body = `done ${req.url}`;
      res.writeHead(200, { 'content-type': 'text/plain', 'content-length': Buffer.byteLength(body) }).end(body);
    });
  });
  after(async () => {
    release();
    for (const s of open) s.destroy();
    for (const gw of running) await within(gw.close(), 2_000);
    await upstream?.close();
  });

  const start = async () => {
    const gw = await startTestGateway(routesFor(upstream.url, [{ name: 'files', prefix: '/files', rewrite: '/', auth: 'public', timeoutMs: 30_000 }]), tlsEnv(first));
    running.push(gw);
    return gw;
  };

  it('close() resolves while an idle h2 session is connected, and the session gets a GOAWAY', { timeout: 10_000 }, async () => {
    const gw = await start();
    const session = await h2Session(gw.port, first.cert);
    open.push(session);
    assert.equal((await h2Request(session, '/files/warm')).status, 200);
    const goaway = new Promise<number>((resolve) => session.once('goaway', (code: number) => resolve(code)));
    const sessionClosed = new Promise<void>((resolve) => session.once('close', () => resolve()));

    const outcome = await within(gw.close(), 3_000);
    if (outcome === 'timeout') {
      session.destroy();
      assert.fail('gateway.close() did not resolve within 3 s with an idle h2 session open');
    }
    assert.equal(await within(goaway, 1_000), 0, 'GOAWAY with NO_ERROR');
    assert.notEqual(await within(sessionClosed, 1_000), 'timeout', 'the client session ends');
  });

  it('close() resolves while an idle HTTP/1.1 keep-alive connection is open on the same TLS port', { timeout: 10_000 }, async () => {
    const gw = await start();
    const { socket, head } = await h1KeepAlive(gw.port, first.cert, '/files/warm');
    assert.match(head, /^HTTP\/1\.1 200 /);
    try {
      const outcome = await within(gw.close(), 3_000);
      assert.notEqual(outcome, 'timeout', 'gateway.close() did not resolve within 3 s with an idle HTTP/1.1 connection open');
      assert.notEqual(await closedWithin(socket, 1_000), 'timeout', 'the idle connection is closed');
    } finally {
      socket.destroy();
    }
  });

  it('an h2 request in flight at close() completes with 200 before close() resolves', { timeout: 10_000 }, async () => {
    slowArrived = new Promise<void>((resolve) => (arrived = resolve));
    released = new Promise<void>((resolve) => (release = resolve));
    const gw = await start();
    const session = await h2Session(gw.port, first.cert);
    open.push(session);
    const idle = await h2Session(gw.port, first.cert);
    open.push(idle);
    const inFlight = h2Request(session, '/files/slow');
    inFlight.catch(() => undefined);
    await slowArrived;

    let closeDone = false;
    const closing = gw.close().then(() => {
      closeDone = true;
    });
    closing.catch(() => undefined);
    await delay(200);
    assert.equal(closeDone, false, 'close() must wait for the request in flight');
    // A new connection is refused once close() began.
    await assert.rejects(handshake(gw.port));

    release();
    const res = await within(inFlight, 3_000);
    assert.notEqual(res, 'timeout', 'the request in flight got no answer');
    if (res === 'timeout') return;
    assert.equal(res.status, 200);
    assert.equal(res.body, 'done /slow');
    const outcome = await within(closing, 3_000);
    if (outcome === 'timeout') {
      session.destroy();
      idle.destroy();
      assert.fail('gateway.close() did not resolve within 3 s after the request in flight ended');
    }
    assert.ok(closeDone);
  });
});

// ---------------------------------------------------------------------------------------------

describe('idle client connections over TLS (KEEP_ALIVE_TIMEOUT_MS=300)', () => {
  let upstream: TestUpstream;
  let gw: TestGateway;
  const sockets: Array<{ destroy(): void }> = [];

  before(async () => {
    upstream = await startUpstream(async (req, res) => {
      req.resume();
      // Silent for three keep-alive timeouts: no frame crosses the session meanwhile.
      if (req.url === '/slow') await delay(1_000);
      const body = req.url === '/slow' ? 'slow done' : 'ok';
      res.writeHead(200, { 'content-type': 'text/plain', 'content-length': Buffer.byteLength(body) }).end(body);
    });
    gw = await startTestGateway(routesFor(upstream.url, [{ name: 'echo', prefix: '/echo', rewrite: '/', auth: 'public' }]), tlsEnv(first, { KEEP_ALIVE_TIMEOUT_MS: '300' }));
  });
  after(async () => {
    for (const s of sockets) s.destroy();
    await gw?.close();
    await upstream?.close();
  });

  it('closes an idle HTTP/1.1 connection', { timeout: 10_000 }, async () => {
    const { socket } = await h1KeepAlive(gw.port, first.cert, '/echo/x');
    sockets.push(socket);
    // Node closes at keepAliveTimeout plus its own grace of about a second.
    assert.notEqual(await closedWithin(socket, 3_000), 'timeout', 'the idle HTTP/1.1 connection stayed open');
  });

  it('closes an idle HTTP/2 session (GOAWAY)', { timeout: 10_000 }, async () => {
    const session = await h2Session(gw.port, first.cert);
    sockets.push(session);
    const goaway = new Promise<number>((resolve) => session.once('goaway', (code: number) => resolve(code)));
    assert.equal((await h2Request(session, '/echo/x')).status, 200);
    assert.notEqual(await closedWithin(session, 3_000), 'timeout', 'the idle h2 session stayed open 3 s with KEEP_ALIVE_TIMEOUT_MS=300');
    assert.equal(await within(goaway, 100), 0, 'closed with a GOAWAY (NO_ERROR), not a reset');
  });

  it('lets an h2 request run longer than KEEP_ALIVE_TIMEOUT_MS finish (the stream is not idle time)', { timeout: 10_000 }, async () => {
    const session = await h2Session(gw.port, first.cert);
    sockets.push(session);
    const res = await h2Request(session, '/echo/slow');
    assert.equal(res.status, 200, res.body);
    assert.equal(res.body, 'slow done');
  });
});
