import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { SignJWT } from 'jose';
import { stringify } from 'yaml';
import type { Explanation } from '../../src/cli/explain.js';
import type { TokenReport } from '../../src/cli/token-inspect.js';
import { routesFor, startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { send } from '../helpers/http.js';
import { startRedis, type TestRedis } from '../helpers/redis.js';
import { signToken, TEST_SECRET } from '../helpers/tokens.js';
import { startUpstream, type TestUpstream } from '../helpers/upstream.js';

/**
 * The operator's command line, run as a process (`api-gateway <command>`) on the same routes file
 * and environment as a running gateway: exit codes, the verdicts of `explain` and of `token
 * inspect`, and `explain` agreeing with the gateway request by request.
 */
const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const PREVIOUS_SECRET = 'previous-secret-0123456789abcdef-0123456789ab';

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

describe('api-gateway (the command line)', () => {
  let redis: TestRedis;
  let upstream: TestUpstream;
  let gw: TestGateway;
  let env: Record<string, string>;
  let user = 0;
  const fresh = () => `cli-user-${process.pid}-${++user}`;

  before(async () => {
    redis = await startRedis();
    upstream = await startUpstream();
    const routes = routesFor(upstream.url, [
      { name: 'open', prefix: '/open', auth: 'public' },
      { name: 'records', pattern: '/api/records/:userId', roles: ['resident', 'health_provider'], subject: { param: 'userId' }, breakGlass: true, phi: true },
      { name: 'staff', prefix: '/api/staff', roles: ['health_provider'], rewrite: '/internal', transform: { request: { headers: { set: { 'x-source': 'gateway' } } } } },
      { name: 'limited', prefix: '/api/limited', rateLimit: { perMinute: 2 } },
      { name: 'only-get', path: '/api/only-get', methods: ['GET'] },
    ]);
    const shared = { REDIS_URL: redis.url, JWT_KID: 'current-key', JWT_PREVIOUS_KID: 'previous-key', JWT_PREVIOUS_SECRET: PREVIOUS_SECRET, JWT_PREVIOUS_SECRET_EXPIRES_AT: new Date(Date.now() + 86_400_000).toISOString() };
    gw = await startTestGateway(routes, shared);
    // What the gateway runs with (test/helpers/gateway.ts), for the command line too.
    env = {
      PATH: process.env.PATH!,
      JWT_SECRET: TEST_SECRET,
      AUTH_SERVICE_URL: 'http://127.0.0.1:9',
      RATE_LIMIT_PER_MINUTE: '1000000',
      RATE_LIMIT_PER_ADDRESS_PER_MINUTE: '1000000',
      AUTH_FAILURES_PER_ADDRESS_PER_MINUTE: '1000000',
      ROUTES_FILE: gw.routesFile,
      ...shared,
    };
  });
  after(async () => {
    await gw?.close();
    await upstream?.close();
    await redis?.stop();
  });

  /** The command line as a process, from the TypeScript (bin/api-gateway.mjs runs the same entry). */
  function cli(args: string[], extraEnv: Record<string, string> = {}, entry: string[] = ['--import', 'tsx', 'src/cli/bin.ts']): Promise<Run> {
    return new Promise((resolve) => {
      execFile(process.execPath, [...entry, ...args], { cwd: ROOT, env: { ...env, ...extraEnv }, timeout: 60_000 }, (err, stdout, stderr) => {
        resolve({ code: err === null ? 0 : typeof err.code === 'number' ? err.code : -1, stdout, stderr });
      });
    });
  }

  async function explainJson(method: string, path: string, headers: Record<string, string> = {}): Promise<{ run: Run; e: Explanation }> {
    // The gateway's own address: the Host (and X-Forwarded-Host) the upstream gets is the same.
    const args = ['explain', method, `${gw.url}${path}`, '--json'];
    for (const [n, v] of Object.entries(headers)) args.push('-H', `${n}: ${v}`);
    const run = await cli(args);
    assert.ok(run.stdout.startsWith('{'), `explain --json printed: ${run.stdout}${run.stderr}`);
    return { run, e: JSON.parse(run.stdout) as Explanation };
  }

  const bearer = (token: string) => ({ authorization: `Bearer ${token}` });

  describe('explain', () => {
    it('a public route: proxied, with the rewritten target, the service and its instances; exit 0', async () => {
      const { run, e } = await explainJson('GET', '/open/page?x=1');
      assert.equal(run.code, 0, run.stderr);
      assert.equal(e.route?.name, 'open');
      assert.equal(e.answer.status, null);
      assert.match(e.answer.detail, /proxied/);
      assert.deepEqual(e.upstream && { service: e.upstream.service, instances: e.upstream.instances, target: e.upstream.target }, { service: 'backend', instances: [new URL(upstream.url).origin], target: '/open/page?x=1' });
      assert.deepEqual(e.stages.map((s) => s.stage).slice(-1), ['forward']);
    });

    it('the refusals, each by its stage and code, with exit 1', async () => {
      const owner = fresh();
      const cases: Array<[string, string, string, Record<string, string>, string, number, string]> = [
        ['a missing token', 'GET', `/api/records/${owner}`, {}, 'authenticate', 401, 'GW_AUTH_TOKEN_MISSING'],
        ['an expired token', 'GET', `/api/records/${owner}`, bearer(await signToken({ sub: owner, role: 'resident', expiresInSeconds: -120 })), 'authenticate', 401, 'GW_AUTH_TOKEN_EXPIRED'],
        ['a role refused', 'GET', `/api/records/${owner}`, bearer(await signToken({ sub: owner, role: 'family_member' })), 'authorize', 403, 'GW_FORBIDDEN'],
        ['a subject refused', 'GET', `/api/records/${owner}`, bearer(await signToken({ sub: fresh(), role: 'resident' })), 'authorize', 403, 'GW_FORBIDDEN'],
        ['break-glass without a reason', 'GET', `/api/records/${owner}`, bearer(await signToken({ sub: fresh(), role: 'admin' })), 'authorize', 403, 'GW_BREAK_GLASS_REASON_REQUIRED'],
        ['an unknown path', 'GET', '/nowhere', {}, 'route-match', 404, 'GW_ROUTE_NOT_FOUND'],
        ['a wrong method', 'DELETE', '/api/only-get', {}, 'route-match', 405, 'GW_METHOD_NOT_ALLOWED'],
      ];
      const results = await Promise.all(cases.map(([, method, path, headers]) => explainJson(method, path, headers)));
      cases.forEach(([what, , , , stage, status, code], i) => {
        const { run, e } = results[i]!;
        assert.equal(run.code, 1, `${what}: exit code`);
        assert.deepEqual({ status: e.answer.status, code: e.answer.code }, { status, code }, what);
        const last = e.stages.at(-1)!;
        assert.deepEqual([last.stage, last.verdict], [stage, 'refused'], `${what}: refused by ${stage}`);
        assert.equal(e.upstream, null, `${what}: nothing would reach the upstream`);
      });
      assert.equal(results[2]!.e.identity?.role, 'family_member', 'the caller is named');
      assert.match(results[3]!.e.answer.detail, /another user/);
      assert.match(results[6]!.e.answer.headers.allow ?? '', /GET/);
    });

    it('break-glass with a reason passes, and says so', async () => {
      const reason = 'patient unconscious, chart needed';
      const { run, e } = await explainJson('GET', `/api/records/${fresh()}`, { ...bearer(await signToken({ sub: fresh(), role: 'admin' })), 'x-break-glass-reason': reason });
      assert.equal(run.code, 0, run.stdout);
      assert.equal(e.breakGlass, reason);
      assert.match(e.stages.find((s) => s.stage === 'authorize')!.detail, /break-glass/);
    });

    it('reads a budget without spending it, and sees it spent once the gateway has', async () => {
      const who = fresh();
      const token = await signToken({ sub: who });
      const headers = bearer(token);
      for (let i = 0; i < 2; i++) {
        const { run, e } = await explainJson('GET', '/api/limited/x', headers);
        assert.equal(run.code, 0);
        assert.deepEqual(e.rateLimit, { key: `rate_limit:{${who}}:limited`, limit: 2, remaining: 1, allowed: true }, 'explain counts nothing');
      }
      for (let i = 0; i < 2; i++) assert.equal((await send(`${gw.url}/api/limited/x`, { token })).statusCode, 200);
      const { run, e } = await explainJson('GET', '/api/limited/x', headers);
      assert.equal(run.code, 1);
      assert.equal(e.answer.code, 'GW_RATE_LIMITED');
      assert.equal((await send(`${gw.url}/api/limited/x`, { token })).statusCode, 429, 'the gateway agrees');
    });

    it('agrees with the gateway: status, upstream path and headers, request by request', async () => {
      const owner = fresh();
      const requests: Array<[string, string, Record<string, string>]> = [
        ['GET', '/open/a/b?q=1', {}],
        ['GET', '/api/staff/list?page=2', bearer(await signToken({ sub: fresh(), role: 'health_provider' }))],
        ['POST', '/api/staff/list', { ...bearer(await signToken({ sub: fresh(), role: 'resident' })), 'content-type': 'application/json' }],
        ['GET', `/api/records/${owner}`, { ...bearer(await signToken({ sub: owner, role: 'resident' })), 'x-user-id': 'someone-else', 'x-forwarded-for': '203.0.113.9' }],
        ['GET', `/api/records/${owner}`, bearer(await signToken({ sub: fresh(), role: 'resident' }))],
        ['PUT', '/api/only-get', {}],
        ['GET', '/api/only-get', { authorization: 'Bearer not-a-jwt' }],
      ];
      for (const [method, path, headers] of requests) {
        const what = `${method} ${path}`;
        const seen = upstream.received.length;
        const res = await send(`${gw.url}${path}`, { method, headers, ...(method === 'POST' ? { body: '{}' } : {}) });
        const { e } = await explainJson(method, path, headers);
        const reached = upstream.received.slice(seen);
        if (e.upstream === null) {
          assert.equal(res.statusCode, e.answer.status, `${what}: ${res.text}`);
          assert.equal(reached.length, 0, `${what}: the gateway sent nothing upstream either`);
          continue;
        }
        assert.equal(res.statusCode, 200, `${what}: proxied by the gateway too (${res.text})`);
        assert.equal(reached.length, 1);
        assert.equal(reached[0]!.url, e.upstream.target, `${what}: upstream path`);
        const got = reached[0]!.headers;
        for (const [name, value] of e.upstream.headers) {
          if (name === 'x-request-id' || name === 'authorization' || name === 'traceparent') continue;
          assert.equal(String(got[name]), value, `${what}: the upstream's ${name}`);
        }
        const said = new Set(e.upstream.headers.map(([n]) => n));
        const unexplained = Object.keys(got).filter((n) => !said.has(n) && !['host', 'connection', 'content-length', 'transfer-encoding'].includes(n));
        assert.deepEqual(unexplained, [], `${what}: headers the upstream got that explain did not name`);
      }
    });

    it('never prints the token', async () => {
      const token = await signToken({ sub: fresh() });
      const run = await cli(['explain', 'GET', '/open/x', '-H', `Authorization: Bearer ${token}`]);
      assert.equal(run.code, 0, run.stderr);
      assert.ok(!run.stdout.includes(token.split('.')[2]!), run.stdout);
    });
  });

  describe('token inspect', () => {
    async function inspect(token: string): Promise<{ run: Run; r: TokenReport }> {
      const run = await cli(['token', 'inspect', token, '--json']);
      return { run, r: JSON.parse(run.stdout) as TokenReport };
    }
    const now = () => Math.floor(Date.now() / 1000);
    const hs256 = (claims: Record<string, unknown>, header: Record<string, unknown> = {}, secret = TEST_SECRET) =>
      new SignJWT(claims).setProtectedHeader({ alg: 'HS256', typ: 'JWT', ...header }).sign(new TextEncoder().encode(secret));

    it('a valid token passes (exit 0), not revoked; one revoked since is refused as revoked', async () => {
      const sub = fresh();
      const token = await signToken({ sub });
      const ok = await inspect(token);
      assert.equal(ok.run.code, 0, ok.run.stdout);
      assert.equal(ok.r.verdict.passes, true);
      assert.match(ok.r.verdict.detail, /not revoked/);
      assert.deepEqual(ok.r.signature.map((s) => [s.key, s.matches]), [['current', true], ['previous', false]]);
      const admin = await signToken({ sub: fresh(), role: 'admin' });
      // The gateway's own endpoint is not among this test's routes: revoke in Redis as it would.
      const { decodeJwt } = await import('jose');
      const { Redis } = await import('ioredis');
      const keys = new Redis(redis.url);
      await keys.set(`revoked:jti:{${sub}}:${decodeJwt(token).jti}`, '1', 'EX', 600);
      keys.disconnect();
      assert.ok(admin);
      const revoked = await inspect(token);
      assert.equal(revoked.run.code, 1);
      assert.equal(revoked.r.verdict.code, 'GW_AUTH_TOKEN_REVOKED');
      assert.equal((await send(`${gw.url}/open/x`, { token })).statusCode, 200, 'a public route');
      assert.equal((await send(`${gw.url}/api/limited/x`, { token })).statusCode, 401, 'the gateway agrees');
    });

    it('says why each refused token is refused, and which secret signed it', async () => {
      const t = now();
      const cases: Array<[string, string, string, RegExp]> = [
        ['expired', await signToken({ sub: fresh(), expiresInSeconds: -600 }), 'GW_AUTH_TOKEN_EXPIRED', /expired/],
        ['lifetime over the cap', await hs256({ sub: 'u', role: 'resident', iat: t, exp: t + 30 * 86_400 }), 'GW_AUTH_CLAIMS_INVALID', /longer than/],
        ['unknown role', await hs256({ sub: 'u', role: 'doctor', iat: t, exp: t + 600 }), 'GW_AUTH_CLAIMS_INVALID', /role/],
        ['a refresh token', await hs256({ sub: 'u', role: 'resident', typ: 'refresh', iat: t, exp: t + 600 }), 'GW_AUTH_TOKEN_TYPE', /not an access token/],
        ['a wrong key id', await hs256({ sub: 'u', role: 'resident', iat: t, exp: t + 600 }, { kid: 'other-key' }), 'GW_AUTH_TOKEN_INVALID', /names a key/],
        ['signed with another secret', await signToken({ sub: fresh(), secret: 'some-other-secret-0123456789abcdef-012345' }), 'GW_AUTH_TOKEN_INVALID', /signature/],
        ['not a JWT', 'not-a-jwt', 'GW_AUTH_TOKEN_MALFORMED', /decoded/],
      ];
      const runs = await Promise.all(cases.map(([, token]) => inspect(token)));
      cases.forEach(([what, , code, detail], i) => {
        const { run, r } = runs[i]!;
        assert.equal(run.code, 1, what);
        assert.equal(r.verdict.code, code, `${what}: ${JSON.stringify(r.verdict)}`);
        assert.match(r.verdict.detail, detail, what);
      });
      assert.ok(runs[0]!.r.facts.some((f) => /expires .*: expired/.test(f)), runs[0]!.r.facts.join('; '));
      assert.ok(runs[1]!.r.facts.some((f) => /over the cap/.test(f)));
      assert.deepEqual(runs[5]!.r.signature.map((s) => s.matches), [false, false], 'neither the current nor the previous secret signed it');
    });

    it('a token signed with the previous secret passes during the rotation, and the report says which secret', async () => {
      const { run, r } = await inspect(await signToken({ sub: fresh(), secret: PREVIOUS_SECRET }));
      assert.equal(run.code, 0, run.stdout);
      assert.deepEqual(r.signature.map((s) => [s.key, s.matches]), [['current', false], ['previous', true]]);
    });

    it('prints claims but never the signature', async () => {
      const token = await signToken({ sub: fresh() });
      const run = await cli(['token', 'inspect', token]);
      assert.equal(run.code, 0);
      assert.match(run.stdout, /verdict: passes/);
      assert.ok(!run.stdout.includes(token.split('.')[2]!));
    });
  });

  describe('validate and routes', () => {
    it('validate: exit 0 on the running config; through bin/api-gateway.mjs too', async () => {
      const run = await cli(['validate'], {}, ['bin/api-gateway.mjs']);
      assert.equal(run.code, 0, run.stdout + run.stderr);
      assert.match(run.stdout, /^ok: .*5 routes, 1 services/);
    });

    it('validate FILE: exit 1 with every problem by field path, the environment\'s too, and no secret printed', async () => {
      const dir = await mkdtemp(join(tmpdir(), 'gw-cli-'));
      try {
        const file = join(dir, 'routes.yaml');
        await writeFile(file, stringify({ services: { s: { instances: ['http://127.0.0.1:1'] } }, routes: [{ name: 'a', path: '/a', service: 's', timout: 5 }, { name: 'b', path: '/b', service: 's', roles: ['doctor'] }] }));
        const run = await cli(['validate', file, '--json']);
        assert.equal(run.code, 1);
        const result = JSON.parse(run.stdout) as { ok: boolean; problems: string[] };
        assert.equal(result.ok, false);
        assert.ok(result.problems.some((p) => p.includes('routes[0]') && p.includes('timout')), result.problems.join('\n'));
        assert.ok(result.problems.some((p) => p.includes('routes[1].roles[0]')), result.problems.join('\n'));
        const shortSecret = 'too-short-secret-value';
        const both = await cli(['validate', file], { JWT_SECRET: shortSecret, RATE_LIMIT_PER_MINUTE: 'lots' });
        assert.equal(both.code, 1);
        for (const field of ['JWT_SECRET', 'RATE_LIMIT_PER_MINUTE', 'routes[0]', 'routes[1].roles[0]']) assert.ok(both.stdout.includes(field), `${field} in:\n${both.stdout}`);
        assert.ok(!both.stdout.includes(shortSecret), 'the secret is never printed');
      } finally {
        await rm(dir, { recursive: true, force: true });
      }
    });

    it('routes: the compiled table as text and as JSON', async () => {
      const [text, json] = await Promise.all([cli(['routes']), cli(['routes', '--json'])]);
      assert.equal(text.code, 0);
      assert.match(text.stdout, /^NAME\s+MATCH/);
      assert.match(text.stdout, /records\s+\/api\/records\/:userId\s+any\s+backend\s+required\s+resident,health_provider/);
      const rows = JSON.parse(json.stdout) as Array<{ name: string; phi: boolean; rateLimit: string }>;
      assert.deepEqual(rows.map((r) => r.name), ['open', 'records', 'staff', 'limited', 'only-get']);
      assert.equal(rows.find((r) => r.name === 'records')!.phi, true);
      assert.match(rows.find((r) => r.name === 'limited')!.rateLimit, /^2\/min own budget/);
    });

    it('a usage error or a config error is exit 2', async () => {
      const [unknown, missing, config] = await Promise.all([cli(['frobnicate']), cli(['explain', 'GET']), cli(['routes'], { JWT_SECRET: 'short' })]);
      assert.deepEqual([unknown.code, missing.code, config.code], [2, 2, 2]);
      assert.match(unknown.stderr, /unknown command/);
      assert.match(config.stderr, /JWT_SECRET/);
    });
  });
});
