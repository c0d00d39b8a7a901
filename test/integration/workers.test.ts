import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { rm, writeFile } from 'node:fs/promises';
import { connect } from 'node:net';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import type { Redis } from 'ioredis';
import { decodeJwt } from 'jose';
import { Client } from 'undici';
import { stringify } from 'yaml';
import { REVOCATION_CHANNEL } from '../../src/stores/access-store.js';
import { writeRoutesFile } from '../helpers/gateway.js';
import { expectProblem, onNewConnection, type Answer } from '../helpers/http.js';
import { until } from '../helpers/poll.js';
import { spawnGateway, startGatewayProcess, type GatewayProcess } from '../helpers/process.js';
import { inspectRedis, startRedis, type TestRedis } from '../helpers/redis.js';
import { signToken } from '../helpers/tokens.js';
import { startUpstream, type TestUpstream } from '../helpers/upstream.js';
import { parseExposition } from '../helpers/prometheus.js';

/**
 * WORKERS > 1 (src/workers.ts): one primary process forks gateway workers sharing the port.
 * Every request here goes on a connection of its own, so the primary's round robin spreads them
 * over the workers; the upstream tells which worker sent each request it gets by looking up who
 * owns the socket it came on (Linux /proc), so a test can show that both workers took part.
 */

const LIMIT = 20;
/** Far above any answer expected here: a hang fails one request, not the run. */
const HANG_MS = 5_000;
const LOGOUT = '/api/auth/logout';
const REVOCATIONS = '/api/gateway/revocations';
/** The upstream holds requests to this path until the test releases them. */
const SLOW = '/api/slow/hold';

const execFileAsync = promisify(execFile);

/** `pgrep -P <pid>`: the pids of a process's children (pgrep exits 1 when there are none). */
async function childrenOf(pid: number): Promise<number[]> {
  try {
    const { stdout } = await execFileAsync('pgrep', ['-P', String(pid)]);
    return stdout.split('\n').filter(Boolean).map(Number).sort((a, b) => a - b);
  } catch (err) {
    if ((err as { code?: number }).code === 1) return [];
    throw err;
  }
}

/** The same, synchronously from /proc, for use inside a request handler. */
function childrenNow(pid: number): number[] {
  try {
    return readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number);
  } catch {
    return [];
  }
}

/**
 * Which of `pids` holds the IPv4 loopback TCP socket from `localPort` to `remotePort` (the
 * gateway worker's end of a connection to the upstream), by its inode in /proc/net/tcp.
 */
function socketOwner(localPort: number, remotePort: number, pids: number[]): number | undefined {
  const hex = (port: number) => port.toString(16).toUpperCase().padStart(4, '0');
  let inode: string | undefined;
  for (const line of readFileSync('/proc/net/tcp', 'utf8').split('\n').slice(1)) {
    const f = line.trim().split(/\s+/);
    if (f.length < 10) continue;
    if (f[1]!.endsWith(`:${hex(localPort)}`) && f[2]!.endsWith(`:${hex(remotePort)}`)) {
      inode = f[9];
      break;
    }
  }
  if (inode === undefined || inode === '0') return undefined;
  const target = `socket:[${inode}]`;
  for (const pid of pids) {
    let fds: string[];
    try {
      fds = readdirSync(`/proc/${pid}/fd`);
    } catch {
      continue;
    }
    for (const fd of fds) {
      try {
        if (readlinkSync(`/proc/${pid}/fd/${fd}`) === target) return pid;
      } catch {
        // closed meanwhile
      }
    }
  }
  return undefined;
}

/**
 * A primary SIGKILLed by `stop()` leaves its workers to notice the closed channel and exit; any
 * still running a moment later (and still a gateway, not a reused pid) are ended here.
 */
