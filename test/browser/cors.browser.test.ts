import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, describe, it, type TestContext } from 'node:test';
import { chromium, type Browser } from 'playwright-core';
import { routesFor, startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { until } from '../helpers/poll.js';
import { signToken } from '../helpers/tokens.js';
import { startUpstream, type TestUpstream } from '../helpers/upstream.js';

/**
 * CORS as a real browser enforces it: Debian's Chromium, driven by playwright-core, loads a page
 * from one loopback origin and calls the gateway (another origin) with a Bearer token, which
 * makes the browser send a preflight first. The gateway allows one page origin only.
 */

const CHROMIUM = '/usr/bin/chromium';
const HAVE_CHROMIUM = existsSync(CHROMIUM);
const IN_CI = Boolean(process.env.CI);
const SKIP_REASON = `${CHROMIUM} is not installed (apt-get install chromium): the browser CORS test is skipped outside CI; with CI set it fails instead`;

/** Skips the test when there is no Chromium outside CI; in CI a missing Chromium is a failure. */
function skipWithoutChromium(t: TestContext): boolean {
  if (HAVE_CHROMIUM) return false;
  assert.ok(!IN_CI, `CI is set but ${CHROMIUM} is missing: install the chromium package in the CI image`);
  t.skip(SKIP_REASON);
  return true;
}

/** What the page's script saw: the answer, or how fetch failed. */
type PageResult = { status: number; body: unknown; requestId: string | null; wwwAuthenticate: string | null } | { error: string; message: string };

interface PageServer {
  origin: string;
  close(): Promise<void>;
}

/**
 * Serves one HTML page whose script, on load, calls the gateway with the path and token of the
 * page's own query string and leaves what it saw in `window.__result`.
 */
async function startPageServer(gatewayUrl: () => string): Promise<PageServer> {
  const server: Server = createServer((req, res) => {
    if (!req.url!.startsWith('/?') && req.url !== '/') {
      res.writeHead(404).end();
      return;
    }
    const html = `<!doctype html>
<html><head><meta charset="utf-8"><title>cors page</title></head>
<body>
<script>
  const params = new URLSearchParams(location.search);
  const headers = {};
  if (params.get('token')) headers.Authorization = 'Bearer ' + params.get('token');
  fetch(${JSON.stringify(gatewayUrl())} + params.get('path'), { headers })
    .then(async (res) => {
      const text = await res.text();
      let body = text;
      try { body = JSON.parse(text); } catch {}
      window.__result = { status: res.status, body, requestId: res.headers.get('x-request-id'), wwwAuthenticate: res.headers.get('www-authenticate') };
    })
    .catch((err) => { window.__result = { error: err.name, message: err.message }; });
</script>
</body></html>`;
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'content-length': Buffer.byteLength(html), 'cache-control': 'no-store' });
    res.end(html);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    origin: `http://127.0.0.1:${port}`,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

describe('CORS in a real browser (Chromium)', { timeout: 120_000 }, () => {
  let upstream: TestUpstream;
  let gw: TestGateway;
  let allowedPage: PageServer;
  let otherPage: PageServer;
  let browser: Browser | null = null;
  let token: string;

  before(async () => {
    if (!HAVE_CHROMIUM) {
      // In CI a missing browser fails the suite here; elsewhere each test skips with the reason.
      assert.ok(!IN_CI, `CI is set but ${CHROMIUM} is missing: install the chromium package in the CI image`);
      return;
    }
    upstream = await startUpstream();
    allowedPage = await startPageServer(() => gw.url);
    otherPage = await startPageServer(() => gw.url);
    gw = await startTestGateway(routesFor(upstream.url, [{ name: 'records', path: '/api/records', methods: ['GET'], auth: 'required' }]), {
      CORS_ALLOWED_ORIGINS: allowedPage.origin,
    });
    token = await signToken({ sub: 'browser-user', role: 'health_provider' });
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    });
  });
  after(async () => {
    await browser?.close();
    await gw?.close();
    await upstream?.close();
    await allowedPage?.close();
    await otherPage?.close();
  });

  /** Opens the page of `page` in a fresh context (no preflight cache shared) and waits for its script's result. */
  async function runPage(page: PageServer, path: string, bearer: string | null): Promise<PageResult> {
    const context = await browser!.newContext();
    try {
      const tab = await context.newPage();
      const query = new URLSearchParams({ path, ...(bearer === null ? {} : { token: bearer }) });
      await tab.goto(`${page.origin}/?${query.toString()}`);
      await tab.waitForFunction(() => (globalThis as unknown as { __result?: unknown }).__result !== undefined, undefined, { timeout: 15_000 });
      return await tab.evaluate(() => (globalThis as unknown as { __result: PageResult }).__result);
    } finally {
      await context.close();
    }
  }

  /** The access-log line of the gateway for a request matching `where`, waited for (lines are batched). */
  function logLine(what: string, where: (line: Record<string, unknown>) => boolean): Promise<Record<string, unknown>> {
    return until(what, 3_000, async () => gw.logs.find(where));
  }

  it('from the allowed origin: the preflight is answered by the gateway and the page reads the upstream\'s JSON', async (t) => {
    if (skipWithoutChromium(t)) return;
    const logsBefore = gw.logs.length;
    const result = await runPage(allowedPage, '/api/records?page=1', token);
    assert.ok('status' in result, `fetch failed in the page: ${JSON.stringify(result)}`);
    assert.equal(result.status, 200, JSON.stringify(result));
    const body = result.body as { method: string; url: string; headers: Record<string, string> };
    assert.equal(body.method, 'GET');
    assert.equal(body.url, '/api/records?page=1');
    assert.equal(body.headers['x-user-id'], 'browser-user', 'the upstream got the verified identity');
    assert.equal(body.headers.origin, allowedPage.origin, 'the browser sent its Origin');
    assert.equal(typeof result.requestId, 'string', 'X-Request-ID is exposed to the page');

    assert.deepEqual(
      upstream.received.map((r) => r.method),
      ['GET'],
      'the upstream must see the actual GET only, never the preflight',
    );

    const since = (line: Record<string, unknown>) => gw.logs.indexOf(line) >= logsBefore;
    const pre = await logLine('the preflight\'s access-log line', (l) => since(l) && l.method === 'OPTIONS' && l.path === '/api/records');
    assert.equal(pre.status_code, 204);
    assert.equal(pre.route, 'records');
    assert.equal(pre.upstream, null, 'the preflight was answered by the gateway, not forwarded');
    assert.equal(pre.user_id, null, 'the preflight was not authenticated');
    const actual = await logLine('the GET\'s access-log line', (l) => since(l) && l.method === 'GET' && l.path === '/api/records');
    assert.equal(actual.status_code, 200);
    assert.equal(actual.user_id, 'browser-user');
    assert.equal(actual.upstream, upstream.url);
    assert.equal(actual.request_id, result.requestId);
  });

  it('from the allowed origin: the gateway\'s own 401 is readable by the page (CORS headers on errors)', async (t) => {
    if (skipWithoutChromium(t)) return;
    const seen = upstream.received.length;
    const result = await runPage(allowedPage, '/api/records', 'not.a.valid-token');
    assert.ok('status' in result, `fetch failed in the page: ${JSON.stringify(result)}`);
    assert.equal(result.status, 401);
    assert.equal((result.body as { code: string }).code, 'GW_AUTH_TOKEN_MALFORMED');
    assert.ok(result.wwwAuthenticate?.startsWith('Bearer'), `WWW-Authenticate is exposed to the page: ${String(result.wwwAuthenticate)}`);
    assert.equal(upstream.received.length, seen);
  });

  it('from another origin: the browser blocks the call (fetch rejects with a TypeError) and nothing reaches the upstream', async (t) => {
    if (skipWithoutChromium(t)) return;
    const seen = upstream.received.length;
    const logsBefore = gw.logs.length;
    const result = await runPage(otherPage, '/api/records', token);
    assert.ok('error' in result, `the page read an answer it must not: ${JSON.stringify(result)}`);
    assert.equal(result.error, 'TypeError', result.message);
    assert.equal(upstream.received.length, seen, 'the refused preflight stopped the browser: no GET reached the upstream');
    assert.ok(!upstream.received.some((r) => r.method === 'OPTIONS'), 'the upstream saw a preflight');

    const pre = await logLine('the refused preflight\'s access-log line', (l) => gw.logs.indexOf(l) >= logsBefore && l.method === 'OPTIONS');
    assert.equal(pre.status_code, 403);
    assert.equal(pre.error_code, 'GW_CORS_REJECTED');
    assert.equal(pre.upstream, null);
    assert.ok(
      !gw.logs.slice(logsBefore).some((l) => l.method === 'GET' && l.path === '/api/records'),
      'the browser sent the actual request after a refused preflight',
    );
  });
});
