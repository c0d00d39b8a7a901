import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import type { Redis } from 'ioredis';
import { decodeJwt } from 'jose';
import { startAuthService, type AuthService } from '../helpers/auth-service.js';
import { routesFor, startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { send } from '../helpers/http.js';
import { until, untilDatabase } from '../helpers/poll.js';
import { inspectRedis, startRedis, type TestRedis } from '../helpers/redis.js';
import { signToken } from '../helpers/tokens.js';
import { startUpstream, type TestUpstream } from '../helpers/upstream.js';

/**
 * Acceptance: "revocation check and rate limit travel in the same round trip". Redis's MONITOR
 * feed shows every command a client sent and, marked `lua`, every command a script ran: an
 * authenticated request must cost exactly one script call, with the revocation lookups, the
 * session lookup and the rate-limit counter inside it, and no command of its own besides.
 */

interface Seen {
  command: string;
  args: string[];
  /** `ip:port` of the client that sent it, or `lua` for a command a script ran. */
  source: string;
}

const SCRIPT_CALLS = new Set(['evalsha', 'eval']);

describe('one redis round trip per authenticated request', () => {
  let redis: TestRedis;
  let keys: Redis;
  let auth: AuthService;
  let upstream: TestUpstream;
  let gw: TestGateway;

  before(async () => {
    redis = await startRedis();
    keys = inspectRedis(redis);
    auth = await startAuthService();
    upstream = await startUpstream();
    gw = await startTestGateway(
      routesFor(upstream.url, [
        { name: 'records', prefix: '/api/records' },
        { name: 'chart', prefix: '/api/chart', phi: true },
        { name: 'revocations', path: '/api/gateway/revocations', methods: ['POST'], action: 'revoke', permission: 'tokens:revoke', service: undefined },
      ]),
      { REDIS_URL: redis.url, AUTH_SERVICE_URL: auth.url, HEALTH_CACHE_MS: '0' },
    );
    await untilDatabase(gw.url, 'healthy');
  });
  after(async () => {
    await gw?.close();
    await upstream?.close();
    await auth?.stop();
    keys?.disconnect();
    await redis?.stop();
  });

  /**
   * The commands Redis ran while `work` did: MONITOR is on before it starts, and the window ends
   * at a marker sent afterwards (Redis feeds MONITOR in the order it runs commands).
   */
  async function commandsDuring(work: () => Promise<void>): Promise<Seen[]> {
    const monitor = await keys.monitor();
    const seen: Seen[] = [];
    monitor.on('monitor', (_time: string, args: string[], source: string) => seen.push({ command: args[0]!.toLowerCase(), args: args.slice(1), source }));
    try {
      await work();
      const marker = `end-of-window-${randomUUID()}`;
      await keys.echo(marker);
      const end = await until('the MONITOR feed reaching the end marker', 2_000, async () => {
        const i = seen.findIndex((c) => c.command === 'echo' && c.args[0] === marker);
        return i === -1 ? undefined : i;
      }, 5);
      return seen.slice(0, end);
    } finally {
      monitor.disconnect();
    }
  }

  async function scriptCalls(): Promise<number> {
    const stats = await keys.info('commandstats');
    let calls = 0;
    for (const m of stats.matchAll(/^cmdstat_(evalsha|eval):calls=(\d+)/gm)) calls += Number(m[2]);
    return calls;
  }

  function sentByClients(seen: Seen[]): Seen[] {
    return seen.filter((c) => c.source !== 'lua');
  }

  function ranByScripts(seen: Seen[], command: string, key: string): number {
    return seen.filter((c) => c.source === 'lua' && c.command === command && c.args[0] === key).length;
  }

  async function get(path: string, token: string): Promise<void> {
    const res = await send(`${gw.url}${path}`, { token });
    assert.equal(res.statusCode, 200, `${path}: ${res.text}`);
  }

  it('sequential requests: one script call each, holding the revocation checks and the rate-limit counter', async () => {
    const user = `round-trip-${process.pid}`;
    const token = await signToken({ sub: user });
    const jti = decodeJwt(token).jti!;
    // The first script call on a connection loads the script (EVAL); every later one is EVALSHA.
    await get('/api/records/warm-up', token);

    const N = 5;
    const statsBefore = await scriptCalls();
    const seen = await commandsDuring(async () => {
      for (let i = 0; i < N; i++) await get(i % 2 === 0 ? `/api/records/${i}` : `/api/chart/${i}`, token);
    });
    const statsAfter = await scriptCalls();

    const sent = sentByClients(seen);
    assert.deepEqual(
      sent.map((c) => c.command),
      Array<string>(N).fill('evalsha'),
      `the gateway sent ${sent.length} commands for ${N} requests: ${sent.map((c) => c.command).join(', ')}`,
    );
    assert.equal(statsAfter - statsBefore, N, 'INFO commandstats: script calls grew by the number of requests');
    assert.equal(ranByScripts(seen, 'exists', `revoked:jti:{${user}}:${jti}`), N, 'the token\'s revocation is looked up inside the script');
    assert.equal(ranByScripts(seen, 'get', `revoked:user:{${user}}`), N, 'the user\'s revocation is looked up inside the script');
    assert.equal(ranByScripts(seen, 'set', `rate_limit:{${user}}`), N, 'the rate limit is counted inside the same script');
  });

  it('a token with a session already validated: still one script call, the session lookup inside it, no call to the auth service', async () => {
    const user = `round-trip-session-${process.pid}`;
    const sid = randomUUID();
    auth.sessions.set(sid, user);
    const token = await signToken({ sub: user, claims: { sid } });
    await get('/api/records/validate', token);
    assert.equal(auth.sessionChecks(sid), 1);
    await until('the session cached in redis', 1_000, async () => ((await keys.exists(`session:{${user}}:${sid}`)) === 1 ? true : undefined), 5);

    const N = 4;
    const seen = await commandsDuring(async () => {
      for (let i = 0; i < N; i++) await get(`/api/records/${i}`, token);
    });
    assert.deepEqual(sentByClients(seen).map((c) => c.command), Array<string>(N).fill('evalsha'));
    assert.equal(ranByScripts(seen, 'get', `session:{${user}}:${sid}`), N, 'the session is looked up inside the script');
    assert.equal(auth.sessionChecks(sid), 1, 'a cached session is not validated again');
  });

  it('concurrent requests of several users: still one script call per request', async () => {
    const tokens = await Promise.all(Array.from({ length: 6 }, (_, i) => signToken({ sub: `round-trip-many-${process.pid}-${i}` })));
    await Promise.all(tokens.map((t) => get('/api/records/warm-up', t)));
    const seen = await commandsDuring(async () => {
      await Promise.all(tokens.flatMap((t) => [get('/api/records/a', t), get('/api/chart/b', t)]));
    });
    const sent = sentByClients(seen);
    assert.equal(sent.length, tokens.length * 2, `commands sent: ${sent.map((c) => c.command).join(', ')}`);
    assert.ok(sent.every((c) => SCRIPT_CALLS.has(c.command)), `only script calls: ${sent.map((c) => c.command).join(', ')}`);
  });

  it('revocations written by an earlier release (revoked:jti:<jti>, revoked:user:<user>) are still refused, in the same script call', async () => {
    const user = `round-trip-legacy-${process.pid}`;
    const byToken = await signToken({ sub: user });
    const other = await signToken({ sub: user, issuedAt: Math.floor(Date.now() / 1000) - 60 });
    await get('/api/records/before', byToken);
    await keys.set(`revoked:jti:${decodeJwt(byToken).jti!}`, '1', 'EX', 600);
    const seen = await commandsDuring(async () => {
      const res = await send(`${gw.url}/api/records/after`, { token: byToken });
      assert.equal(res.statusCode, 401, res.text);
    });
    assert.deepEqual(sentByClients(seen).map((c) => c.command), ['evalsha']);
    assert.equal((await send(`${gw.url}/api/records/other`, { token: other })).statusCode, 200, 'the user\'s other token passes');
    await keys.set(`revoked:user:${user}`, String(Math.floor(Date.now() / 1000) - 30), 'EX', 600);
    assert.equal((await send(`${gw.url}/api/records/other`, { token: other })).statusCode, 401, 'a token issued before the user-wide revocation is refused');
  });

  it('a revoked token costs one script call too, and counts nothing', async () => {
    const user = `round-trip-revoked-${process.pid}`;
    const token = await signToken({ sub: user });
    await get('/api/records/before', token);
    const admin = await signToken({ sub: 'round-trip-admin', role: 'admin' });
    const revoked = await send(`${gw.url}/api/gateway/revocations`, { token: admin, json: { jti: decodeJwt(token).jti, user_id: decodeJwt(token).sub } });
    assert.equal(revoked.statusCode, 200, revoked.text);

    const seen = await commandsDuring(async () => {
      const res = await send(`${gw.url}/api/records/after`, { token });
      assert.equal(res.statusCode, 401, res.text);
    });
    assert.deepEqual(sentByClients(seen).map((c) => c.command), ['evalsha']);
    assert.equal(ranByScripts(seen, 'set', `rate_limit:{${user}}`), 0, 'a refused token is not counted against the budget');
  });
});
