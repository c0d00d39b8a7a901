import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { routesFor, startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { expectProblem, send } from '../helpers/http.js';
import { until } from '../helpers/poll.js';
import { startCluster, type TestCluster } from '../helpers/redis-cluster.js';
import { loopbackCertificate } from '../helpers/redis.js';
import { signToken } from '../helpers/tokens.js';
import { startUpstream, type TestUpstream } from '../helpers/upstream.js';

/**
 * A Redis Cluster that speaks TLS only (clients and its own bus) and asks for a password:
 * REDIS_TLS with REDIS_CA_FILE and REDIS_PASSWORD. A PHI route answers only while the shared
 * store does (it fails closed), so its 200 shows that the request path reached the primaries over
 * TLS with the password; without either, the same request is refused.
 */
const PASSWORD = 'cluster-secret-of-the-test';

describe('REDIS_CLUSTER_NODES with REDIS_TLS, REDIS_CA_FILE and REDIS_PASSWORD', () => {
  let dir: string;
  let caFile: string;
  let cluster: TestCluster;
  let upstream: TestUpstream;
  const gateways: TestGateway[] = [];
  const routes = (url: string) => routesFor(url, [{ name: 'records', prefix: '/records', auth: 'required', phi: true, rateLimit: { perMinute: 1 } }]);

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'gw-cluster-tls-'));
    const { certFile, keyFile } = await loopbackCertificate(dir);
    caFile = certFile;
    const ca = await readFile(caFile);
    cluster = await startCluster({
      serverArgs: ['--port', '0', '--tls-port', '{port}', '--tls-cluster', 'yes', '--tls-cert-file', caFile, '--tls-key-file', keyFile, '--tls-ca-cert-file', caFile, '--tls-auth-clients', 'no', '--requirepass', PASSWORD, '--masterauth', PASSWORD],
      cliArgs: ['--tls', '--cacert', caFile, '-a', PASSWORD, '--no-auth-warning'],
      clientOptions: { tls: { ca }, password: PASSWORD },
    });
    upstream = await startUpstream();
  });
  after(async () => {
    for (const gw of gateways) await gw.close();
    await upstream?.close();
    await cluster?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  const env = (extra: Record<string, string>) => ({ REDIS_CLUSTER_NODES: cluster.list, HEALTH_CACHE_MS: '0', ...extra });

  it('reaches every primary over TLS with the password: PHI requests pass and count on the primary of the user', async () => {
    const gw = await startTestGateway(routes(upstream.url), env({ REDIS_TLS: 'true', REDIS_CA_FILE: caFile, REDIS_PASSWORD: PASSWORD }));
    gateways.push(gw);
    // Connected to every primary before the first request (a busy machine takes its time).
    await until('the gateway connected to the three primaries', 15_000, async () => {
      const health = JSON.parse((await send(`${gw.url}/health`)).text) as { redis?: { state: string; primaries: number } };
      return health.redis?.state === 'connected' && health.redis.primaries === 3 ? true : undefined;
    }, 50);
    for (const user of ['tls-a', 'tls-b', 'tls-c', 'tls-d']) {
      const token = await signToken({ sub: user });
      const res = await send(`${gw.url}/records/1`, { token });
      assert.equal(res.statusCode, 200, res.text);
      expectProblem(await send(`${gw.url}/records/2`, { token }), 429, 'GW_RATE_LIMITED');
      const key = `rate_limit:{${user}}:records`;
      assert.equal(await (await cluster.ownerOf(key)).client.exists(key), 1, `${key} counted over TLS`);
    }
    assert.ok(!gw.logs.some((l) => JSON.stringify(l).includes(PASSWORD)), 'the password is never logged');
  });

  it('without the CA, or without the password, the PHI route fails closed', async () => {
    const cases: Array<Record<string, string>> = [
      { REDIS_TLS: 'true', REDIS_PASSWORD: PASSWORD },
      { REDIS_TLS: 'true', REDIS_CA_FILE: caFile },
    ];
    for (const extra of cases) {
      const gw = await startTestGateway(routes(upstream.url), env(extra));
      gateways.push(gw);
      expectProblem(await send(`${gw.url}/records/1`, { token: await signToken({ sub: 'tls-refused' }) }), 503, 'GW_AUTH_UNAVAILABLE');
    }
  });

  it('REDIS_TLS with REDIS_URL, or a CA bundle without TLS, stops the start naming the variable', async () => {
    await assert.rejects(startTestGateway(routes(upstream.url), { REDIS_URL: 'redis://127.0.0.1:1', REDIS_TLS: 'true' }), /REDIS_TLS: goes with REDIS_SENTINELS or REDIS_CLUSTER_NODES/);
    await assert.rejects(startTestGateway(routes(upstream.url), env({ REDIS_CA_FILE: caFile })), /REDIS_CA_FILE: is set but REDIS_TLS is not true/);
    await assert.rejects(startTestGateway(routes(upstream.url), { REDIS_URL: 'redis://127.0.0.1:1', REDIS_CLUSTER_NODES: '127.0.0.1:2' }), /REDIS_CLUSTER_NODES: is set together with REDIS_URL/);
  });
});
