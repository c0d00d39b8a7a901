import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { stringify } from 'yaml';
import { routesFor, startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { startUpstream, type TestUpstream } from '../helpers/upstream.js';

const PROMETHEUS_DIR = fileURLToPath(new URL('../../deploy/prometheus/', import.meta.url));
const DASHBOARD = fileURLToPath(new URL('../../deploy/grafana/api-gateway-dashboard.json', import.meta.url));
const PROMTOOL = ['/usr/bin/promtool', '/usr/local/bin/promtool'].find((p) => existsSync(p));
// CI installs Debian's prometheus package for promtool (.ci/run); elsewhere the checks need it too.
const skip = PROMTOOL === undefined && !process.env.CI ? 'promtool is not installed (apt-get install prometheus)' : false;

function promtool(...args: string[]): { status: number | null; out: string } {
  assert.ok(PROMTOOL, 'promtool is required in CI: .ci/run installs the prometheus package');
  const r = spawnSync(PROMTOOL, args, { cwd: PROMETHEUS_DIR, encoding: 'utf8' });
  return { status: r.status, out: `${r.stdout}${r.stderr}` };
}

interface Dashboard {
  panels: Array<{ title: string; targets: Array<{ expr: string }> }>;
}
const dashboard = JSON.parse(readFileSync(DASHBOARD, 'utf8')) as Dashboard;
const dashboardExprs = dashboard.panels.flatMap((p) => p.targets.map((t) => ({ panel: p.title, expr: t.expr.replaceAll('$job', 'api-gateway') })));
const rulesText = readFileSync(join(PROMETHEUS_DIR, 'api-gateway-rules.yaml'), 'utf8');

/** Metric names a PromQL text refers to (api_gateway_*, process_*, nodejs_*). */
function metricNames(text: string): Set<string> {
  return new Set([...text.matchAll(/\b((?:api_gateway|process|nodejs)_[a-z0-9_]+)/g)].map((m) => m[1]!).filter((n) => !n.includes(':')));
}

describe('Prometheus alert rules and the Grafana dashboard', { skip }, () => {
  let upstream: TestUpstream;
  let gw: TestGateway;
  let exposition = '';
  before(async () => {
    upstream = await startUpstream();
    gw = await startTestGateway(routesFor(upstream.url, [{ name: 'open', prefix: '/open', auth: 'public' }, { name: 'closed', prefix: '/closed' }]), {
      RATE_LIMIT_PER_ADDRESS_PER_MINUTE: '2',
    });
    for (let i = 0; i < 4; i++) await (await fetch(`${gw.url}/open/x`)).arrayBuffer();
    await (await fetch(`${gw.url}/closed/x`, { headers: { authorization: 'Bearer nope' } })).arrayBuffer();
    await (await fetch(`${gw.url}/health`)).arrayBuffer();
    exposition = await (await fetch(`${gw.url}/metrics`)).text();
  });
  after(async () => {
    await gw.close();
    await upstream.close();
  });

  it('the rules are valid (promtool check rules)', () => {
    const r = promtool('check', 'rules', 'api-gateway-rules.yaml');
    assert.equal(r.status, 0, r.out);
  });

  it("the spec's alerts fire on the series that should trip them, and only on those (promtool test rules)", () => {
    const r = promtool('test', 'rules', 'api-gateway-rules.test.yaml');
    assert.equal(r.status, 0, r.out);
    for (const alert of ['ApiGatewayDown', 'ApiGatewayHighErrorRate', 'ApiGatewayAuthFailureSpike', 'ApiGatewaySlowResponses', 'ApiGatewayRateLimitingActive', 'ApiGatewayMemoryHigh', 'ApiGatewayDependencyUnhealthy']) {
      assert.ok(rulesText.includes(`alert: ${alert}`), `${alert} is defined`);
    }
  });

  it("every dashboard query is valid PromQL (checked by promtool as recording rules)", () => {
    const dir = mkdtempSync(join(tmpdir(), 'gw-dash-'));
    try {
      const file = join(dir, 'dashboard-rules.yaml');
      writeFileSync(file, stringify({ groups: [{ name: 'dashboard', rules: dashboardExprs.map((e, i) => ({ record: `dashboard:panel_${i}`, expr: e.expr })) }] }));
      const r = promtool('check', 'rules', file);
      assert.equal(r.status, 0, r.out);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('every metric the rules and the dashboard use is one the gateway exports (the exposition passes promtool check metrics)', () => {
    const exported = new Set([...exposition.matchAll(/^# TYPE (\S+) (\S+)/gm)].flatMap((m) => (m[2] === 'histogram' ? [m[1]!, `${m[1]}_bucket`, `${m[1]}_sum`, `${m[1]}_count`] : [m[1]!])));
    const used = new Set([...metricNames(rulesText), ...dashboardExprs.flatMap((e) => [...metricNames(e.expr)])]);
    const missing = [...used].filter((n) => !exported.has(n));
    assert.deepEqual(missing, [], `not exported by the gateway: ${missing.join(', ')}`);
    const check = spawnSync(PROMTOOL!, ['check', 'metrics'], { input: exposition, encoding: 'utf8' });
    // check metrics lints names too; only a parse failure (exit 1 with "error") is a broken exposition.
    assert.ok(!/error while linting|text format parsing error/i.test(`${check.stdout}${check.stderr}`), `${check.stdout}${check.stderr}`);
  });
});
