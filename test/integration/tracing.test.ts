import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { request } from 'undici';
import { startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { until } from '../helpers/poll.js';
import { freePort } from '../helpers/ports.js';
import { signToken } from '../helpers/tokens.js';
import { startUpstream, type TestUpstream } from '../helpers/upstream.js';

/**
 * OpenTelemetry tracing end to end: a real OTLP/HTTP (JSON) receiver on loopback, the gateway
 * exporting to it, and the trace context the upstream receives.
 */

// The batch span processor reads its delay from this process's environment (not from the env the
// gateway is given): a short one lets the spans of a request arrive while the gateway runs.
const savedDelay = process.env.OTEL_BSP_SCHEDULE_DELAY;
process.env.OTEL_BSP_SCHEDULE_DELAY = '50';
after(() => {
  if (savedDelay === undefined) delete process.env.OTEL_BSP_SCHEDULE_DELAY;
  else process.env.OTEL_BSP_SCHEDULE_DELAY = savedDelay;
});

// ---------------------------------------------------------------------------------------------
// An OTLP/HTTP JSON receiver

type AnyValue = { stringValue?: string; intValue?: number | string; boolValue?: boolean; doubleValue?: number };
interface OtlpSpan {
  traceId: string;
  spanId: string;
  parentSpanId?: string;
  traceState?: string;
  name: string;
  /** 1 internal, 2 server, 3 client. */
  kind: number;
  attributes: Array<{ key: string; value: AnyValue }>;
  status?: { code?: number; message?: string };
}
const KIND = { INTERNAL: 1, SERVER: 2, CLIENT: 3 } as const;
const STATUS_ERROR = 2;

interface Receiver {
  url: string;
  port: number;
  spans: OtlpSpan[];
  /** service.name of the resource of every batch received. */
  serviceNames: Set<string>;
  /** Every export request: method, path, content type. */
  requests: Array<{ method: string; path: string; contentType: string | undefined }>;
  /** TCP connections accepted, whether or not a request followed. */
  connections: number;
  close(): Promise<void>;
}

async function startReceiver(port = 0): Promise<Receiver> {
  const spans: OtlpSpan[] = [];
  const serviceNames = new Set<string>();
  const requests: Receiver['requests'] = [];
  let connections = 0;
  const server: Server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      requests.push({ method: req.method!, path: req.url!, contentType: req.headers['content-type'] });
      if (req.method === 'POST' && String(req.headers['content-type']).startsWith('application/json')) {
        const body = JSON.parse(Buffer.concat(chunks).toString('utf8')) as {
          resourceSpans?: Array<{ resource?: { attributes?: OtlpSpan['attributes'] }; scopeSpans?: Array<{ spans?: OtlpSpan[] }> }>;
        };
        for (const rs of body.resourceSpans ?? []) {
          const name = rs.resource?.attributes?.find((a) => a.key === 'service.name')?.value.stringValue;
          if (name !== undefined) serviceNames.add(name);
          for (const ss of rs.scopeSpans ?? []) spans.push(...(ss.spans ?? []));
        }
      }
      res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
    });
  });
  server.on('connection', () => connections++);
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', () => resolve());
  });
  const actual = (server.address() as AddressInfo).port;
  return {
    url: `http://127.0.0.1:${actual}`,
    port: actual,
    spans,
    serviceNames,
    requests,
    get connections() {
      return connections;
    },
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

function attrs(span: OtlpSpan): Record<string, string | number | boolean> {
  const out: Record<string, string | number | boolean> = {};
  for (const { key, value } of span.attributes) {
    out[key] = value.stringValue ?? (value.intValue !== undefined ? Number(value.intValue) : undefined) ?? value.boolValue ?? value.doubleValue ?? '';
  }
  return out;
}

const isRoot = (span: OtlpSpan) => span.parentSpanId === undefined || span.parentSpanId === '';

/** Waits until the receiver holds `count` spans of the trace. */
function spansOf(receiver: Receiver, traceId: string, count: number): Promise<OtlpSpan[]> {
  return until(`${count} spans of trace ${traceId}`, 5_000, async () => {
    const found = receiver.spans.filter((s) => s.traceId === traceId);
    return found.length >= count ? found : undefined;
  });
}

function one(spans: OtlpSpan[], name: string): OtlpSpan {
  const found = spans.filter((s) => s.name === name);
  assert.equal(found.length, 1, `one span named ${name}: ${JSON.stringify(spans.map((s) => s.name))}`);
  return found[0]!;
}

function accessLine(gw: TestGateway, requestId: string): Promise<Record<string, unknown>> {
  return until(`the access-log line of ${requestId}`, 2_000, async () => gw.logs.find((l) => l.request_id === requestId && (l.message === 'request' || l.message === 'slow request')), 5);
}

const hex = (bytes: number) => randomBytes(bytes).toString('hex');
const TRACEPARENT = /^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$/;

/** The attributes a span may carry: route template, method, status, gateway error code, upstream. None can hold PHI. */
const ALLOWED_ATTRIBUTES = new Set(['http.route', 'http.request.method', 'http.response.status_code', 'error.type', 'gateway.service', 'gateway.retries', 'server.address', 'server.port']);

function routes(upstreamUrl: string, deadPort: number): Record<string, unknown> {
  return {
    services: {
      backend: { instances: [upstreamUrl] },
      // Nothing listens there; no health checks, retries or ejection, so each request tries it once.
      gone: { instances: [`http://127.0.0.1:${deadPort}`], healthCheck: false, retry: false, outlierDetection: false },
    },
    routes: [
      { name: 'records', pattern: '/api/records/:id', methods: ['GET', 'PUT'], auth: 'required', service: 'backend' },
      { name: 'open', prefix: '/open', auth: 'public', service: 'backend' },
      { name: 'down', prefix: '/down', auth: 'required', service: 'gone' },
    ],
  };
}

// ---------------------------------------------------------------------------------------------

describe('tracing on (OTEL_EXPORTER_OTLP_ENDPOINT)', () => {
  let receiver: Receiver;
  let upstream: TestUpstream;
  let gw: TestGateway;
  let token: string;

  before(async () => {
    receiver = await startReceiver();
    upstream = await startUpstream();
    gw = await startTestGateway(routes(upstream.url, await freePort()), {
      OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url,
      // The client address comes from X-Forwarded-For, so that it differs from every loopback address in play.
      TRUSTED_PROXIES: '127.0.0.1',
    });
    token = await signToken({ sub: 'trace-user-0042', role: 'health_provider' });
  });
  after(async () => {
    await gw.close();
    await upstream.close();
    await receiver.close();
  });

  it("continues the client's trace: server span under the client's span, stage spans under it, the upstream's traceparent from the upstream span", async () => {
    const traceId = hex(16);
    const clientSpan = hex(8);
    const secrets = ['rec-4711-RAWPATH', 'QUERY-SECRET-91a3', 'HEADER-SECRET-77b2', 'UA-SECRET-0c4d', 'COOKIE-SECRET-5e6f', '203.0.113.77', token, token.split('.')[2]!];
    const res = await request(`${gw.url}/api/records/rec-4711-RAWPATH?q=QUERY-SECRET-91a3&x=1`, {
      headers: {
        authorization: `Bearer ${token}`,
        traceparent: `00-${traceId}-${clientSpan}-01`,
        tracestate: 'congo=t61rcWkgMzE',
        'x-forwarded-for': '203.0.113.77',
        'x-patient-note': 'HEADER-SECRET-77b2',
        'user-agent': 'UA-SECRET-0c4d',
        cookie: 'sid=COOKIE-SECRET-5e6f',
      },
    });
    assert.equal(res.statusCode, 200, await res.body.text());
    const requestId = res.headers['x-request-id'] as string;

    const spans = await spansOf(receiver, traceId, 4);
    assert.equal(spans.length, 4, `server, authenticate, access_check, upstream: ${JSON.stringify(spans.map((s) => s.name))}`);
    const server = one(spans, 'GET /api/records/:id');
    assert.equal(server.kind, KIND.SERVER);
    assert.equal(server.parentSpanId, clientSpan, "the server span's parent is the client's span");
    assert.deepEqual(
      { route: attrs(server)['http.route'], method: attrs(server)['http.request.method'], status: attrs(server)['http.response.status_code'] },
      { route: '/api/records/:id', method: 'GET', status: 200 },
    );
    assert.equal(attrs(server)['error.type'], undefined);
    assert.notEqual(server.status?.code, STATUS_ERROR);

    const authenticate = one(spans, 'authenticate');
    const accessCheck = one(spans, 'access_check');
    const upstreamSpan = one(spans, 'upstream');
    for (const child of [authenticate, accessCheck, upstreamSpan]) {
      assert.equal(child.traceId, traceId);
      assert.equal(child.parentSpanId, server.spanId, `${child.name} is a child of the server span`);
      assert.equal(attrs(child)['error.type'], undefined, `${child.name} succeeded`);
    }
    assert.equal(authenticate.kind, KIND.INTERNAL);
    assert.equal(accessCheck.kind, KIND.INTERNAL);
    assert.equal(upstreamSpan.kind, KIND.CLIENT);
    assert.equal(attrs(upstreamSpan)['http.response.status_code'], 200);
    assert.equal(attrs(upstreamSpan)['gateway.service'], 'backend');
    assert.equal(new Set(spans.map((s) => s.spanId)).size, 4, 'distinct span ids');

    // What the upstream got: the same trace, with the gateway's upstream span as parent.
    const seen = upstream.received.at(-1)!;
    assert.equal(seen.headers['x-request-id'], requestId);
    assert.equal(seen.headers.traceparent, `00-${traceId}-${upstreamSpan.spanId}-01`);
    assert.equal(seen.headers.tracestate, 'congo=t61rcWkgMzE', "the client's tracestate travels on with its trace");
    assert.equal(seen.rawHeaders.filter((h) => h.toLowerCase() === 'traceparent').length, 1, 'exactly one traceparent upstream');

    assert.equal((await accessLine(gw, requestId)).trace_id, traceId);

    // PHI-safe attributes: only the allowed keys; no raw path, query, header value, cookie, client address or token.
    for (const span of spans) {
      for (const key of Object.keys(attrs(span))) assert.ok(ALLOWED_ATTRIBUTES.has(key), `span ${span.name} has the attribute ${key}`);
    }
    const text = JSON.stringify(spans);
    for (const secret of secrets) assert.ok(!text.includes(secret), `an exported span contains ${secret.slice(0, 24)}: ${text}`);
  });

  it('a request without traceparent starts a new trace, which the upstream and the access log share', async () => {
    const res = await request(`${gw.url}/open/page`);
    assert.equal(res.statusCode, 200);
    await res.body.dump();
    const line = await accessLine(gw, res.headers['x-request-id'] as string);
    const traceId = line.trace_id as string;
    assert.match(traceId, /^[0-9a-f]{32}$/);
    assert.notEqual(traceId, '0'.repeat(32));

    const spans = await spansOf(receiver, traceId, 3);
    const server = one(spans, 'GET /open/*');
    assert.ok(isRoot(server), `the server span is a root span: parent ${server.parentSpanId}`);
    assert.equal(attrs(server)['http.route'], '/open/*');
    assert.deepEqual(spans.map((s) => s.name).sort(), ['GET /open/*', 'access_check', 'upstream'], 'a public route has no authenticate span');
    const upstreamSpan = one(spans, 'upstream');
    const m = TRACEPARENT.exec(String(upstream.received.at(-1)!.headers.traceparent));
    assert.ok(m, `a W3C traceparent upstream: ${String(upstream.received.at(-1)!.headers.traceparent)}`);
    assert.equal(m[1], traceId);
    assert.equal(m[2], upstreamSpan.spanId);
    assert.equal(m[3], '01');
  });

  it('an invalid traceparent is ignored: a new trace starts, not one with the sent id', async () => {
    const sent = hex(16);
    const res = await request(`${gw.url}/open/invalid-parent`, { headers: { traceparent: `ff-${sent}-${hex(8)}-01` } });
    assert.equal(res.statusCode, 200);
    await res.body.dump();
    const traceId = (await accessLine(gw, res.headers['x-request-id'] as string)).trace_id as string;
    assert.match(traceId, /^[0-9a-f]{32}$/);
    assert.notEqual(traceId, sent);
    const server = one(await spansOf(receiver, traceId, 3), 'GET /open/*');
    assert.ok(isRoot(server));
  });

  it('a 401 ends the server and authenticate spans with error.type, and no later stage has a span', async () => {
    for (const [authorization, code] of [
      [undefined, 'GW_AUTH_TOKEN_MISSING'],
      ['Bearer not.a.token', 'GW_AUTH_TOKEN_MALFORMED'],
    ] as const) {
      const traceId = hex(16);
      const before = upstream.received.length;
      const res = await request(`${gw.url}/api/records/r-1`, {
        headers: { traceparent: `00-${traceId}-${hex(8)}-01`, ...(authorization === undefined ? {} : { authorization }) },
      });
      assert.equal(res.statusCode, 401);
      await res.body.dump();
      assert.equal(upstream.received.length, before);
      const spans = await spansOf(receiver, traceId, 2);
      assert.deepEqual(spans.map((s) => s.name).sort(), ['GET /api/records/:id', 'authenticate']);
      const server = one(spans, 'GET /api/records/:id');
      assert.equal(attrs(server)['http.response.status_code'], 401);
      assert.equal(attrs(server)['error.type'], code);
      // HTTP semantic conventions: a 4xx leaves a server span's status unset.
      assert.notEqual(server.status?.code, STATUS_ERROR);
      const authenticate = one(spans, 'authenticate');
      assert.equal(authenticate.parentSpanId, server.spanId);
      assert.equal(attrs(authenticate)['error.type'], code);
      assert.equal((await accessLine(gw, res.headers['x-request-id'] as string)).trace_id, traceId);
    }
  });

  it('a 502 (upstream unreachable) ends the server and upstream spans with error.type, the server span with status ERROR', async () => {
    const traceId = hex(16);
    const res = await request(`${gw.url}/down/x`, { headers: { authorization: `Bearer ${token}`, traceparent: `00-${traceId}-${hex(8)}-01` } });
    assert.equal(res.statusCode, 502);
    const code = ((await res.body.json()) as { code: string }).code;
    const spans = await spansOf(receiver, traceId, 4);
    const server = one(spans, 'GET /down/*');
    assert.equal(attrs(server)['http.response.status_code'], 502);
    assert.equal(attrs(server)['error.type'], code);
    assert.equal(server.status?.code, STATUS_ERROR);
    const upstreamSpan = one(spans, 'upstream');
    assert.equal(upstreamSpan.parentSpanId, server.spanId);
    assert.equal(attrs(upstreamSpan)['error.type'], code);
    assert.equal(attrs(one(spans, 'authenticate'))['error.type'], undefined);
    assert.equal(attrs(one(spans, 'access_check'))['error.type'], undefined);
  });

  it('an upstream call that got no response is a failed CLIENT span: status ERROR and no http.response.status_code', async () => {
    // OTel HTTP semantic conventions: a client span whose request failed (network error) has status
    // Error; http.response.status_code is set only when a response was received.
    const traceId = hex(16);
    const res = await request(`${gw.url}/down/y`, { headers: { authorization: `Bearer ${token}`, traceparent: `00-${traceId}-${hex(8)}-01` } });
    assert.equal(res.statusCode, 502);
    await res.body.dump();
    const upstreamSpan = one(await spansOf(receiver, traceId, 4), 'upstream');
    const problems: string[] = [];
    if (upstreamSpan.status?.code !== STATUS_ERROR) problems.push(`status code is ${upstreamSpan.status?.code ?? 'unset'}, not ERROR (2)`);
    if (attrs(upstreamSpan)['http.response.status_code'] !== undefined) problems.push(`http.response.status_code is ${attrs(upstreamSpan)['http.response.status_code']} though no response arrived`);
    assert.deepEqual(problems, [], `upstream span: ${JSON.stringify(upstreamSpan)}`);
  });

  it('a client trace that is not sampled (flags 00) is continued but not exported', async () => {
    const traceId = hex(16);
    const res = await request(`${gw.url}/open/unsampled`, { headers: { traceparent: `00-${traceId}-${hex(8)}-00` } });
    assert.equal(res.statusCode, 200);
    await res.body.dump();
    const m = TRACEPARENT.exec(String(upstream.received.at(-1)!.headers.traceparent));
    assert.ok(m);
    assert.equal(m[1], traceId);
    assert.equal(m[3], '00', 'the upstream is told the trace is not sampled');
    assert.equal((await accessLine(gw, res.headers['x-request-id'] as string)).trace_id, traceId);
    // A sampled request after it: once its spans are in, the unsampled one's would be too.
    const marker = hex(16);
    await (await request(`${gw.url}/open/marker`, { headers: { traceparent: `00-${marker}-${hex(8)}-01` } })).body.dump();
    await spansOf(receiver, marker, 3);
    assert.equal(receiver.spans.filter((s) => s.traceId === traceId).length, 0);
  });

  it('exports OTLP/HTTP JSON to <endpoint>/v1/traces with the service name', () => {
    assert.ok(receiver.requests.length > 0);
    for (const r of receiver.requests) {
      assert.equal(r.method, 'POST');
      assert.equal(r.path, '/v1/traces');
      assert.match(String(r.contentType), /^application\/json/);
    }
    assert.deepEqual([...receiver.serviceNames], ['api-gateway']);
  });
});

describe('tracing: export on shutdown and OTEL_EXPORTER_OTLP_TRACES_ENDPOINT', () => {
  it('gw.close() exports the spans still buffered, to the traces endpoint as given', async () => {
    const receiver = await startReceiver();
    const upstream = await startUpstream();
    // A delay far beyond the test: only the shutdown can export these spans.
    process.env.OTEL_BSP_SCHEDULE_DELAY = '600000';
    let gw: TestGateway | null = null;
    try {
      gw = await startTestGateway(routes(upstream.url, await freePort()), {
        OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: `${receiver.url}/custom/traces`,
        OTEL_SERVICE_NAME: 'gateway-under-test',
      });
      const traceId = hex(16);
      const res = await request(`${gw.url}/open/flush`, { headers: { traceparent: `00-${traceId}-${hex(8)}-01` } });
      assert.equal(res.statusCode, 200);
      await res.body.dump();
      await accessLine(gw, res.headers['x-request-id'] as string);
      assert.equal(receiver.spans.length, 0, 'nothing exported before the shutdown');
      await gw.close();
      gw = null;
      assert.equal(receiver.spans.filter((s) => s.traceId === traceId).length, 3, 'every span of the request exported by close()');
      assert.deepEqual([...new Set(receiver.requests.map((r) => r.path))], ['/custom/traces']);
      assert.deepEqual([...receiver.serviceNames], ['gateway-under-test']);
    } finally {
      process.env.OTEL_BSP_SCHEDULE_DELAY = '50';
      await gw?.close();
      await upstream.close();
      await receiver.close();
    }
  });
});

describe('tracing: OTEL_TRACES_SAMPLER', () => {
  it("always_off records nothing, yet the trace is continued upstream and logged", async () => {
    const receiver = await startReceiver();
    const upstream = await startUpstream();
    const gw = await startTestGateway(routes(upstream.url, await freePort()), { OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url, OTEL_TRACES_SAMPLER: 'always_off' });
    try {
      const traceId = hex(16);
      const res = await request(`${gw.url}/open/sampler`, { headers: { traceparent: `00-${traceId}-${hex(8)}-01` } });
      assert.equal(res.statusCode, 200);
      await res.body.dump();
      const m = TRACEPARENT.exec(String(upstream.received.at(-1)!.headers.traceparent));
      assert.ok(m, 'a traceparent upstream');
      assert.equal(m[1], traceId);
      assert.equal(m[3], '00', 'not sampled');
      assert.equal((await accessLine(gw, res.headers['x-request-id'] as string)).trace_id, traceId);
    } finally {
      await gw.close();
      await upstream.close();
      await receiver.close();
    }
    assert.equal(receiver.spans.length, 0, 'no span exported');
  });
});

describe('tracing off', () => {
  let decoy: Receiver;
  /** A receiver on the OTLP default port (localhost:4318), when this machine lets us bind it. */
  let defaultPort: Receiver | null = null;
  let upstream: TestUpstream;
  const savedEndpoint = process.env.OTEL_EXPORTER_OTLP_ENDPOINT;

  before(async () => {
    decoy = await startReceiver();
    defaultPort = await startReceiver(4318).catch(() => null);
    upstream = await startUpstream();
    // The gateway must read only the env it is given: this process's own names the decoy.
    process.env.OTEL_EXPORTER_OTLP_ENDPOINT = decoy.url;
  });
  after(async () => {
    if (savedEndpoint === undefined) delete process.env.OTEL_EXPORTER_OTLP_ENDPOINT;
    else process.env.OTEL_EXPORTER_OTLP_ENDPOINT = savedEndpoint;
    await upstream.close();
    await decoy.close();
    await defaultPort?.close();
  });

  for (const [what, env] of [
    ['no OTEL endpoint in the env given to the gateway', (): Record<string, string> => ({})],
    ['OTEL_SDK_DISABLED=true with an endpoint', (): Record<string, string> => ({ OTEL_SDK_DISABLED: 'true', OTEL_EXPORTER_OTLP_ENDPOINT: decoy.url })],
    ['OTEL_TRACES_EXPORTER=none with an endpoint', (): Record<string, string> => ({ OTEL_TRACES_EXPORTER: 'none', OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: `${decoy.url}/v1/traces` })],
  ] as const) {
    it(`${what}: the upstream gets the client's traceparent unchanged, the access log its trace id, no receiver is contacted`, async () => {
      const gw = await startTestGateway(routes(upstream.url, await freePort()), env());
      try {
        const token = await signToken();
        const traceId = hex(16);
        const traceparent = `00-${traceId}-${hex(8)}-01`;
        const res = await request(`${gw.url}/api/records/r-2`, { headers: { authorization: `Bearer ${token}`, traceparent, tracestate: 'rojo=00f067aa0ba902b7' } });
        assert.equal(res.statusCode, 200);
        await res.body.dump();
        const seen = upstream.received.at(-1)!;
        assert.equal(seen.headers.traceparent, traceparent);
        assert.equal(seen.headers.tracestate, 'rojo=00f067aa0ba902b7');
        assert.equal((await accessLine(gw, res.headers['x-request-id'] as string)).trace_id, traceId);

        // Without a traceparent there is no trace id at all, and none is made up for the upstream.
        const bare = await request(`${gw.url}/open/bare`);
        await bare.body.dump();
        assert.equal((await accessLine(gw, bare.headers['x-request-id'] as string)).trace_id, undefined);
        assert.equal(upstream.received.at(-1)!.headers.traceparent, undefined);
      } finally {
        await gw.close();
      }
      assert.equal(decoy.connections, 0, 'a connection reached the receiver named by this process env');
      assert.equal(defaultPort?.connections ?? 0, 0, 'a connection reached localhost:4318');
    });
  }

  it('an invalid traceparent is not logged as a trace id', async () => {
    const gw = await startTestGateway(routes(upstream.url, await freePort()));
    try {
      const t = hex(16);
      const s = hex(8);
      const invalid: Record<string, string> = {
        garbage: 'not-a-traceparent-at-all-not-a-traceparent-at-all-xxxxxx',
        'all-zero trace id': `00-${'0'.repeat(32)}-${s}-01`,
        'upper-case hex': `00-${t.toUpperCase()}-${s}-01`,
        'short trace id': `00-${t.slice(2)}-${s}-01`,
        'version ff (forbidden)': `ff-${t}-${s}-01`,
        'all-zero parent id': `00-${t}-${'0'.repeat(16)}-01`,
        'non-hex parent id': `00-${t}-zzzzzzzzzzzzzzzz-01`,
        'version 00 with trailing data': `00-${t}-${s}-01-extra`,
        'wrong separators': `00-${t}_${s}_01`,
        'non-hex flags': `00-${t}-${s}-zz`,
      };
      const logged: string[] = [];
      for (const [what, traceparent] of Object.entries(invalid)) {
        const res = await request(`${gw.url}/open/invalid`, { headers: { traceparent } });
        await res.body.dump();
        const line = await accessLine(gw, res.headers['x-request-id'] as string);
        if (line.trace_id !== undefined) logged.push(`${what} (${traceparent}) -> trace_id ${String(line.trace_id)}`);
      }
      assert.deepEqual(logged, [], 'traceparents that W3C Trace Context (and the SDK, when tracing is on) reject were logged as trace ids');
    } finally {
      await gw.close();
    }
  });
});