function killLeftWorkers(pids: number[]): void {
  for (const pid of pids) {
    try {
      if (readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes('src/main.ts')) process.kill(pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
}

/** Resolves true once a TCP connection to the port is refused, false if it was accepted. */
function connectionRefused(port: number): Promise<boolean> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, '127.0.0.1');
    socket.once('connect', () => {
      socket.destroy();
      resolve(false);
    });
    // A connection the kernel queued just before the listener closed is reset: not accepted either.
    socket.once('error', (err: NodeJS.ErrnoException) => (err.code === 'ECONNREFUSED' || err.code === 'ECONNRESET' ? resolve(true) : reject(err)));
  });
}

/** One request on a connection of its own (so the primary hands it to whichever worker is next). */
function fresh(gw: GatewayProcess, path: string, options: { token?: string; method?: 'GET' | 'POST'; json?: unknown } = {}): Promise<Answer> {
  const headers: Record<string, string> = {};
  if (options.token !== undefined) headers.authorization = `Bearer ${options.token}`;
  let body: string | undefined;
  if (options.json !== undefined) {
    headers['content-type'] = 'application/json';
    body = JSON.stringify(options.json);
  }
  return onNewConnection(gw.url, path, { method: options.method ?? (body === undefined ? 'GET' : 'POST'), headers, body, headersTimeout: HANG_MS, bodyTimeout: HANG_MS });
}

let nextId = 0;
function freshUserId(label: string): string {
  return `${label}-${process.pid}-${++nextId}`;
}

function routes(upstreamUrl: string, extra: Array<Record<string, unknown>> = []): Record<string, unknown> {
  return {
    services: { backend: { instances: [upstreamUrl] } },
    routes: [
      { name: 'records', prefix: '/api/records' },
      { name: 'limited', prefix: '/api/limited', rateLimit: { perMinute: LIMIT } },
      { name: 'counted', prefix: '/api/counted' },
      { name: 'slow', prefix: '/api/slow', auth: 'public', timeoutMs: 30_000 },
      { name: 'logout', path: LOGOUT, methods: ['POST'], action: 'logout' },
      { name: 'revocations', path: REVOCATIONS, methods: ['POST'], action: 'revoke', permission: 'tokens:revoke' },
      ...extra,
    ].map((r) => (r.action === 'revoke' ? r : { service: 'backend', ...r })),
  };
}

