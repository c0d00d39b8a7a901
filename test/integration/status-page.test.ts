import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { after, before, describe, it } from 'node:test';
import { stringify } from 'yaml';
import { createAuditStandIn } from '../../dev/stand-ins/audit-logging.js';
import { close as closeServer, listen } from '../../dev/stand-ins/http-util.js';
import type { StatusData } from '../../src/observability/status-page.js';
import { startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { send } from '../helpers/http.js';
import { until } from '../helpers/poll.js';
import { freePort } from '../helpers/ports.js';
import { signToken } from '../helpers/tokens.js';
import { startUpstream, type TestUpstream } from '../helpers/upstream.js';

/**
 * The status page on the admin listener (/status, /status.json): routes with their recent rate,
 * errors and p95, services with each instance's state, the audit trail, the last reloads; on
 * loopback only, read-only, and nothing in it that identifies a person.
 */
const CANARY = 'canary-7f3a9c';

describe('the status page (ADMIN_PORT)', () => {
  let steady: TestUpstream;
  let failing: TestUpstream;
  let gw: TestGateway;
  let admin: string;
  let auditPort: number;
  const audit = createAuditStandIn();
  let routes: Record<string, unknown>;

  before(async () => {
    steady = await startUpstream();
    failing = await startUpstream();
    auditPort = await freePort();
    const adminPort = await freePort();
    admin = `http://127.0.0.1:${adminPort}`;
    routes = {
      services: {
        backend: { instances: [steady.url] },
        pair: { instances: [steady.url, failing.url], healthCheck: { intervalMs: 200, timeoutMs: 150, healthyThreshold: 1, unhealthyThreshold: 1 } },
      },
      routes: [
        { name: 'records', pattern: '/api/records/:id', service: 'backend', phi: true },
        { name: 'pair', prefix: '/api/pair', service: 'pair', auth: 'public' },
      ],
    };
    // The audit service is not up yet: events wait in the spool.
    gw = await startTestGateway(routes, { ADMIN_PORT: String(adminPort), AUDIT_SERVICE_URL: `http://127.0.0.1:${auditPort}`, ROUTES_WATCH: 'false' });
  });
  after(async () => {
    await gw?.close();
    await steady?.close();
    await failing?.close();
    await closeServer(audit.server).catch(() => undefined);
  });

  async function status(): Promise<StatusData> {
    const res = await send(`${admin}/status.json`);
    assert.equal(res.statusCode, 200, res.text);
    return JSON.parse(res.text) as StatusData;
  }

  it('shows the routes with their recent traffic, and nothing that identifies a person', async () => {
    const token = await signToken({ sub: `${CANARY}-user`, role: 'health_provider' });
    for (let i = 0; i < 6; i++) assert.equal((await send(`${gw.url}/api/records/${CANARY}-record?q=${CANARY}-query`, { token })).statusCode, 200);
    const data = await status();
    const records = data.routes.find((r) => r.name === 'records')!;
    assert.equal(records.match, '/api/records/:id');
    assert.equal(records.phi, true);
    assert.ok(records.lastMinute.ratePerSecond > 0, JSON.stringify(records.lastMinute));
    assert.ok(records.lastMinute.p95Ms !== null);
    const page = await send(`${admin}/status`);
    assert.equal(page.statusCode, 200);
    assert.match(String(page.headers['content-type']), /^text\/html/);
    assert.match(String(page.headers['content-security-policy']), /default-src 'none'/);
    assert.match(page.text, /<code>\/api\/records\/:id<\/code>/);
    for (const text of [page.text, JSON.stringify(data)]) {
      assert.ok(!text.includes(CANARY), 'no user id, path with an id, or query value');
    }
    assert.equal((await send(`${admin}/status.css`)).statusCode, 200);
  });

  it('an instance that fails its checks shows out of rotation within a health interval', async () => {
    await failing.close();
    const pair = await until('the killed instance out of rotation', 5_000, async () => {
      const svc = (await status()).services.find((s) => s.name === 'pair')!;
      return svc.instances.some((i) => i.state !== 'in rotation') ? svc : undefined;
    }, 100);
    assert.deepEqual(pair.instances.map((i) => i.state).sort(), ['failing checks', 'in rotation']);
    assert.match((await send(`${admin}/status`)).text, /failing checks/);
  });

  it('the audit backlog while the audit service is down, then delivered', async () => {
    const before = await status();
    assert.equal(before.audit!.failing, true);
    assert.ok(before.audit!.waitingBytes > 0, 'the events of the requests above wait in the spool');
    assert.ok(before.audit!.waitingSeconds >= 0);
    await listen(audit.server, auditPort);
    await until('the backlog delivered', 15_000, async () => {
      const a = (await status()).audit!;
      return a.waitingBytes === 0 && !a.failing ? true : undefined;
    }, 100);
  });

  it('a refused reload shows its field path; an accepted one shows as accepted', async () => {
    await writeFile(gw.routesFile, stringify({ ...routes, routes: [{ name: 'records', pattern: '/api/records/:id', service: 'nowhere' }] }));
    assert.equal((await gw.gateway.reload()).ok, false);
    const refused = (await status()).reloads[0]!;
    assert.equal(refused.accepted, false);
    assert.ok(refused.problems.some((p) => p.includes('routes[0].service')), refused.problems.join('; '));
    assert.match((await send(`${admin}/status`)).text, /routes\[0\]\.service/);
    await writeFile(gw.routesFile, stringify(routes));
    assert.equal((await gw.gateway.reload()).ok, true);
    assert.equal((await status()).reloads[0]!.accepted, true);
  });

  it('only on the admin listener, only for a loopback Host, and read-only', async () => {
    assert.equal((await send(`${gw.url}/status`)).statusCode, 404, 'not on the public port');
    assert.equal((await send(`${admin}/status`, { headers: { host: 'status.example.com' } })).statusCode, 403);
    assert.equal((await send(`${admin}/status`, { method: 'POST', body: '{}' })).statusCode, 405);
  });
});
