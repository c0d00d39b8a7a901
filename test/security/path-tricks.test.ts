import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import fc from 'fast-check';
import { routesFor, type TestGateway, startTestGateway } from '../helpers/gateway.js';
import { signToken } from '../helpers/tokens.js';
import { startUpstream, type TestUpstream } from '../helpers/upstream.js';
import { header, problemOf, rawExchange, type RawResponse } from '../helpers/raw-http.js';
import { accessLine } from './support.js';

/**
 * A public prefix next to protected ones: a spelling that the gateway routed as public but the
 * upstream read as protected would hand out protected data without a token.
 */
const ROUTES = [
  { name: 'open', prefix: '/public', auth: 'public' },
  { name: 'private', prefix: '/private', auth: 'required' },
  { name: 'avatar', pattern: '/users/:id/avatar', auth: 'public' },
  { name: 'users', prefix: '/users', auth: 'required' },
];

/** How the upstream's own URL parser (WHATWG, as in Node, Go and browsers) reads the target it got. */
function upstreamPath(target: string): string {
  return new URL(target, 'http://upstream.internal').pathname;
}

type Expect =
  | { canonical: string; route: 'open' | 'private' | 'avatar' | 'users' | null }
  | { refused: 'GW_BAD_PATH' | 'GW_BAD_REQUEST' }
  /** Either answer is safe; routing it anywhere else is not. */
  | { refusedOr: string; route: 'open' };

const CASES: Array<[target: string, expect: Expect]> = [
  ['/public/../private/x', { canonical: '/private/x', route: 'private' }],
  ['/public/%2e%2e/private/x', { canonical: '/private/x', route: 'private' }],
  ['/public/%2E%2e/private/x', { canonical: '/private/x', route: 'private' }],
  ['/public/.%2e/private/x', { canonical: '/private/x', route: 'private' }],
  ['/public//..//private/x', { canonical: '/private/x', route: 'private' }],
  ['//private/x', { canonical: '/private/x', route: 'private' }],
  ['///private///x', { canonical: '/private/x', route: 'private' }],
  ['/priv%61te/x', { canonical: '/private/x', route: 'private' }],
  ['/%70%72%69%76%61%74%65/x', { canonical: '/private/x', route: 'private' }],
  ['/users/42/avatar/../../43', { canonical: '/users/43', route: 'users' }],
  ['/public/./x', { canonical: '/public/x', route: 'open' }],
  ['/public/%2e/x', { canonical: '/public/x', route: 'open' }],
  ['/%70ublic/x', { canonical: '/public/x', route: 'open' }],
  ['/public/%7e%41%2D%5f', { canonical: '/public/~A-_', route: 'open' }],
  ['/public/%252e%252e/private/x', { canonical: '/public/%252e%252e/private/x', route: 'open' }],
  ['/public/a%3bb', { canonical: '/public/a%3Bb', route: 'open' }],
  ['/users/42/%61vatar', { canonical: '/users/42/avatar', route: 'avatar' }],
  ['/public/..', { canonical: '/', route: null }],
  ['/PRIVATE/x', { canonical: '/PRIVATE/x', route: null }],
  ['/private;jsessionid=1/x', { canonical: '/private;jsessionid=1/x', route: null }],
  ['/public%2fprivate/x', { refused: 'GW_BAD_PATH' }],
  ['/public%2Fprivate/x', { refused: 'GW_BAD_PATH' }],
  ['/public/..%2fprivate/x', { refused: 'GW_BAD_PATH' }],
  // Servlet containers drop `;params` before resolving dot segments: `..;` is `..` to them.
  ['/public/..;/private/x', { refused: 'GW_BAD_PATH' }],
  ['/public/.;x/../private/x', { refused: 'GW_BAD_PATH' }],
  ['/public/%2e%2e;jsessionid=1/private/x', { refused: 'GW_BAD_PATH' }],
  ['/public/%2e%2e%2fprivate/x', { refused: 'GW_BAD_PATH' }],
  ['/public\\..\\private/x', { refused: 'GW_BAD_PATH' }],
  ['/public/%5c..%5cprivate/x', { refused: 'GW_BAD_PATH' }],
  ['/public/%00/x', { refused: 'GW_BAD_PATH' }],
  ['/public/x%00.json', { refused: 'GW_BAD_PATH' }],
  ['/..', { refused: 'GW_BAD_PATH' }],
  ['/public/../../private/x', { refused: 'GW_BAD_PATH' }],
  ['/public/%2e%2e/%2e%2e/private/x', { refused: 'GW_BAD_PATH' }],
  ['/public/%zz', { refused: 'GW_BAD_PATH' }],
  ['/public/%', { refused: 'GW_BAD_PATH' }],
  ['/public/%2', { refused: 'GW_BAD_PATH' }],
  // Overlong UTF-8 for "." and "/", and a lone high byte: never decoded into separators.
  ['/public/%c0%ae%c0%ae/private/x', { refusedOr: '/public/%C0%AE%C0%AE/private/x', route: 'open' }],
  ['/public/%c0%af..%c0%afprivate', { refusedOr: '/public/%C0%AF..%C0%AFprivate', route: 'open' }],
  ['/public/%e0%80%ae%e0%80%ae/private/x', { refusedOr: '/public/%E0%80%AE%E0%80%AE/private/x', route: 'open' }],
  ['/public/%ff', { refusedOr: '/public/%FF', route: 'open' }],
  // Raw bytes Node's parser refuses before the gateway sees the request.
  ['private/x', { refused: 'GW_BAD_REQUEST' }],
  ['/public/\x00/x', { refused: 'GW_BAD_REQUEST' }],
  ['/public/a b', { refused: 'GW_BAD_REQUEST' }],
  ['/public/\xc3\xa9', { refused: 'GW_BAD_REQUEST' }],
];