describe('WORKERS=2: two gateway workers on one port, sharing one redis', { timeout: 90_000 }, () => {
  let redis: TestRedis;
  let keys: Redis;
  let upstream: TestUpstream;
  let gw: GatewayProcess;
  let routesFile: string;
  let routesDir: string;
  let admin: string;
  /** The primary's pid, for the upstream's handler. */
  let gwPid = 0;
  /** Request path -> pid of the worker that forwarded it (undefined when the lookup failed). */
  const forwardedBy = new Map<string, number | undefined>();
  let slowArrived!: () => void;
  const slowSeen = new Promise<void>((resolve) => (slowArrived = resolve));
  let releaseSlow!: () => void;
  const slowReleased = new Promise<void>((resolve) => (releaseSlow = resolve));

  /** The distinct workers that forwarded the given paths. */
  const workersOf = (paths: string[]) => new Set(paths.map((p) => forwardedBy.get(p)));

  let lastSeen: number[] = [];
  /** Polls until the primary has `count` children, returns them. */
  const untilWorkers = (count: number, timeoutMs: number, also: (pids: number[]) => boolean = () => true) =>
    until(`${count} worker processes under the primary (pgrep -P ${gw.pid})`, timeoutMs, async () => {
      const pids = await childrenOf(gw.pid);
      lastSeen = pids;
      return pids.length === count && also(pids) ? pids : undefined;
    }, 50);

  /** Every worker subscribed to the revocation channel, and /health on consecutive fresh connections sees Redis. */
  const untilEveryWorkerSeesRedis = async (workers: number) => {
    await until(`${workers} workers subscribed to ${REVOCATION_CHANNEL}`, 30_000, async () => {
      const reply = (await keys.pubsub('NUMSUB', REVOCATION_CHANNEL)) as [string, number];
      return Number(reply[1]) === workers ? true : undefined;
    }, 50);
    let healthy = 0;
    await until('/health reporting the database healthy on 6 consecutive fresh connections', 30_000, async () => {
      const res = await fresh(gw, '/health');
      const database = (JSON.parse(res.text) as { dependencies?: { database?: string } }).dependencies?.database;
      healthy = database === 'healthy' ? healthy + 1 : 0;
      return healthy >= 6 ? true : undefined;
    }, 20);
  };

  before(async () => {
    redis = await startRedis();
    keys = inspectRedis(redis);
    upstream = await startUpstream((req, res, received) => {
      // Who sent it: the worker owning the other end of this connection.
      const workers = childrenNow(gwPid);
      forwardedBy.set(received.url, socketOwner(req.socket.remotePort!, req.socket.localPort!, workers));
      req.resume();
      const answer = () => {
        const body = JSON.stringify({ url: received.url });
        res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) }).end(body);
      };
      if (received.url === SLOW) {
        slowArrived();
        void slowReleased.then(answer);
      } else req.on('end', answer);
    });
    ({ file: routesFile, dir: routesDir } = await writeRoutesFile(routes(upstream.url)));
    gw = await spawnGateway(undefined, {
      WORKERS: '2',
      REDIS_URL: redis.url,
      ROUTES_FILE: routesFile,
      // Kept with the routes file (and removed with it), as the helper does when it writes the file.
      AUDIT_SPOOL_DIR: join(routesDir, 'audit-spool'),
      ROUTES_WATCH: 'false',
      HEALTH_CACHE_MS: '0',
      RATE_LIMIT_PER_MINUTE: '100000',
      SHUTDOWN_TIMEOUT_MS: '5000',
    });
    gwPid = gw.pid;
    await untilWorkers(2, 30_000).catch((err: Error) => {
      throw new Error(`${err.message}; last seen: [${lastSeen.join(' ')}]; stderr:\n${gw.stderr()}`);
    });
    await untilEveryWorkerSeesRedis(2);
    admin = await signToken({ sub: freshUserId('admin'), role: 'admin' });
  });

  after(async () => {
    releaseSlow();
    const workers = gw ? await childrenOf(gw.pid).catch(() => []) : [];
    await gw?.stop();
    killLeftWorkers(workers);
    keys?.disconnect();
    await upstream?.close();
    await redis?.stop();
    if (routesDir) await rm(routesDir, { recursive: true, force: true });
  });

  it('runs two worker processes under the primary, and the primary hands fresh connections to both', async () => {
    const workers = await childrenOf(gw.pid);
    assert.equal(workers.length, 2, `pgrep -P ${gw.pid}: ${workers.join(' ')}`);
    const token = await signToken({ sub: freshUserId('spread') });
    const paths = Array.from({ length: 8 }, () => `/api/records/${randomUUID()}`);
    for (const path of paths) assert.equal((await fresh(gw, path, { token })).statusCode, 200);
    assert.deepEqual([...workersOf(paths)].sort((a, b) => (a ?? 0) - (b ?? 0)), workers, 'both workers forwarded requests, and only they');
  });

  it(`admits exactly ${LIMIT} of ${3 * LIMIT} requests of one user spread over both workers, then 429; the upstream gets exactly ${LIMIT}`, async () => {
    const user = freshUserId('limited');
    const token = await signToken({ sub: user });
    const reached = upstream.received.length;
    const statuses: number[] = [];
    const remaining: number[] = [];
    const passedPaths: string[] = [];
    const started = performance.now();
    for (let i = 0; i < 3 * LIMIT; i++) {
      const path = `/api/limited/${i}-${randomUUID()}`;
      const res = await fresh(gw, path, { token });
      statuses.push(res.statusCode);
      if (res.statusCode === 200) passedPaths.push(path);
      else expectProblem(res, 429, 'GW_RATE_LIMITED');
      const m = /;r=(\d+);/.exec(String(res.headers.ratelimit));
      remaining.push(m ? Number(m[1]) : -1);
    }
    const elapsed = performance.now() - started;
    // GCRA gives back one request per 60 s / LIMIT: a run longer than that (a busy machine) may
    // see that many more pass, and no more; on a quiet machine the count is exact.
    const refilled = Math.floor(elapsed / (60_000 / LIMIT));
    const passed = statuses.filter((s) => s === 200).length;
    assert.deepEqual(statuses.slice(0, LIMIT), Array<number>(LIMIT).fill(200), 'the first L pass');
    assert.ok(passed <= LIMIT + refilled, `${passed} passed in ${elapsed.toFixed(0)} ms: at most ${LIMIT} + ${refilled} refilled`);
    if (refilled === 0) assert.deepEqual(statuses.slice(LIMIT), Array<number>(2 * LIMIT).fill(429), 'every later one is refused');
    assert.deepEqual(
      remaining.slice(0, LIMIT),
      Array.from({ length: LIMIT }, (_, i) => LIMIT - 1 - i),
      'one budget counted down by both workers',
    );
    assert.equal(upstream.received.length - reached, passed, 'the upstream received exactly the admitted requests');
    assert.equal(workersOf(passedPaths).size, 2, `the admitted requests were forwarded by both workers: ${[...workersOf(passedPaths)].join(', ')}`);
  });

  it('/metrics on any worker counts every worker\'s requests: the same total on every fresh-connection scrape', async () => {
    const N = 12;
    const token = await signToken({ sub: freshUserId('counted') });
    const paths = Array.from({ length: N }, (_, i) => `/api/counted/${i}-${randomUUID()}`);
    for (const path of paths) assert.equal((await fresh(gw, path, { token })).statusCode, 200);
    assert.equal(workersOf(paths).size, 2, 'the counted requests were served by both workers');

    const totals: number[] = [];
    for (let i = 0; i < 6; i++) {
      const res = await fresh(gw, '/metrics');
      assert.equal(res.statusCode, 200, res.text);
      const samples = parseExposition(res.text).filter((s) => s.name === 'api_gateway_requests_total' && /counted/.test(s.labels.path ?? ''));
      assert.ok(samples.length > 0, 'no api_gateway_requests_total series for the counted route');
      totals.push(samples.reduce((sum, s) => sum + s.value, 0));
      // Each series appears once: merged, not listed per worker.
      const series = samples.map((s) => JSON.stringify(s.labels));
      assert.equal(new Set(series).size, series.length, `a series is listed twice: ${series.join(' ')}`);
    }
    assert.deepEqual(totals, Array<number>(6).fill(N), 'every scrape, whichever worker answered it, shows all requests');
  });

  it('a token revoked or logged out through one worker is refused by both on every following request', async () => {
    const revokedUser = freshUserId('revoked');
    const revoked = await signToken({ sub: revokedUser });
    const loggedOut = await signToken({ sub: freshUserId('logout') });
    const bystander = await signToken({ sub: freshUserId('bystander') });
    // Both workers have verified (and may cache) the tokens before they are revoked.
    for (let i = 0; i < 4; i++) {
      for (const token of [revoked, loggedOut]) assert.equal((await fresh(gw, `/api/records/${randomUUID()}`, { token })).statusCode, 200);
    }

    const res = await fresh(gw, REVOCATIONS, { token: admin, json: { jti: decodeJwt(revoked).jti, user_id: decodeJwt(revoked).sub } });
    assert.equal(res.statusCode, 200, `revocation: ${res.text}`);
    const out = await fresh(gw, LOGOUT, { token: loggedOut, method: 'POST' });
    assert.equal(out.statusCode, 200, `logout: ${out.text}`);

    const reached = upstream.received.length;
    const refusedPaths: string[] = [];
    for (let i = 0; i < 10; i++) {
      for (const token of [revoked, loggedOut]) {
        const path = `/api/records/${randomUUID()}`;
        refusedPaths.push(path);
        expectProblem(await fresh(gw, path, { token }), 401, 'GW_AUTH_TOKEN_REVOKED');
      }
    }
    assert.equal(upstream.received.length, reached, 'no request with a revoked token reached the upstream');
    // The user's other tokens are not affected by a revocation by jti.
    const other = await signToken({ sub: revokedUser });
    for (let i = 0; i < 4; i++) assert.equal((await fresh(gw, `/api/records/${randomUUID()}`, { token: other })).statusCode, 200);
    for (let i = 0; i < 4; i++) assert.equal((await fresh(gw, `/api/records/${randomUUID()}`, { token: bystander })).statusCode, 200);
  });

  it('SIGHUP to the primary reloads the routes file in both workers (ROUTES_WATCH=false)', { timeout: 30_000 }, async () => {
    const token = await signToken({ sub: freshUserId('reload') });
    await writeFile(routesFile, stringify(routes(upstream.url, [{ name: 'added', prefix: '/api/added' }])));
    // Not watched: until SIGHUP, neither worker knows the route.
    for (let i = 0; i < 4; i++) expectProblem(await fresh(gw, `/api/added/${i}`, { token }), 404, 'GW_ROUTE_NOT_FOUND');

    assert.ok(gw.child.kill('SIGHUP'));
    const paths: string[] = [];
    let consecutive = 0;
    await until('10 consecutive fresh-connection 200s from the added route', 15_000, async () => {
      const path = `/api/added/${randomUUID()}`;
      const res = await fresh(gw, path, { token });
      if (res.statusCode === 200) {
        consecutive++;
        paths.push(path);
      } else consecutive = 0;
      return consecutive >= 10 ? true : undefined;
    });
    assert.equal(workersOf(paths.slice(-10)).size, 2, 'both workers serve the added route');
    assert.equal((await fresh(gw, `/api/records/${randomUUID()}`, { token })).statusCode, 200, 'the old routes stay');
    assert.equal(gw.child.exitCode, null, 'the primary survives SIGHUP');
    assert.equal((await childrenOf(gw.pid)).length, 2, 'and so do both workers');
  });

  /** What became of the connections opened in the instant after a worker was killed (failures of the sequential ones included). */
  const atTheKill: string[] = [];

  it('a worker killed with SIGKILL: requests keep being served, and the primary starts another worker', { timeout: 45_000 }, async (t) => {
    const token = await signToken({ sub: freshUserId('survivor') });
    const before = await childrenOf(gw.pid);
    assert.equal(before.length, 2);
    const victim = before[0]!;
    const survivor = before[1]!;
    /** A fresh-connection request that gives up after `ms`: "answered <status>" or what went wrong. */
    const attempt = async (ms: number): Promise<string> => {
      try {
        const res = await onNewConnection(gw.url, `/api/records/${randomUUID()}`, { headers: { authorization: `Bearer ${token}` }, headersTimeout: ms, bodyTimeout: ms });
        return `answered ${res.statusCode}`;
      } catch (err) {
        return (err as Error).message;
      }
    };

    process.kill(victim, 'SIGKILL');
    const started = performance.now();
    const since = () => `${(performance.now() - started).toFixed(0)} ms`;
    // A few connections in the very moment of the kill, before the primary has heard of it.
    const burst = Promise.all([0, 2, 4, 6].map(async (wait) => (await delay(wait), attempt(1_500))));

    const failures: string[] = [];
    let consecutive = 0;
    while (consecutive < 10) {
      assert.ok(performance.now() - started < 15_000, `no 10 consecutive successes within 15 s of the kill; failures: ${failures.join(' | ')}`);
      const outcome = await attempt(1_500);
      if (outcome === 'answered 200') consecutive++;
      else {
        failures.push(`${since()} ${outcome}`);
        consecutive = 0;
      }
      await delay(10);
    }
    t.diagnostic(`sequential requests after the kill: ${failures.length} failed before 10 in a row passed (${since()}): ${failures.join(' | ')}`);
    const burstOutcomes = await burst;
    t.diagnostic(`connections at the kill: ${burstOutcomes.join(' | ')}`);
    atTheKill.push(...burstOutcomes, ...failures);
    assert.ok(failures.length <= 1, `at most the one request caught by the kill may fail: ${failures.join(' | ')}`);
    const burstFailures = burstOutcomes.filter((o) => o !== 'answered 200');
    assert.ok(burstFailures.length <= 1, `at most one connection, the one handed to the dying worker, may be lost: ${burstOutcomes.join(' | ')}`);

    const after = await untilWorkers(2, 30_000, (pids) => !pids.includes(victim));
    assert.ok(after.includes(survivor), 'the surviving worker is still there');
    const replacement = after.find((p) => p !== survivor)!;
    await untilEveryWorkerSeesRedis(2);

    // The replacement serves, with the routes file as reloaded (it reads the file when it starts).
    await until(`the replacement worker ${replacement} forwarding a request`, 15_000, async () => {
      const path = `/api/added/${randomUUID()}`;
      const res = await fresh(gw, path, { token });
      assert.equal(res.statusCode, 200, res.text);
      return forwardedBy.get(path) === replacement ? true : undefined;
    });
    // /metrics still merges: the primary does not wait on the dead worker.
    for (let i = 0; i < 3; i++) {
      const scrape = await fresh(gw, '/metrics');
      assert.equal(scrape.statusCode, 200, scrape.text);
    }
  });

  it(
    'no connection that arrives as a worker dies is left without an answer (reset or served, not held open)',
    {
      todo:
        'known gap: with cluster round robin the primary hands a new connection to a worker it has not yet seen die; the hand-off reply never comes, the primary keeps the socket open and the client waits until its own timeout',
    },
    () => {
      assert.ok(atTheKill.length > 0, 'the SIGKILL test did not run');
      const held = atTheKill.filter((o) => /timeout/i.test(o));
      assert.deepEqual(held, [], `connections held open without an answer: ${atTheKill.join(' | ')}`);
    },
  );

  it('SIGTERM to the primary: the request in flight completes with 200, new connections are refused, the primary exits 0', { timeout: 45_000 }, async () => {
    const workers = await childrenOf(gw.pid);
    assert.equal(workers.length, 2);
    const client = new Client(gw.url);
    try {
      const inFlight = client.request({ path: SLOW, method: 'GET', headersTimeout: 10_000, bodyTimeout: 10_000 });
      inFlight.catch(() => undefined);
      await slowSeen;
      assert.ok(gw.child.kill('SIGTERM'));

      await until('new connections refused after SIGTERM', 15_000, async () => ((await connectionRefused(gw.port)) ? true : undefined), 10);
      assert.equal(gw.child.exitCode, null, 'the primary must wait for the request in flight');
      // The idle worker stops at once; the busy one drains.
      await until('the idle worker stopping while the busy one drains', 10_000, async () => ((await childrenOf(gw.pid)).length === 1 ? true : undefined), 20);
      assert.equal(gw.child.exitCode, null, 'the primary still waits');

      releaseSlow();
      const res = await inFlight;
      assert.equal(res.statusCode, 200);
      assert.deepEqual(await res.body.json(), { url: SLOW });
      const code = await Promise.race([gw.exited, delay(20_000).then(() => 'still running')]);
      assert.equal(code, 0, `exit code of the primary; stderr:\n${gw.stderr()}\nstdout:\n${gw.stdout()}`);
      for (const pid of workers) assert.throws(() => process.kill(pid, 0), 'a worker outlived the primary');
    } finally {
      await client.destroy();
    }
  });
});

