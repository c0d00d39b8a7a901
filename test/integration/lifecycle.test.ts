import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { connect } from 'node:net';
import { setTimeout as delay } from 'node:timers/promises';
import { after, before, describe, it } from 'node:test';
import { Client } from 'undici';
import { routesFor } from '../helpers/gateway.js';
import { spawnGateway, startGatewayProcess, type GatewayProcess } from '../helpers/process.js';
import { startUpstream, type TestUpstream } from '../helpers/upstream.js';

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

describe('the gateway process on SIGTERM', () => {
  let upstream: TestUpstream;
  let gw: GatewayProcess | undefined;
  const body = randomBytes(256 * 1024);
  let arrived!: () => void;
  const slowArrived = new Promise<void>((resolve) => (arrived = resolve));
  let release!: () => void;
  const released = new Promise<void>((resolve) => (release = resolve));

  before(async () => {
    upstream = await startUpstream(async (req, res) => {
      req.resume();
      if (req.url === '/slow') {
        arrived();
        await released;
      }
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': body.length });
      res.end(body);
    });
  });
  after(async () => {
    release();
    await gw?.stop();
    await upstream?.close();
  });

  it('finishes the request in flight, refuses new connections and exits 0', { timeout: 20_000 }, async () => {
    // A short drain deadline: if shutdown hangs, the process says so with exit 1 in seconds, not 25.
    gw = await spawnGateway(routesFor(upstream.url, [{ name: 'files', prefix: '/files', rewrite: '/', auth: 'public', timeoutMs: 30_000 }]), { SHUTDOWN_TIMEOUT_MS: '5000' });
    // An ordinary keep-alive client, as a browser or a load balancer would hold.
    const client = new Client(gw.url);
    try {
      const inFlight = client.request({ path: '/files/slow', method: 'GET' });
      await slowArrived;

      assert.ok(gw.child.kill('SIGTERM'));
      let refused = false;
      for (let attempt = 0; attempt < 200 && !refused; attempt++) {
        refused = await connectionRefused(gw.port);
        if (!refused) await delay(10);
      }
      assert.ok(refused, 'new connections should be refused once SIGTERM arrived');
      assert.equal(gw.child.exitCode, null, 'the process must wait for the request in flight');

      release();
      const res = await inFlight;
      assert.equal(res.statusCode, 200);
      const received = Buffer.from(await res.body.arrayBuffer());
      assert.equal(received.length, body.length);
      assert.equal(createHash('sha256').update(received).digest('hex'), createHash('sha256').update(body).digest('hex'));

      assert.equal(await gw.exited, 0, `exit code; stderr:\n${gw.stderr()}\nstdout:\n${gw.stdout()}`);
    } finally {
      await client.destroy();
    }
  });
});

describe('the gateway process refuses a bad configuration', () => {
  const started: GatewayProcess[] = [];
  after(async () => {
    await Promise.all(started.map((p) => p.stop()));
  });

  async function exitOf(routes: unknown, env: Record<string, string | undefined>): Promise<{ code: number | null; stderr: string; stdout: string }> {
    const proc = await startGatewayProcess(routes, env);
    started.push(proc);
    const code = await proc.exited;
    return { code, stderr: proc.stderr(), stdout: proc.stdout() };
  }

  it('exits 1 naming the field path of an invalid routes file', { timeout: 15_000 }, async () => {
    const { code, stderr } = await exitOf(
      {
        services: { backend: { instances: ['http://127.0.0.1:9'] } },
        routes: [
          { name: 'ok', path: '/ok', service: 'backend' },
          { name: 'chat', path: '/chat', service: 'chat' },
        ],
      },
      {},
    );
    assert.equal(code, 1);
    assert.match(stderr, /routes\[1\]\.service: unknown service "chat"/);
    assert.doesNotMatch(stderr, /\n\s+at /, 'a configuration error is a message, not a stack trace');
  });

  const REDIS_PASSWORD = 'redis-pass-canary-5d41402a';
  const redisUrl = `redis://:${REDIS_PASSWORD}@127.0.0.1:6399`;

  it('exits 1 naming JWT_SECRET when it is missing, printing no secret', { timeout: 15_000 }, async () => {
    const { code, stderr, stdout } = await exitOf({ services: { b: { instances: ['http://127.0.0.1:9'] } }, routes: [{ name: 'ok', path: '/ok', service: 'b' }] }, {
      JWT_SECRET: undefined,
      REDIS_URL: redisUrl,
    });
    assert.equal(code, 1);
    assert.match(stderr, /JWT_SECRET/);
    assert.ok(!(stderr + stdout).includes(REDIS_PASSWORD), `a secret was printed:\n${stderr}${stdout}`);
  });

  it('exits 1 naming JWT_SECRET when it is too short, without echoing its value', { timeout: 15_000 }, async () => {
    const secret = 'jwt-canary-31-bytes-long-000000';
    const { code, stderr, stdout } = await exitOf({ services: { b: { instances: ['http://127.0.0.1:9'] } }, routes: [{ name: 'ok', path: '/ok', service: 'b' }] }, {
      JWT_SECRET: secret,
      REDIS_URL: redisUrl,
    });
    assert.equal(code, 1);
    assert.match(stderr, /JWT_SECRET/);
    assert.ok(!(stderr + stdout).includes(secret), `the secret was printed:\n${stderr}${stdout}`);
    assert.ok(!(stderr + stdout).includes(REDIS_PASSWORD), `a secret was printed:\n${stderr}${stdout}`);
  });
});