function target(path: string, token?: string): string {
  return `GET ${path} HTTP/1.1\r\nHost: gateway.test\r\n${token ? `Authorization: Bearer ${token}\r\n` : ''}Connection: close\r\n\r\n`;
}

describe('path spellings are refused or routed by their one canonical path', () => {
  let upstream: TestUpstream;
  let gw: TestGateway;
  let token: string;

  before(async () => {
    upstream = await startUpstream();
    gw = await startTestGateway(routesFor(upstream.url, ROUTES));
    token = await signToken({ sub: 'u-1', role: 'health_provider' });
  });
  after(async () => {
    await gw.close();
    await upstream.close();
  });

  async function send(path: string, withToken: boolean): Promise<{ res: RawResponse; reached: string[] }> {
    const before = upstream.received.length;
    const { responses } = await rawExchange(gw.port, target(path, withToken ? token : undefined));
    assert.equal(responses.length, 1, `one answer expected for ${JSON.stringify(path)}`);
    return { res: responses[0]!, reached: upstream.received.slice(before).map((r) => r.url) };
  }

  async function assertRefused(path: string, res: RawResponse, reached: string[], code: string) {
    assert.equal(res.status, 400, `${JSON.stringify(path)} answered ${res.status}: ${res.body}`);
    assert.equal(problemOf(res).code, code);
    assert.deepEqual(reached, []);
    if (code === 'GW_BAD_PATH') {
      // A refusal is a request like any other: traceable by its id in the access log.
      const id = header(res, 'x-request-id');
      assert.ok(id, 'no X-Request-ID on the refusal');
      assert.equal((await accessLine(gw, id)).error_code, 'GW_BAD_PATH');
    }
  }

  async function assertRouted(path: string, canonical: string, route: string | null) {
    const anonymous = await send(path, false);
    if (route === null) {
      assert.equal(anonymous.res.status, 404, `${JSON.stringify(path)} answered ${anonymous.res.status}`);
      assert.deepEqual(anonymous.reached, []);
      return;
    }
    const isProtected = route === 'private' || route === 'users';
    if (isProtected) {
      assert.equal(anonymous.res.status, 401, `${JSON.stringify(path)} reached a protected route without a token`);
      assert.deepEqual(anonymous.reached, []);
    }
    const { res, reached } = isProtected ? await send(path, true) : anonymous;
    assert.equal(res.status, 200, `${JSON.stringify(path)} answered ${res.status}: ${res.body}`);
    assert.deepEqual(reached, [canonical], `the upstream got another spelling than ${canonical}`);
    assert.equal(upstreamPath(reached[0]!), canonical, 'the upstream URL parser reads another path');
    const line = await accessLine(gw, header(res, 'x-request-id')!);
    assert.equal(line.path, canonical);
    assert.equal(line.route, route);
  }

  for (const [path, expect] of CASES) {
    it(`${JSON.stringify(path)} -> ${'refused' in expect ? `400 ${expect.refused}` : 'refusedOr' in expect ? `400 GW_BAD_PATH or ${expect.refusedOr}` : expect.canonical}`, async () => {
      if ('refused' in expect) {
        const { res, reached } = await send(path, true);
        await assertRefused(path, res, reached, expect.refused);
      } else if ('refusedOr' in expect) {
        const { res, reached } = await send(path, true);
        if (res.status === 400) await assertRefused(path, res, reached, 'GW_BAD_PATH');
        else await assertRouted(path, expect.refusedOr, expect.route);
      } else {
        await assertRouted(path, expect.canonical, expect.route);
      }
    });
  }

  it('a raw "#" cannot make the upstream read a protected path the gateway routed as public', async () => {
    // The gateway matched /users/:id/avatar (public); a WHATWG parser at the upstream drops
    // everything after "#" and reads /users/42, the protected resource.
    const { res, reached } = await send('/users/42#/avatar', false);
    if (res.status === 400) {
      assert.equal(problemOf(res).code, 'GW_BAD_PATH');
      assert.deepEqual(reached, []);
      return;
    }
    for (const url of reached) {
      assert.ok(!url.includes('#'), `the upstream received a raw "#": ${url}`);
      assert.match(upstreamPath(url), /^\/users\/[^/]+\/avatar$/);
    }
  });

  it('no anonymous spelling built from traversal pieces reaches a protected path at the upstream', async () => {
    const piece = fc.oneof(
      { weight: 4, arbitrary: fc.constantFrom('public', 'private', 'users', '42', 'avatar') },
      { weight: 4, arbitrary: fc.constantFrom('..', '.', '', '%2e', '%2E%2e', '.%2e', '%2e.') },
      { weight: 2, arbitrary: fc.constantFrom('priv%61te', '%70ublic', '%75sers', 'x', '%2f', '%5c', '%23', '#', ';', '..;', '%00', '%25', '%252e%252e', '%c0%ae', 'a%2fb', '%3f') },
    );
    const publicAtUpstream = (p: string) => p === '/public' || p.startsWith('/public/') || /^\/users\/[^/]+\/avatar$/.test(p);
    await fc.assert(
      fc.asyncProperty(fc.array(piece, { minLength: 1, maxLength: 6 }), async (pieces) => {
        const path = '/' + pieces.join('/');
        const { res, reached } = await send(path, false);
        assert.ok([200, 400, 401, 404].includes(res.status), `${path} answered ${res.status}`);
        for (const url of reached) {
          assert.ok(publicAtUpstream(upstreamPath(url)), `${path} reached the upstream as ${url}`);
        }
      }),
      { numRuns: 500, seed: 20250901 },
    );
  });
});