describe('WORKERS=2 on SIGTERM with a request that outlasts SHUTDOWN_TIMEOUT_MS', { timeout: 60_000 }, () => {
  let redis: TestRedis;
  let upstream: TestUpstream;
  let gw: GatewayProcess | undefined;
  let arrived!: () => void;
  const seen = new Promise<void>((resolve) => (arrived = resolve));
  let release!: () => void;
  const released = new Promise<void>((resolve) => (release = resolve));

  before(async () => {
    redis = await startRedis();
    upstream = await startUpstream((req, res) => {
      req.resume();
      arrived();
      void released.then(() => res.writeHead(200).end('late'));
    });
  });
  after(async () => {
    release();
    const workers = gw ? await childrenOf(gw.pid).catch(() => []) : [];
    await gw?.stop();
    killLeftWorkers(workers);
    await upstream?.close();
    await redis?.stop();
  });

  it('exits 1, as a single gateway process does, when a worker had to cut a request at the drain deadline', async () => {
    gw = await spawnGateway(
      { services: { backend: { instances: [upstream.url] } }, routes: [{ name: 'held', prefix: '/held', service: 'backend', auth: 'public', timeoutMs: 30_000 }] },
      { WORKERS: '2', REDIS_URL: redis.url, SHUTDOWN_TIMEOUT_MS: '500', LOG_LEVEL: 'INFO' },
    );
    // Both workers listening (with their SIGTERM handlers installed), not just the first to answer.
    const p = gw;
    await until('both workers listening', 30_000, async () => ((p.stdout().match(/"message":"api-gateway listening"/g) ?? []).length >= 2 ? true : undefined), 50);
    const client = new Client(gw.url);
    try {
      const inFlight = client.request({ path: '/held/x', method: 'GET', headersTimeout: 10_000, bodyTimeout: 10_000 }).then(
        (res) => `answered ${res.statusCode}`,
        (err: Error) => `cut: ${err.message}`,
      );
      await seen;
      assert.ok(gw.child.kill('SIGTERM'));
      const code = await Promise.race([gw.exited, delay(20_000).then(() => 'still running')]);
      assert.match(await inFlight, /^cut: /, 'the request outlasting the deadline was cut');
      assert.match(gw.stdout(), /in-flight requests did not finish before SHUTDOWN_TIMEOUT_MS/, 'the worker said it cut requests');
      // A single process exits 1 here (src/main.ts); the primary must not report a clean stop.
      assert.equal(code, 1, `exit code of the primary after a worker's drain failed; stdout:\n${gw.stdout()}`);
    } finally {
      await client.destroy();
    }
  });
});

