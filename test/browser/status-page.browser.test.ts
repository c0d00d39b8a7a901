import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it, type TestContext } from 'node:test';
import { chromium, type Browser } from 'playwright-core';
import { stringify } from 'yaml';
import { startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { send } from '../helpers/http.js';
import { until } from '../helpers/poll.js';
import { freePort } from '../helpers/ports.js';
import { signToken } from '../helpers/tokens.js';
import { startUpstream, type TestUpstream } from '../helpers/upstream.js';

/**
 * The status page as an operator's browser shows it: it loads with no console error and no
 * Content-Security-Policy violation (no script, one stylesheet, inline SVG plots), a killed
 * instance shows out of rotation after a refresh, and a screenshot is written for the README.
 */
const CHROMIUM = '/usr/bin/chromium';
const HAVE_CHROMIUM = existsSync(CHROMIUM);
const IN_CI = Boolean(process.env.CI);
export const SCREENSHOT = join(tmpdir(), 'api-gateway-status-page.png');

function skipWithoutChromium(t: TestContext): boolean {
  if (HAVE_CHROMIUM) return false;
  assert.ok(!IN_CI, `CI is set but ${CHROMIUM} is missing: install the chromium package in the CI image`);
  t.skip(`${CHROMIUM} is not installed (apt-get install chromium): the browser test of the status page is skipped outside CI`);
  return true;
}

describe('the status page in a real browser (Chromium)', { timeout: 120_000 }, () => {
  let steady: TestUpstream;
  let failing: TestUpstream;
  let gw: TestGateway;
  let admin: string;
  let browser: Browser | null = null;

  before(async () => {
    if (!HAVE_CHROMIUM) return;
    steady = await startUpstream();
    failing = await startUpstream();
    const adminPort = await freePort();
    admin = `http://127.0.0.1:${adminPort}`;
    gw = await startTestGateway(
      {
        services: {
          records: { instances: [steady.url] },
          chat: { instances: [steady.url, failing.url], healthCheck: { intervalMs: 200, timeoutMs: 150, healthyThreshold: 1, unhealthyThreshold: 1 } },
        },
        routes: [
          { name: 'records', pattern: '/api/v1/records/:id', service: 'records', phi: true, roles: ['health_provider'] },
          { name: 'chat', prefix: '/api/v1/chat', service: 'chat', permission: 'chat:read' },
        ],
      },
      { ADMIN_PORT: String(adminPort) },
    );
    const token = await signToken({ sub: 'status-page-user' });
    for (let i = 0; i < 20; i++) await send(`${gw.url}/api/v1/${i % 2 === 0 ? 'records/1' : 'chat/history'}`, { token });
    browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ['--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'] });
  });
  after(async () => {
    await browser?.close();
    await gw?.close();
    await steady?.close();
    await failing?.close().catch(() => undefined);
  });

  it('loads with no console error and no CSP violation; a killed instance shows out of rotation after a refresh; a screenshot is written', async (t) => {
    if (skipWithoutChromium(t)) return;
    const context = await browser!.newContext({ viewport: { width: 1280, height: 900 } });
    try {
      const tab = await context.newPage();
      const problems: string[] = [];
      tab.on('console', (m) => {
        if (m.type() === 'error' || m.type() === 'warning') problems.push(`${m.type()}: ${m.text()}`);
      });
      tab.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
      const res = await tab.goto(`${admin}/status`);
      assert.equal(res?.status(), 200);
      assert.equal(await tab.title(), 'api-gateway status');
      assert.ok((await tab.locator('svg.spark').count()) > 0, 'the plots are drawn');
      const font = (await tab.evaluate('getComputedStyle(document.body).fontFamily')) as string;
      assert.ok(font.includes('system-ui'), `the stylesheet is allowed by the CSP and applied (font: ${font})`);
      assert.deepEqual(problems, [], 'no console error, no CSP violation');

      await failing.close();
      await until('the instance out of rotation on the page', 10_000, async () => {
        await tab.reload();
        return (await tab.content()).includes('failing checks') ? true : undefined;
      }, 200);
      // The audit service of this gateway is unreachable: the events of the requests above wait.
      const text = await tab.locator('body').innerText();
      assert.match(text, /the audit service is unreachable/);
      const kb = async () => Number(/^([\d.]+) KB$/.exec(await tab.locator('#audit-waiting').innerText())?.[1] ?? NaN);
      const waitingBefore = await kb();
      assert.ok(waitingBefore > 0, 'events wait');
      const token = await signToken({ sub: 'status-page-user' });
      for (let i = 0; i < 10; i++) await send(`${gw.url}/api/v1/records/${i}`, { token });
      await until('the backlog grown on the page', 10_000, async () => {
        await tab.reload();
        return (await kb()) > waitingBefore ? true : undefined;
      }, 200);
      // A refused reload, with its field path.
      await writeFile(gw.routesFile, stringify({ services: { records: { instances: [steady.url] } }, routes: [{ name: 'records', path: '/x', service: 'nowhere' }] }));
      assert.equal((await gw.gateway.reload()).ok, false);
      await tab.reload();
      assert.match(await tab.locator('body').innerText(), /refused[\s\S]*routes\[0\]\.service/);
      await tab.screenshot({ path: SCREENSHOT, fullPage: true });
      assert.ok(existsSync(SCREENSHOT));
      // Readable in a narrow window: the page itself never scrolls sideways (wide tables scroll in place).
      await tab.setViewportSize({ width: 380, height: 800 });
      const overflow = (await tab.evaluate('document.documentElement.scrollWidth - document.documentElement.clientWidth')) as number;
      assert.ok(overflow <= 1, `the page is ${overflow} px wider than a 380 px window`);
      assert.deepEqual(problems, []);
    } finally {
      await context.close();
    }
  });
});
