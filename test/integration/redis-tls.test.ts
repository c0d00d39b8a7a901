import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Redis } from 'ioredis';
import { request } from 'undici';
import { routesFor, startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { expectProblem, read } from '../helpers/http.js';
import { loopbackCertificate, startRedis, type TestRedis } from '../helpers/redis.js';
import { signToken } from '../helpers/tokens.js';
import { startUpstream, type TestUpstream } from '../helpers/upstream.js';

/**
 * TLS to Redis: a rediss:// URL whose server certificate is signed by REDIS_CA_FILE. A PHI route
 * answers only while the revocation list is reachable (it fails closed), so its 200 shows that the
 * request path's own connection spoke TLS to Redis; without the CA the same request is refused.
 */
describe('REDIS_URL=rediss:// with REDIS_CA_FILE', () => {
  let dir: string;
  let caFile: string;
  let redis: TestRedis;
  let upstream: TestUpstream;
  const gateways: TestGateway[] = [];
  // One request a minute: the GCRA key then lives a minute, long enough to be looked at.
  const routes = (url: string) => routesFor(url, [{ name: 'records', prefix: '/records', auth: 'required', phi: true, rateLimit: { perMinute: 1 } }]);

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'gw-redis-tls-'));
    const { certFile, keyFile } = await loopbackCertificate(dir);
    caFile = certFile;
    // TLS only: the plain port is off, so nothing can reach this Redis without TLS.
    redis = await startRedis(['--port', '0', '--tls-port', '{port}', '--tls-cert-file', caFile, '--tls-key-file', keyFile, '--tls-auth-clients', 'no']);
    upstream = await startUpstream();
  });
  after(async () => {
    for (const gw of gateways) await gw.close();
    await upstream.close();
    await redis.stop();
    await rm(dir, { recursive: true, force: true });
  });

  it('checks the server against the CA bundle: PHI requests pass and count in Redis', async () => {
    const gw = await startTestGateway(routes(upstream.url), { REDIS_URL: `rediss://127.0.0.1:${redis.port}`, REDIS_CA_FILE: caFile });
    gateways.push(gw);
    const token = await signToken({ sub: 'tls-user' });
    const res = await read(request(`${gw.url}/records/1`, { headers: { authorization: `Bearer ${token}` } }));
    assert.equal(res.statusCode, 200, res.text);
    expectProblem(await read(request(`${gw.url}/records/2`, { headers: { authorization: `Bearer ${token}` } })), 429, 'GW_RATE_LIMITED');
    const inspect = new Redis(`rediss://127.0.0.1:${redis.port}`, { tls: { ca: await readFile(caFile) }, maxRetriesPerRequest: 1 });
    try {
      assert.deepEqual(await inspect.keys('rate_limit:*'), ['rate_limit:{tls-user}:records'], 'the request was counted in Redis, over TLS');
    } finally {
      inspect.disconnect();
    }
  });

  it('without the CA the server is not trusted: the PHI route fails closed', async () => {
    const gw = await startTestGateway(routes(upstream.url), { REDIS_URL: `rediss://127.0.0.1:${redis.port}` });
    gateways.push(gw);
    const token = await signToken({ sub: 'tls-user-2' });
    const res = await read(request(`${gw.url}/records/1`, { headers: { authorization: `Bearer ${token}` } }));
    expectProblem(res, 503, 'GW_AUTH_UNAVAILABLE');
  });

  it('a CA bundle with a plain redis:// URL, or one that cannot be read, stops the start naming REDIS_CA_FILE', async () => {
    await assert.rejects(startTestGateway(routes(upstream.url), { REDIS_URL: `redis://127.0.0.1:${redis.port}`, REDIS_CA_FILE: caFile }), /REDIS_CA_FILE: is set but REDIS_URL is not a rediss:\/\/ URL/);
    await assert.rejects(
      startTestGateway(routes(upstream.url), { REDIS_URL: `rediss://127.0.0.1:${redis.port}`, REDIS_CA_FILE: join(dir, 'missing.crt') }),
      /REDIS_CA_FILE: cannot read ".*missing\.crt" \(ENOENT\)/,
    );
  });
});