describe('WORKERS refused by the configuration', { timeout: 45_000 }, () => {
  const started: GatewayProcess[] = [];
  after(async () => {
    await Promise.all(started.map((p) => p.stop()));
  });

  const ROUTES = { services: { b: { instances: ['http://127.0.0.1:9'] } }, routes: [{ name: 'ok', path: '/ok', service: 'b' }] };

  it('exits 1 naming WORKERS for 2 workers without REDIS_URL, for 0 and for "lots", starting no worker', async () => {
    const cases: Array<[string, Record<string, string | undefined>, RegExp]> = [
      ['WORKERS=2 without REDIS_URL', { WORKERS: '2', REDIS_URL: undefined }, /WORKERS: 2 worker processes need REDIS_URL/],
      ['WORKERS=0', { WORKERS: '0', REDIS_URL: 'redis://127.0.0.1:9' }, /WORKERS: must be a number of worker processes from 1 to 256/],
      ['WORKERS=lots', { WORKERS: 'lots', REDIS_URL: 'redis://127.0.0.1:9' }, /WORKERS: must be a number of worker processes from 1 to 256/],
    ];
    const procs = await Promise.all(cases.map(([, env]) => startGatewayProcess(ROUTES, env)));
    started.push(...procs);
    const children = await Promise.all(procs.map(async (p) => (await delay(300), childrenOf(p.pid))));
    const codes = await Promise.all(procs.map((p) => p.exited));
    cases.forEach(([what, , message], i) => {
      const p = procs[i]!;
      assert.equal(codes[i], 1, `${what}: exit code; stderr:\n${p.stderr()}`);
      assert.match(p.stderr(), message, `${what}: stderr`);
      assert.match(p.stderr(), /^api-gateway: /, `${what}: a message, not a crash`);
      assert.doesNotMatch(p.stderr(), /\n\s+at /, `${what}: no stack trace`);
      assert.deepEqual(children[i], [], `${what}: no worker started`);
    });
  });
});
