import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';
import { request, type Dispatcher } from 'undici';
import { startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { freePort } from '../helpers/ports.js';
import { signToken } from '../helpers/tokens.js';
import { startUpstream, type TestUpstream } from '../helpers/upstream.js';
import { parseExposition as parse, type Sample } from '../helpers/prometheus.js';

/**
 * The /metrics exposition after mixed traffic: valid for Prometheus (promtool), counts that add
 * up, labels that stay bounded and never carry a raw path or a query value.
 */

const PROMTOOL = ['/usr/bin/promtool', '/usr/local/bin/promtool'].find((p) => existsSync(p));
// CI installs promtool (.ci/run); elsewhere the check is skipped rather than failed.
const noPromtool = PROMTOOL === undefined && !process.env.CI ? 'promtool is not installed (apt-get install prometheus)' : false;

const key = (s: Sample) => `${s.labels.method} ${s.labels.path} ${s.labels.status}`;
const KNOWN_METHODS = new Set(['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS', 'OTHER']);
/** Route templates of the routes file below, the gateway's own endpoints, and the one value for everything unrouted. */
const PATH_LABELS = new Set(['/api/items/:id', '/api/items', '/open/*', '/down/*', '/metrics', '/health', '/health/live', '/health/ready', 'unmatched']);
/** Substrings of the raw paths and query values sent: none may show in a label. */
const RAW = ['RAW-', 'QVAL-', 'unknown-', 'near-miss', '?', '&'];

describe('metrics exposition after mixed traffic', () => {
  let upstream: TestUpstream;
  let gw: TestGateway;
  let deadPort: number;
  /** `method path status` -> requests sent that should be counted under it. */
  const expected = new Map<string, number>();
  /** 401 refusals by the error code in the answer. */
  const refusals = new Map<string, number>();
  let exposition = '';
  let seriesBefore: Sample[] = [];

  before(async () => {
    upstream = await startUpstream((req, res) => {
      req.resume();
      req.on('end', () => {
        const status = Number(req.headers['x-want-status'] ?? 200);
        if (status === 204 || req.method === 'HEAD') res.writeHead(status).end();
        else res.writeHead(status, { 'content-type': 'application/json' }).end('{"ok":true}');
      });
    });
    deadPort = await freePort();
    gw = await startTestGateway(
      {
        services: {
          backend: { instances: [upstream.url], retry: false },
          gone: { instances: [`http://127.0.0.1:${deadPort}`], healthCheck: false, retry: false, outlierDetection: false },
        },
        routes: [
          { name: 'item', pattern: '/api/items/:id', methods: ['GET', 'PUT', 'DELETE'], auth: 'required', service: 'backend' },
          { name: 'items', path: '/api/items', methods: ['POST'], auth: 'required', service: 'backend' },
          { name: 'open', prefix: '/open', auth: 'public', service: 'backend' },
          { name: 'down', prefix: '/down', auth: 'required', service: 'gone' },
        ],
      },
      { RATE_LIMIT_PER_MINUTE: '1000000' },
    );
  });
  after(async () => {
    await gw?.close();
    await upstream?.close();
  });

  async function call(method: Dispatcher.HttpMethod, path: string, status: number, label: string, headers: Record<string, string> = {}, body?: string): Promise<string> {
    const res = await request(`${gw.url}${path}`, { method, headers, body });
    const text = await res.body.text();
    assert.equal(res.statusCode, status, `${method} ${path}: ${text}`);
    const k = `${KNOWN_METHODS.has(method) ? method : 'OTHER'} ${label} ${status}`;
    expected.set(k, (expected.get(k) ?? 0) + 1);
    return text;
  }

  async function refused(path: string, authorization: string | undefined): Promise<void> {
    const text = await call('GET', path, 401, '/api/items/:id', authorization === undefined ? {} : { authorization });
    const code = (JSON.parse(text) as { code: string }).code;
    refusals.set(code, (refusals.get(code) ?? 0) + 1);
  }

  async function scrape(): Promise<string> {
    const res = await request(`${gw.url}/metrics`);
    assert.equal(res.statusCode, 200);
    assert.match(String(res.headers['content-type']), /^text\/plain; version=0\.0\.4/);
    return res.body.text();
  }

  const requestSeries = (samples: Sample[]) => samples.filter((s) => s.name === 'api_gateway_requests_total');

  it('traffic on known routes, errors and 1,000 unknown paths', async () => {
    const token = await signToken({ sub: 'metrics-user-RAW-sub', role: 'health_provider' });
    const auth = { authorization: `Bearer ${token}` };
    for (let i = 0; i < 3; i++) await call('GET', `/api/items/item-RAW-${i}?secret=QVAL-${i}`, 200, '/api/items/:id', auth);
    for (let i = 0; i < 2; i++) await call('PUT', `/api/items/item-RAW-p${i}`, 204, '/api/items/:id', { ...auth, 'x-want-status': '204', 'content-type': 'application/json' }, '{"a":1}');
    await call('DELETE', '/api/items/item-RAW-d', 404, '/api/items/:id', { ...auth, 'x-want-status': '404' });
    for (let i = 0; i < 2; i++) await call('POST', '/api/items?name=QVAL-post', 201, '/api/items', { ...auth, 'x-want-status': '201', 'content-type': 'application/json' }, '{"b":2}');
    await call('GET', '/open/page-RAW-o?q=QVAL-open', 200, '/open/*');
    await call('HEAD', '/open/page-RAW-h', 200, '/open/*');
    await call('GET', '/open/page-RAW-500', 500, '/open/*', { 'x-want-status': '500' });

    // 401: each kind of refusal, counted by reason.
    await refused('/api/items/item-RAW-401a', undefined);
    await refused('/api/items/item-RAW-401b?QVAL-x=1', undefined);
    await refused('/api/items/item-RAW-401c', 'Bearer not.a.token');
    await refused('/api/items/item-RAW-401d', 'Basic dXNlcjpwYXNz');
    await refused('/api/items/item-RAW-401e', `Bearer ${await signToken({ expiresInSeconds: -3600 })}`);
    await refused('/api/items/item-RAW-401f', `Bearer ${await signToken({ secret: 'another-secret-entirely-0123456789abcdef' })}`);
    // 405: a known path with a method its route does not take; the own endpoints take GET only.
    await call('POST', '/api/items/item-RAW-405', 405, 'unmatched', auth);
    await call('PATCH', '/api/items/item-RAW-405b?QVAL-y=2', 405, 'unmatched', auth);
    // 502: the only instance of the service refuses connections.
    for (let i = 0; i < 2; i++) await call('GET', `/down/RAW-down-${i}?QVAL-d=${i}`, 502, '/down/*', auth);

    // The first scrape is counted after it answers: this one makes the GET /metrics series exist.
    await scrape();
    seriesBefore = requestSeries(parse(await scrape()));

    for (let i = 0; i < 1000; i++) {
      const path = [`/unknown-${i}-${Math.random().toString(36).slice(2)}`, `/api/items/near-miss-${i}/deeper`, `/api/v9/unknown-${i}?QVAL-u=${i}`, `/openness/unknown-${i}`][i % 4]!;
      await call('GET', path, 404, 'unmatched');
    }
    exposition = await scrape();
  });

  it('promtool check metrics parses the exposition: no error, lint only about the names of non-gateway metrics', { skip: noPromtool }, () => {
    assert.ok(PROMTOOL, 'promtool is required in CI');
    const check = spawnSync(PROMTOOL, ['check', 'metrics'], { input: exposition, encoding: 'utf8' });
    const out = `${check.stdout}${check.stderr}`;
    // 0: clean; 3: lint findings only; 1: the exposition could not be parsed.
    assert.ok(check.status === 0 || check.status === 3, `promtool exit ${check.status}: ${out}`);
    assert.doesNotMatch(out, /error/i);
    const NAMING = /(should not have "_total" suffix|should have "_total" suffix|should not have "_count" suffix|should not have "_sum" suffix|should not have "_bucket" suffix|snake_case|base unit|should not be used in metric names)/;
    for (const line of out.split('\n').filter((l) => l.trim() !== '')) {
      assert.match(line, NAMING, `a lint finding not about naming: ${line}`);
      assert.doesNotMatch(line, /^api_gateway_/, `the gateway's own metric is linted: ${line}`);
    }

    // The check does fail on a broken exposition: the assertion above is not vacuous.
    const broken = spawnSync(PROMTOOL, ['check', 'metrics'], { input: '# TYPE api_gateway_x counter\napi_gateway_x{path="a" 1\n', encoding: 'utf8' });
    assert.equal(broken.status, 1, `${broken.stdout}${broken.stderr}`);
  });

  it('api_gateway_requests_total has exactly the series and counts of the traffic', () => {
    const samples = parse(exposition);
    const own = new Set(['/metrics', '/health', '/health/live', '/health/ready']);
    const counted = new Map(requestSeries(samples).filter((s) => !own.has(s.labels.path!)).map((s) => [key(s), s.value]));
    assert.deepEqual(Object.fromEntries([...counted].sort()), Object.fromEntries([...expected].sort()));
    assert.equal(counted.get('GET unmatched 404'), 1000);
    // The histogram counts the same requests.
    for (const s of samples.filter((x) => x.name === 'api_gateway_request_duration_seconds_count' && !own.has(x.labels.path!))) {
      assert.equal(s.value, expected.get(key(s)), `duration count of ${key(s)}`);
    }
  });

  it('1,000 distinct unknown paths add at most the one `unmatched` series', () => {
    const after = requestSeries(parse(exposition));
    const before = new Set(seriesBefore.map(key));
    const added = after.map(key).filter((k) => !before.has(k));
    assert.ok(after.length - seriesBefore.length <= 1, `series before ${seriesBefore.length}, after ${after.length}: added ${JSON.stringify(added)}`);
    // The second scrape of the warm-up pair is the only other request in between, on a series that already exists.
    assert.deepEqual(added, ['GET unmatched 404']);
    const histogramSeries = (list: Sample[]) => new Set(list.filter((s) => s.name.startsWith('api_gateway_request_duration_seconds')).map(key)).size;
    assert.ok(histogramSeries(parse(exposition)) <= seriesBefore.length + 1);
  });

  it('no label carries a raw path, a query value or a user id; path labels are route templates or `unmatched`', () => {
    const samples = parse(exposition);
    for (const s of samples) {
      for (const [name, value] of Object.entries(s.labels)) {
        for (const raw of RAW) assert.ok(!value.includes(raw), `${s.name}{${name}="${value}"} carries a raw path or query`);
        assert.ok(!value.includes('metrics-user'), `${s.name}{${name}="${value}"} carries a user id`);
      }
      if (s.labels.path !== undefined) assert.ok(PATH_LABELS.has(s.labels.path), `${s.name} path label "${s.labels.path}"`);
      if (s.name.startsWith('api_gateway_request')) {
        assert.ok(KNOWN_METHODS.has(s.labels.method!), `method label ${s.labels.method}`);
        assert.match(s.labels.status!, /^[1-5]\d\d$/);
      }
    }
    // Bounded: route templates x methods x statuses, whatever the traffic.
    assert.ok(requestSeries(samples).length < 30, `${requestSeries(samples).length} request series`);
  });

  it('the duration histogram has the 0.1 and 0.5 buckets, cumulative, +Inf equal to the count', () => {
    const samples = parse(exposition);
    const counts = samples.filter((s) => s.name === 'api_gateway_request_duration_seconds_count');
    assert.ok(counts.length > 0);
    for (const count of counts) {
      const buckets = samples.filter((s) => s.name === 'api_gateway_request_duration_seconds_bucket' && key(s) === key(count));
      const les = buckets.map((b) => b.labels.le);
      assert.ok(les.includes('0.1') && les.includes('0.5'), `buckets of ${key(count)}: ${les.join(',')}`);
      assert.equal(les.at(-1), '+Inf');
      for (let i = 1; i < buckets.length; i++) assert.ok(buckets[i]!.value >= buckets[i - 1]!.value, `cumulative buckets of ${key(count)}`);
      assert.equal(buckets.at(-1)!.value, count.value);
      const sum = samples.find((s) => s.name === 'api_gateway_request_duration_seconds_sum' && key(s) === key(count));
      assert.ok(sum !== undefined && sum.value >= 0);
    }
  });

  it('api_gateway_auth_failures_total counts each 401 under the reason the client was given', () => {
    const samples = parse(exposition);
    const failures = Object.fromEntries(samples.filter((s) => s.name === 'api_gateway_auth_failures_total').map((s) => [s.labels.reason!, s.value]));
    assert.deepEqual(failures, Object.fromEntries(refusals));
    const total401 = requestSeries(samples).filter((s) => s.labels.status === '401').reduce((n, s) => n + s.value, 0);
    assert.equal(Object.values(failures).reduce((n, v) => n + v, 0), total401);
    assert.ok(refusals.size >= 4, `distinct reasons: ${[...refusals.keys()].join(', ')}`);
  });

  it('upstream series per service and per instance', () => {
    const samples = parse(exposition);
    const value = (name: string, labels: Record<string, string>) => {
      const found = samples.filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v));
      assert.equal(found.length, 1, `${name}${JSON.stringify(labels)}: ${found.length} series`);
      return found[0]!.value;
    };
    const backend = { service: 'backend', upstream: upstream.url };
    const gone = { service: 'gone', upstream: `http://127.0.0.1:${deadPort}` };
    assert.equal(value('api_gateway_upstream_requests_total', backend), upstream.received.length);
    assert.equal(value('api_gateway_upstream_response_seconds_count', backend), upstream.received.length);
    assert.equal(value('api_gateway_upstream_failures_total', { ...backend, kind: 'status' }), 1, 'the one 500');
    assert.equal(value('api_gateway_upstream_failures_total', { ...backend, kind: 'connect' }), 0);
    assert.equal(value('api_gateway_upstream_healthy', backend), 1);
    assert.equal(value('api_gateway_upstream_requests_total', gone), 2);
    assert.equal(value('api_gateway_upstream_failures_total', { ...gone, kind: 'connect' }), 2);
    assert.equal(value('api_gateway_upstream_response_seconds_count', gone), 0);
    assert.equal(value('api_gateway_upstream_ejections_total', gone), 0);
    assert.ok(samples.some((s) => s.name === 'api_gateway_upstream_response_seconds_bucket' && s.labels.upstream === upstream.url && s.labels.le === '+Inf'));
    for (const svc of ['backend', 'gone']) {
      for (const name of ['api_gateway_upstream_retries_total', 'api_gateway_upstream_unavailable_total', 'api_gateway_upstream_overflow_total', 'api_gateway_upstream_active_requests']) {
        value(name, { service: svc });
      }
    }
    assert.equal(value('api_gateway_upstream_active_requests', { service: 'backend' }), 0);
    // Every per-instance series names a configured instance, nothing else.
    const instances = new Set(samples.filter((s) => s.labels.upstream !== undefined).map((s) => s.labels.upstream));
    assert.deepEqual([...instances].sort(), [upstream.url, `http://127.0.0.1:${deadPort}`].sort());
  });

  it("the gateway's other metrics are exported", () => {
    const names = new Set(parse(exposition).map((s) => s.name));
    const types = new Set([...exposition.matchAll(/^# TYPE (\S+) /gm)].map((m) => m[1]));
    for (const name of ['api_gateway_rate_limit_exceeded_total', 'api_gateway_rate_limited_subjects', 'api_gateway_memory_limit_bytes', 'api_gateway_audit_events_delivered_total', 'api_gateway_audit_spool_bytes', 'process_resident_memory_bytes']) {
      assert.ok(names.has(name), `${name} has a sample`);
    }
    // Labelled series that exist once something happened: declared either way.
    for (const name of ['api_gateway_dependency_up', 'api_gateway_config_reloads_total', 'api_gateway_auth_failures_total']) assert.ok(types.has(name), `# TYPE ${name}`);
    assert.ok(parse(exposition).find((s) => s.name === 'api_gateway_memory_limit_bytes')!.value > 0);
  });
});
