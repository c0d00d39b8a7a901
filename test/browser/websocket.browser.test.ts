import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, describe, it, type TestContext } from 'node:test';
import { chromium, type Browser } from 'playwright-core';
import { WebSocketServer } from 'ws';
import { routesFor, startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { signToken } from '../helpers/tokens.js';

/**
 * A WebSocket as a browser opens one: Chromium loads a page from one origin, which opens a socket
 * to the gateway with its token as the subprotocols `bearer, <token>` (a browser cannot set
 * Authorization on a WebSocket) and exchanges messages with an echoing upstream. A page from an
 * origin the gateway does not allow is refused before the upstream is reached.
 */

const CHROMIUM = '/usr/bin/chromium';
const HAVE_CHROMIUM = existsSync(CHROMIUM);
const IN_CI = Boolean(process.env.CI);

function skipWithoutChromium(t: TestContext): boolean {
  if (HAVE_CHROMIUM) return false;
  assert.ok(!IN_CI, `CI is set but ${CHROMIUM} is missing: install the chromium package in the CI image`);
  t.skip(`${CHROMIUM} is not installed (apt-get install chromium): the browser WebSocket test is skipped outside CI`);
  return true;
}

type PageResult = { opened: boolean; protocol: string; echoes: string[]; closeCode: number | null; error: boolean };

/** A page whose script opens the gateway's socket with the token of its query string, sends two messages and reports. */
async function startPage(gatewayWs: () => string): Promise<{ origin: string; close(): Promise<void> }> {
  const server: Server = createServer((_req, res) => {
    const html = `<!doctype html><html><head><meta charset="utf-8"><title>ws page</title></head><body><script>
  const params = new URLSearchParams(location.search);
  const result = { opened: false, protocol: '', echoes: [], closeCode: null, error: false };
  const ws = new WebSocket(${JSON.stringify(gatewayWs())}, ['bearer', params.get('token')]);
  ws.onopen = () => { result.opened = true; result.protocol = ws.protocol; ws.send('first'); };
  ws.onmessage = (e) => { result.echoes.push(e.data); if (result.echoes.length === 1) ws.send('second'); else ws.close(1000); };
  ws.onerror = () => { result.error = true; };
  ws.onclose = (e) => { result.closeCode = e.code; window.__result = result; };
</script></body></html>`;
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' }).end(html);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    origin: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

describe('WebSockets in a real browser (Chromium)', { timeout: 120_000 }, () => {
  let upstream: Server;
  let connections = 0;
  let gw: TestGateway;
  let allowed: Awaited<ReturnType<typeof startPage>>;
  let other: Awaited<ReturnType<typeof startPage>>;
  let browser: Browser | null = null;

  before(async () => {
    if (!HAVE_CHROMIUM) {
      assert.ok(!IN_CI, `CI is set but ${CHROMIUM} is missing`);
      return;
    }
    upstream = createServer((_req, res) => res.writeHead(200).end('{"status":"healthy"}'));
    new WebSocketServer({ server: upstream }).on('connection', (ws) => {
      connections++;
      ws.on('message', (d, binary) => ws.send(d, { binary }));
    });
    await new Promise<void>((resolve) => upstream.listen(0, '127.0.0.1', resolve));
    const upstreamUrl = `http://127.0.0.1:${(upstream.address() as AddressInfo).port}`;
    const wsUrl = () => `${gw.url.replace(/^http/, 'ws')}/ws/chat`;
    allowed = await startPage(wsUrl);
    other = await startPage(wsUrl);
    gw = await startTestGateway(routesFor(upstreamUrl, [{ name: 'chat', path: '/ws/chat', websocket: true, roles: ['resident'] }]), { CORS_ALLOWED_ORIGINS: allowed.origin });
    browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ['--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'] });
  });
  after(async () => {
    await browser?.close();
    await gw?.close();
    await allowed?.close();
    await other?.close();
    upstream?.closeAllConnections();
    await new Promise((resolve) => (upstream ? upstream.close(resolve) : resolve(undefined)));
  });

  async function runPage(page: { origin: string }, token: string): Promise<PageResult> {
    const context = await browser!.newContext();
    try {
      const tab = await context.newPage();
      await tab.goto(`${page.origin}/?${new URLSearchParams({ token }).toString()}`);
      await tab.waitForFunction(() => (globalThis as unknown as { __result?: unknown }).__result !== undefined, undefined, { timeout: 15_000 });
      return await tab.evaluate(() => (globalThis as unknown as { __result: PageResult }).__result);
    } finally {
      await context.close();
    }
  }

  it('a page of the allowed origin opens an authenticated socket and exchanges messages', async (t) => {
    if (skipWithoutChromium(t)) return;
    const result = await runPage(allowed, await signToken({ sub: 'browser-ws-user', role: 'resident' }));
    assert.deepEqual(result, { opened: true, protocol: 'bearer', echoes: ['first', 'second'], closeCode: 1000, error: false });
    const line = gw.logs.find((l) => l.user_id === 'browser-ws-user' && l.route === 'chat');
    assert.ok(line === undefined || !JSON.stringify(line).includes('eyJ'), 'no token in the access line');
  });

  it('a page of another origin is refused, and the upstream never sees it', async (t) => {
    if (skipWithoutChromium(t)) return;
    const before = connections;
    const result = await runPage(other, await signToken({ sub: 'browser-ws-other', role: 'resident' }));
    assert.equal(result.opened, false);
    assert.equal(result.error, true);
    assert.equal(result.closeCode, 1006, 'the handshake failed');
    assert.equal(connections, before);
    const refused = gw.logs.find((l) => l.error_code === 'GW_CORS_REJECTED');
    assert.ok(refused, 'the gateway refused it (GW_CORS_REJECTED)');
  });
});
