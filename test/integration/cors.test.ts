import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { ConfigError } from '../../src/config/load.js';
import { routesFor, startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { expectProblem, send, type Answer } from '../helpers/http.js';
import { until } from '../helpers/poll.js';
import { signToken } from '../helpers/tokens.js';
import { startUpstream, type TestUpstream } from '../helpers/upstream.js';

const APP = 'https://app.example.com';
const ADMIN = 'https://admin.example.com';
const PARTNER = 'https://partner.example.com';
const EVIL = 'https://evil.example.net';
const PREFLIGHT_VARY = 'Origin, Access-Control-Request-Method, Access-Control-Request-Headers';
const DEFAULT_EXPOSE = 'x-request-id, ratelimit, ratelimit-policy, retry-after, www-authenticate';

/**
 * An upstream with a CORS policy of its own, far wider than the gateway's: every answer says
 * `Access-Control-Allow-Origin: *` (and more). `?vary=` chooses its Vary header (none by default);
 * `?cookies=1` adds two Set-Cookie fields.
 */
function corsHappyUpstream(): Promise<TestUpstream> {
  return startUpstream((req, res, entry) => {
    req.on('data', (chunk: Buffer) => {
      entry.bodyBytes += chunk.length;
    });
    req.on('end', () => {
      const query = new URL(req.url!, 'http://upstream').searchParams;
      const vary = query.get('vary');
      if (vary !== null) res.setHeader('vary', vary);
      if (query.get('cookies') === '1') res.setHeader('set-cookie', ['a=1; HttpOnly', 'b=2; Secure']);
      res.setHeader('access-control-allow-origin', '*');
      res.setHeader('access-control-allow-credentials', 'true');
      res.setHeader('access-control-allow-methods', 'GET, POST, PUT, DELETE, PATCH');
      res.setHeader('access-control-allow-headers', '*');
      res.setHeader('access-control-expose-headers', 'x-upstream-secret');
      res.setHeader('access-control-max-age', '86400');
      const body = JSON.stringify({ from: 'upstream', method: req.method, url: req.url });
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
      res.end(body);
    });
  });
}

/** A preflight, as a browser sends it: no token, no body. */
function preflight(url: string, origin: string, method: string, requestHeaders?: string, extra: Record<string, string> = {}): Promise<Answer> {
  const headers: Record<string, string> = { origin, 'access-control-request-method': method, ...extra };
  if (requestHeaders !== undefined) headers['access-control-request-headers'] = requestHeaders;
  return send(url, { method: 'OPTIONS', headers });
}

/** The answer carries no Access-Control-* field at all. */
function assertNoCorsHeaders(answer: Answer, what: string): void {
  const found = Object.keys(answer.headers).filter((h) => h.startsWith('access-control-'));
  assert.deepEqual(found, [], `${what}: unexpected CORS headers ${JSON.stringify(found.map((h) => `${h}: ${String(answer.headers[h])}`))}`);
}

/** A refused preflight: 403 GW_CORS_REJECTED, no Access-Control-Allow-*, Vary still set. */
function assertRefusedPreflight(answer: Answer, what: string, detail: RegExp): void {
  const body = expectProblem(answer, 403, 'GW_CORS_REJECTED');
  assert.match(body.detail, detail, what);
  assertNoCorsHeaders(answer, what);
  assert.equal(answer.headers.vary, PREFLIGHT_VARY, `${what}: Vary`);
}

function varyTokens(answer: Answer): string[] {
  const raw = answer.headers.vary;
  const joined = Array.isArray(raw) ? raw.join(', ') : (raw ?? '');
  return joined
    .split(',')
    .map((t) => t.trim().toLowerCase())
    .filter(Boolean);
}

describe('CORS with a list of origins (CORS_ALLOWED_ORIGINS)', () => {
  let upstream: TestUpstream;
  let gw: TestGateway;
  let token: string;

  before(async () => {
    upstream = await corsHappyUpstream();
    const routes = routesFor(upstream.url, [
      { name: 'data', path: '/api/data', methods: ['GET', 'POST'], auth: 'required' },
      { name: 'admin-only', path: '/api/admin', methods: ['GET'], auth: 'required', roles: ['admin'] },
      { name: 'open', prefix: '/public', auth: 'public' },
      { name: 'limited', path: '/api/limited', auth: 'public', rateLimit: { perMinute: 1 } },
      { name: 'closed', path: '/api/closed', auth: 'public', cors: false },
      {
        name: 'partner',
        path: '/api/partner',
        methods: ['GET', 'PUT'],
        auth: 'public',
        cors: { origins: [PARTNER], credentials: true, maxAgeSeconds: 30, allowHeaders: ['X-Custom', 'Content-Type'], exposeHeaders: ['X-Trace'] },
      },
      { name: 'dead', prefix: '/dead', auth: 'public', service: 'dead' },
    ]);
    (routes.services as Record<string, unknown>).dead = { instances: ['http://127.0.0.1:9'], healthCheck: false, retry: false };
    gw = await startTestGateway(routes, { CORS_ALLOWED_ORIGINS: `${APP}, ${ADMIN}`, CORS_MAX_AGE_SECONDS: '120' });
    token = await signToken({ sub: 'u-cors', role: 'health_provider' });
  });
  after(async () => {
    await gw.close();
    await upstream.close();
  });

  describe('preflights', () => {
    it('answers an allowed preflight itself: 204, the origin echoed, the method and headers asked for, max-age, Vary; no token needed, nothing forwarded', async () => {
      const seen = upstream.received.length;
      const res = await preflight(`${gw.url}/api/data`, APP, 'GET', 'authorization');
      assert.equal(res.statusCode, 204, res.text);
      assert.equal(res.text, '');
      assert.equal(res.headers['access-control-allow-origin'], APP);
      assert.equal(res.headers['access-control-allow-methods'], 'GET');
      assert.equal(res.headers['access-control-allow-headers'], 'authorization');
      assert.equal(res.headers['access-control-max-age'], '120');
      assert.equal(res.headers.vary, PREFLIGHT_VARY);
      assert.equal(res.headers['access-control-allow-credentials'], undefined, 'credentials are off by default');
      assert.equal(typeof res.headers['x-request-id'], 'string');
      assert.equal(upstream.received.length, seen, 'the preflight reached the upstream');

      const id = res.headers['x-request-id'];
      const line = await until('the preflight access-log line', 2_000, async () => gw.logs.find((l) => l.request_id === id));
      assert.equal(line.method, 'OPTIONS');
      assert.equal(line.status_code, 204);
      assert.equal(line.path, '/api/data');
      assert.equal(line.route, 'data');
      assert.equal(line.upstream, null, 'a preflight has no upstream');
      assert.equal(line.error_code, null);
    });

    it('allows the requested method of another of the route\'s methods, and several headers (any case, listed lower-case)', async () => {
      const res = await preflight(`${gw.url}/api/data`, ADMIN, 'POST', 'Content-Type, X-Request-ID,Authorization, x-break-glass-reason');
      assert.equal(res.statusCode, 204, res.text);
      assert.equal(res.headers['access-control-allow-origin'], ADMIN);
      assert.equal(res.headers['access-control-allow-methods'], 'POST');
      assert.equal(res.headers['access-control-allow-headers'], 'content-type, x-request-id, authorization, x-break-glass-reason');
    });

    it('without Access-Control-Request-Headers says nothing of headers', async () => {
      const res = await preflight(`${gw.url}/public/anything`, APP, 'DELETE');
      assert.equal(res.statusCode, 204, res.text);
      assert.equal(res.headers['access-control-allow-methods'], 'DELETE');
      assert.equal(res.headers['access-control-allow-headers'], undefined);
    });

    it('is never authenticated: a bad token on the preflight changes nothing (no 401), and the route\'s roles do not apply', async () => {
      const bad = await preflight(`${gw.url}/api/data`, APP, 'GET', 'authorization', { authorization: 'Bearer not.a.token' });
      assert.equal(bad.statusCode, 204, bad.text);
      assert.equal(bad.headers['access-control-allow-origin'], APP);
      const adminRoute = await preflight(`${gw.url}/api/admin`, APP, 'GET', 'authorization');
      assert.equal(adminRoute.statusCode, 204, adminRoute.text);
    });

    it('refuses a disallowed origin with 403 GW_CORS_REJECTED and no Access-Control-Allow-*', async () => {
      assertRefusedPreflight(await preflight(`${gw.url}/api/data`, EVIL, 'GET', 'authorization'), 'disallowed origin', /origin/);
      // An origin differing only in scheme or port is another origin.
      assertRefusedPreflight(await preflight(`${gw.url}/api/data`, 'http://app.example.com', 'GET'), 'http instead of https', /origin/);
      assertRefusedPreflight(await preflight(`${gw.url}/api/data`, `${APP}:8443`, 'GET'), 'another port', /origin/);
    });

    it('refuses the origin "null" (sandboxed frames, files)', async () => {
      assertRefusedPreflight(await preflight(`${gw.url}/api/data`, 'null', 'GET'), 'origin null', /origin/);
    });

    it('refuses a request header that is not allowed, even next to allowed ones', async () => {
      assertRefusedPreflight(await preflight(`${gw.url}/api/data`, APP, 'GET', 'authorization, x-user-role'), 'x-user-role', /header x-user-role/);
      assertRefusedPreflight(await preflight(`${gw.url}/api/data`, APP, 'GET', 'cookie'), 'cookie', /header cookie/);
    });

    it('refuses a method the route lacks (403, not 405)', async () => {
      const res = await preflight(`${gw.url}/api/data`, APP, 'DELETE', 'authorization');
      assertRefusedPreflight(res, 'DELETE on a GET/POST route', /GET, HEAD, POST/);
      assert.equal(res.headers.allow, undefined);
    });

    it('refuses every preflight on a route with cors: false', async () => {
      assertRefusedPreflight(await preflight(`${gw.url}/api/closed`, APP, 'GET'), 'cors: false', /does not accept cross-origin/);
    });

    it('answers a preflight for an unknown path with 404 and no CORS headers', async () => {
      const res = await preflight(`${gw.url}/nowhere/at/all`, APP, 'GET', 'authorization');
      expectProblem(res, 404, 'GW_ROUTE_NOT_FOUND');
      assertNoCorsHeaders(res, 'unknown path');
    });

    it('applies a route\'s own policy: its origins, headers, max-age and credentials replace the defaults', async () => {
      const ok = await preflight(`${gw.url}/api/partner`, PARTNER, 'PUT', 'x-custom, content-type');
      assert.equal(ok.statusCode, 204, ok.text);
      assert.equal(ok.headers['access-control-allow-origin'], PARTNER);
      assert.equal(ok.headers['access-control-allow-methods'], 'PUT');
      assert.equal(ok.headers['access-control-allow-headers'], 'x-custom, content-type');
      assert.equal(ok.headers['access-control-max-age'], '30');
      assert.equal(ok.headers['access-control-allow-credentials'], 'true');
      assert.equal(ok.headers.vary, PREFLIGHT_VARY);
      // The global list does not apply to this route, nor do the default allowed headers.
      assertRefusedPreflight(await preflight(`${gw.url}/api/partner`, APP, 'GET'), 'global origin on the partner route', /origin/);
      assertRefusedPreflight(await preflight(`${gw.url}/api/partner`, PARTNER, 'GET', 'authorization'), 'authorization on the partner route', /header authorization/);
      // And the route's origin is not allowed elsewhere.
      assertRefusedPreflight(await preflight(`${gw.url}/api/data`, PARTNER, 'GET'), 'partner origin on another route', /origin/);
    });

    it('never forwards a preflight, allowed or refused', () => {
      const options = upstream.received.filter((r) => r.method === 'OPTIONS');
      assert.deepEqual(options, [], 'the upstream saw OPTIONS requests');
    });
  });

  describe('actual requests', () => {
    it('an allowed origin gets Allow-Origin and Expose-Headers on the proxied answer; the upstream\'s own Access-Control-* is dropped; Vary merges Origin into the upstream\'s', async () => {
      const res = await send(`${gw.url}/api/data?vary=Accept-Encoding`, { token, headers: { origin: APP } });
      assert.equal(res.statusCode, 200, res.text);
      assert.deepEqual(JSON.parse(res.text), { from: 'upstream', method: 'GET', url: '/api/data?vary=Accept-Encoding' });
      assert.equal(res.headers['access-control-allow-origin'], APP, 'the upstream\'s * must not reach the client');
      assert.equal(res.headers['access-control-expose-headers'], DEFAULT_EXPOSE);
      assert.equal(res.headers['access-control-allow-credentials'], undefined, 'the upstream\'s Allow-Credentials must not reach the client');
      for (const name of ['access-control-allow-methods', 'access-control-allow-headers', 'access-control-max-age']) {
        assert.equal(res.headers[name], undefined, `${name} from the upstream reached the client`);
      }
      assert.deepEqual(varyTokens(res), ['accept-encoding', 'origin']);
      // The request itself went through as usual.
      const seen = upstream.received.at(-1)!;
      assert.equal(seen.method, 'GET');
      assert.equal(seen.headers['x-user-id'], 'u-cors');
    });

    it('Vary is Origin alone when the upstream sends none, and stays * when the upstream says *', async () => {
      const none = await send(`${gw.url}/public/x`, { headers: { origin: APP } });
      assert.equal(none.statusCode, 200);
      assert.equal(none.headers.vary, 'Origin');
      const star = await send(`${gw.url}/public/x?vary=*`, { headers: { origin: APP } });
      assert.equal(star.statusCode, 200);
      assert.equal(star.headers.vary, '*');
    });

    it('a request without Origin still gets Vary: Origin on a proxied answer, and no Allow-Origin (not even the upstream\'s *)', async () => {
      const res = await send(`${gw.url}/public/x?vary=Accept-Encoding`);
      assert.equal(res.statusCode, 200);
      assert.deepEqual(varyTokens(res), ['accept-encoding', 'origin']);
      assertNoCorsHeaders(res, 'no Origin');
    });

    it('keeps the upstream\'s repeated fields (two Set-Cookie) when the request has an Origin', async () => {
      const plain = await send(`${gw.url}/public/x?cookies=1`);
      assert.deepEqual(plain.headers['set-cookie'], ['a=1; HttpOnly', 'b=2; Secure'], 'without Origin');
      const res = await send(`${gw.url}/public/x?cookies=1`, { headers: { origin: APP } });
      assert.equal(res.statusCode, 200);
      // The CORS headers are set with setHeader before the proxied answer's writeHead(array):
      // on Node 20 that path sets each pair with setHeader, so a repeated field keeps its last value.
      assert.deepEqual(res.headers['set-cookie'], ['a=1; HttpOnly', 'b=2; Secure'], 'with Origin: a Set-Cookie of the upstream was lost');
      assert.equal(res.headers['access-control-allow-origin'], APP);
    });

    it('a disallowed origin gets the answer but no CORS header at all (the upstream\'s * is dropped), with Vary: Origin', async () => {
      const res = await send(`${gw.url}/api/data?vary=Accept-Encoding`, { token, headers: { origin: EVIL } });
      assert.equal(res.statusCode, 200);
      assertNoCorsHeaders(res, 'disallowed origin');
      assert.deepEqual(varyTokens(res), ['accept-encoding', 'origin']);
    });

    it('the origin "null" gets no CORS header', async () => {
      const res = await send(`${gw.url}/public/x`, { headers: { origin: 'null' } });
      assert.equal(res.statusCode, 200);
      assertNoCorsHeaders(res, 'origin null');
    });

    it('the gateway\'s own 401 carries the CORS headers for an allowed origin, so the page can read WWW-Authenticate', async () => {
      const seen = upstream.received.length;
      const res = await send(`${gw.url}/api/data`, { headers: { origin: APP } });
      expectProblem(res, 401, 'GW_AUTH_TOKEN_MISSING');
      assert.equal(res.headers['access-control-allow-origin'], APP);
      assert.equal(res.headers['access-control-expose-headers'], DEFAULT_EXPOSE);
      assert.ok(res.headers['www-authenticate'] !== undefined, 'the challenge is there to expose');
      assert.deepEqual(varyTokens(res), ['origin']);
      assert.equal(upstream.received.length, seen);

      const invalid = await send(`${gw.url}/api/data`, { token: 'not.a.jwt', headers: { origin: ADMIN } });
      assert.equal(invalid.statusCode, 401);
      assert.equal(invalid.headers['access-control-allow-origin'], ADMIN);
    });

    it('but a disallowed origin gets none on the 401', async () => {
      const res = await send(`${gw.url}/api/data`, { headers: { origin: EVIL } });
      expectProblem(res, 401, 'GW_AUTH_TOKEN_MISSING');
      assertNoCorsHeaders(res, 'disallowed origin on a 401');
      assert.deepEqual(varyTokens(res), ['origin']);
    });

    it('the gateway\'s 403, 404, 405, 429 and 502 carry the CORS headers too', async () => {
      const forbidden = await send(`${gw.url}/api/admin`, { token, headers: { origin: APP } });
      expectProblem(forbidden, 403, 'GW_FORBIDDEN');
      assert.equal(forbidden.headers['access-control-allow-origin'], APP);

      const notFound = await send(`${gw.url}/nowhere`, { headers: { origin: APP } });
      expectProblem(notFound, 404, 'GW_ROUTE_NOT_FOUND');
      assert.equal(notFound.headers['access-control-allow-origin'], APP);
      assert.deepEqual(varyTokens(notFound), ['origin']);

      const wrongMethod = await send(`${gw.url}/api/data`, { method: 'DELETE', token, headers: { origin: APP } });
      expectProblem(wrongMethod, 405, 'GW_METHOD_NOT_ALLOWED');
      assert.equal(wrongMethod.headers['access-control-allow-origin'], APP);

      const first = await send(`${gw.url}/api/limited`, { headers: { origin: APP } });
      assert.equal(first.statusCode, 200);
      const limited = await send(`${gw.url}/api/limited`, { headers: { origin: APP } });
      expectProblem(limited, 429, 'GW_RATE_LIMITED');
      assert.equal(limited.headers['access-control-allow-origin'], APP);
      assert.match(String(limited.headers['access-control-expose-headers']), /retry-after/);
      assert.ok(limited.headers['retry-after'] !== undefined);

      const dead = await send(`${gw.url}/dead/x`, { headers: { origin: APP } });
      expectProblem(dead, 502, 'GW_UPSTREAM_UNAVAILABLE');
      assert.equal(dead.headers['access-control-allow-origin'], APP);
      assert.deepEqual(varyTokens(dead), ['origin']);
    });

    it('a route with cors: false gives no CORS header to any origin', async () => {
      const res = await send(`${gw.url}/api/closed`, { headers: { origin: APP } });
      assert.equal(res.statusCode, 200);
      assertNoCorsHeaders(res, 'cors: false');
    });

    it('a route\'s own policy: its origin gets Allow-Credentials and its own Expose-Headers; the global origins get nothing there', async () => {
      const partner = await send(`${gw.url}/api/partner`, { headers: { origin: PARTNER } });
      assert.equal(partner.statusCode, 200);
      assert.equal(partner.headers['access-control-allow-origin'], PARTNER);
      assert.equal(partner.headers['access-control-allow-credentials'], 'true');
      assert.equal(partner.headers['access-control-expose-headers'], 'x-trace');
      assert.deepEqual(varyTokens(partner), ['origin']);

      const app = await send(`${gw.url}/api/partner`, { headers: { origin: APP } });
      assert.equal(app.statusCode, 200);
      assertNoCorsHeaders(app, 'global origin on the partner route');
    });
  });
});

describe('CORS with any origin (CORS_ALLOWED_ORIGINS=*, the default)', () => {
  let upstream: TestUpstream;
  let gw: TestGateway;

  before(async () => {
    upstream = await corsHappyUpstream();
    gw = await startTestGateway(routesFor(upstream.url, [{ name: 'open', prefix: '/public', auth: 'public' }]));
  });
  after(async () => {
    await gw.close();
    await upstream.close();
  });

  it('a preflight gets Allow-Origin * and is not forwarded', async () => {
    const res = await preflight(`${gw.url}/public/x`, 'https://anyone.example.org', 'POST', 'content-type');
    assert.equal(res.statusCode, 204, res.text);
    assert.equal(res.headers['access-control-allow-origin'], '*');
    assert.equal(res.headers['access-control-allow-methods'], 'POST');
    assert.equal(res.headers['access-control-allow-headers'], 'content-type');
    assert.equal(res.headers['access-control-max-age'], '600');
    assert.equal(res.headers['access-control-allow-credentials'], undefined);
    assert.equal(upstream.received.length, 0);
  });

  it('an actual request gets Allow-Origin *, and the upstream\'s Vary as is (the answer does not depend on Origin)', async () => {
    const res = await send(`${gw.url}/public/x?vary=Accept-Encoding`, { headers: { origin: 'https://anyone.example.org' } });
    assert.equal(res.statusCode, 200);
    assert.equal(res.headers['access-control-allow-origin'], '*');
    assert.equal(res.headers['access-control-expose-headers'], DEFAULT_EXPOSE);
    assert.equal(res.headers['access-control-allow-credentials'], undefined);
    assert.deepEqual(varyTokens(res), ['accept-encoding']);
  });

  it('the origin "null" is refused even with *', async () => {
    assertRefusedPreflight(await preflight(`${gw.url}/public/x`, 'null', 'GET'), 'origin null with *', /origin/);
    const res = await send(`${gw.url}/public/x`, { headers: { origin: 'null' } });
    assert.equal(res.statusCode, 200);
    assertNoCorsHeaders(res, 'origin null with *');
    assert.ok(!upstream.received.some((r) => r.method === 'OPTIONS'));
  });
});

describe('CORS with credentials (CORS_ALLOW_CREDENTIALS=true and a list)', () => {
  let upstream: TestUpstream;
  let gw: TestGateway;

  before(async () => {
    upstream = await corsHappyUpstream();
    gw = await startTestGateway(routesFor(upstream.url, [{ name: 'data', path: '/api/data', auth: 'required' }]), {
      CORS_ALLOWED_ORIGINS: APP,
      CORS_ALLOW_CREDENTIALS: 'true',
    });
  });
  after(async () => {
    await gw.close();
    await upstream.close();
  });

  it('the preflight, the proxied answer and the gateway\'s 401 all carry Allow-Credentials with the origin echoed', async () => {
    const pre = await preflight(`${gw.url}/api/data`, APP, 'GET', 'authorization');
    assert.equal(pre.statusCode, 204, pre.text);
    assert.equal(pre.headers['access-control-allow-origin'], APP);
    assert.equal(pre.headers['access-control-allow-credentials'], 'true');

    const ok = await send(`${gw.url}/api/data`, { token: await signToken(), headers: { origin: APP } });
    assert.equal(ok.statusCode, 200);
    assert.equal(ok.headers['access-control-allow-origin'], APP);
    assert.equal(ok.headers['access-control-allow-credentials'], 'true');

    const unauthorized = await send(`${gw.url}/api/data`, { headers: { origin: APP } });
    expectProblem(unauthorized, 401, 'GW_AUTH_TOKEN_MISSING');
    assert.equal(unauthorized.headers['access-control-allow-origin'], APP);
    assert.equal(unauthorized.headers['access-control-allow-credentials'], 'true');

    const evil = await send(`${gw.url}/api/data`, { token: await signToken(), headers: { origin: EVIL } });
    assertNoCorsHeaders(evil, 'disallowed origin with credentials');
    assert.deepEqual(upstream.received.map((r) => r.method), ['GET', 'GET']);
  });
});

describe('credentials with any origin are refused at start-up', () => {
  const routes = (cors?: unknown) => routesFor('http://127.0.0.1:9', [{ name: 'data', path: '/api/data', auth: 'public', ...(cors === undefined ? {} : { cors }) }]);

  async function refusedWith(routesFile: unknown, env: Record<string, string>, field: RegExp): Promise<void> {
    await assert.rejects(startTestGateway(routesFile, env), (err: unknown) => {
      assert.ok(err instanceof ConfigError, String(err));
      assert.ok(
        err.problems.some((p) => field.test(p)),
        err.message,
      );
      return true;
    });
  }

  it('CORS_ALLOW_CREDENTIALS=true with CORS_ALLOWED_ORIGINS=* (the default)', async () => {
    await refusedWith(routes(), { CORS_ALLOW_CREDENTIALS: 'true' }, /^CORS_ALLOW_CREDENTIALS: /);
    await refusedWith(routes(), { CORS_ALLOW_CREDENTIALS: 'true', CORS_ALLOWED_ORIGINS: `${APP},*` }, /^CORS_ALLOW_CREDENTIALS: /);
  });

  it('a route with credentials: true and origins: [*]', async () => {
    await refusedWith(routes({ origins: ['*'], credentials: true }), { CORS_ALLOWED_ORIGINS: APP }, /credentials/);
  });

  it('a route with credentials: true inheriting CORS_ALLOWED_ORIGINS=*', async () => {
    await refusedWith(routes({ credentials: true }), {}, /credentials/);
  });

  it('a route with origins: [*] inheriting CORS_ALLOW_CREDENTIALS=true', async () => {
    await refusedWith(routes({ origins: ['*'] }), { CORS_ALLOWED_ORIGINS: APP, CORS_ALLOW_CREDENTIALS: 'true' }, /credentials/);
  });

  it('a route may turn credentials off to use * while the variables say credentials with a list', async () => {
    const gw = await startTestGateway(routes({ origins: ['*'], credentials: false }), { CORS_ALLOWED_ORIGINS: APP, CORS_ALLOW_CREDENTIALS: 'true' });
    try {
      const res = await preflight(`${gw.url}/api/data`, EVIL, 'GET');
      assert.equal(res.statusCode, 204, res.text);
      assert.equal(res.headers['access-control-allow-origin'], '*');
      assert.equal(res.headers['access-control-allow-credentials'], undefined);
    } finally {
      await gw.close();
    }
  });
});
