import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import type { Redis } from 'ioredis';
import { decodeJwt } from 'jose';
import { routesFor, startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { expectProblem, send } from '../helpers/http.js';
import { until, untilDatabase } from '../helpers/poll.js';
import { startCluster, type ClusterNode, type TestCluster } from '../helpers/redis-cluster.js';
import { hashSlot } from '../../src/stores/hash-slot.js';
import { signToken } from '../helpers/tokens.js';
import { startUpstream, type TestUpstream } from '../helpers/upstream.js';

/**
 * Redis Cluster with three primaries, two gateways that are told of one node alone and learn the
 * rest. Every key of one request carries the user's hash tag, so one script on one primary
 * answers it; limits and revocations hold across the gateways; a slot moved between primaries
 * under traffic (MOVED, ASK, TRYAGAIN) costs no request.
 */

const REVOCATIONS = '/api/gateway/revocations';
const LIMIT = 10;

interface Seen {
  command: string;
  args: string[];
  source: string;
}

describe('REDIS_CLUSTER_NODES: three primaries', () => {
  let cluster: TestCluster;
  let upstream: TestUpstream;
  let a: TestGateway;
  let b: TestGateway;
  let admin: string;
  let user = 0;
  const fresh = () => `cluster-user-${process.pid}-${++user}`;

  before(async () => {
    cluster = await startCluster();
    upstream = await startUpstream();
    const routes = routesFor(upstream.url, [
      { name: 'records', prefix: '/api/records', rateLimit: { perMinute: LIMIT } },
      // PHI: a request the shared store cannot answer is refused (503), never let through; so any
      // store failure during a resharding shows.
      { name: 'chart', prefix: '/api/chart', phi: true, rateLimit: { perMinute: 1_000 } },
      { name: 'revocations', path: REVOCATIONS, methods: ['POST'], action: 'revoke', permission: 'tokens:revoke', service: undefined },
    ]);
    // One node named: the others are learned from it.
    const env = { REDIS_CLUSTER_NODES: `127.0.0.1:${cluster.nodes[0]!.port}`, REDIS_COMMAND_TIMEOUT_MS: '1000', HEALTH_CACHE_MS: '0' };
    a = await startTestGateway(routes, env);
    b = await startTestGateway(routes, env);
    await untilDatabase(a.url, 'healthy');
    await untilDatabase(b.url, 'healthy');
    admin = await signToken({ sub: fresh(), role: 'admin' });
  });
  after(async () => {
    await a?.close();
    await b?.close();
    await upstream?.close();
    await cluster?.stop();
  });

  /** Every command the three nodes ran while `work` did, by node (MONITOR, closed by a marker on each). */
  async function commandsDuring(work: () => Promise<void>): Promise<Map<ClusterNode, Seen[]>> {
    const feeds = await Promise.all(
      cluster.nodes.map(async (n) => {
        const monitor = await n.client.monitor();
        const seen: Seen[] = [];
        monitor.on('monitor', (_time: string, args: string[], source: string) => seen.push({ command: args[0]!.toLowerCase(), args: args.slice(1), source }));
        return { n, monitor, seen };
      }),
    );
    try {
      await work();
      const out = new Map<ClusterNode, Seen[]>();
      for (const { n, seen } of feeds) {
        const marker = `end-of-window-${randomUUID()}`;
        await n.client.echo(marker);
        const end = await until('the MONITOR feed reaching the end marker', 2_000, async () => {
          const i = seen.findIndex((c) => c.command === 'echo' && c.args[0] === marker);
          return i === -1 ? undefined : i;
        }, 5);
        out.set(n, seen.slice(0, end));
      }
      return out;
    } finally {
      for (const { monitor } of feeds) monitor.disconnect();
    }
  }

  async function revoke(body: Record<string, unknown>): Promise<void> {
    await until('the revocation accepted', 10_000, async () => {
      const res = await send(`${a.url}${REVOCATIONS}`, { token: admin, json: body });
      if (res.statusCode === 503) return undefined;
      assert.equal(res.statusCode, 200, res.text);
      return true;
    }, 50);
  }

  it('both gateways learn every primary from one node, and report redis healthy', async () => {
    for (const gw of [a, b]) {
      const health = await send(`${gw.url}/health`);
      assert.equal(health.statusCode, 200, health.text);
      const body = JSON.parse(health.text) as { dependencies: { database: string }; redis: unknown };
      assert.equal(body.dependencies.database, 'healthy');
      assert.deepEqual(body.redis, { mode: 'cluster', state: 'connected', primaries: 3, announcements: 'subscribed' }, health.text);
    }
  });

  it(`a user's requests across both gateways admit exactly ${LIMIT}`, async () => {
    const token = await signToken({ sub: fresh() });
    const statuses: number[] = [];
    for (let i = 0; i < LIMIT; i++) {
      const pair = await Promise.all([a, b].map((gw) => send(`${gw.url}/api/records/${i}`, { token })));
      statuses.push(...pair.map((r) => r.statusCode));
    }
    assert.equal(statuses.filter((s) => s === 200).length, LIMIT, `statuses: ${statuses.join(' ')}`);
    assert.equal(statuses.filter((s) => s === 429).length, LIMIT, `statuses: ${statuses.join(' ')}`);
  });

  it('the keys of many users spread over all three primaries, each on the primary of its hash tag', async () => {
    const users = Array.from({ length: 30 }, fresh);
    for (const [i, u] of users.entries()) {
      const res = await send(`${(i % 2 === 0 ? a : b).url}/api/records/x`, { token: await signToken({ sub: u }) });
      assert.equal(res.statusCode, 200, res.text);
    }
    const perNode = new Map<ClusterNode, number>();
    for (const u of users) {
      const key = `rate_limit:{${u}}:records`;
      const owner = await cluster.ownerOf(key);
      assert.equal(await owner.client.exists(key), 1, `${key} on the primary of its slot (${owner.port})`);
      perNode.set(owner, (perNode.get(owner) ?? 0) + 1);
    }
    assert.equal(perNode.size, 3, `users per primary: ${[...perNode.values()].join(', ')}`);
  });

  it('one script call per request, on the user\'s primary alone (MONITOR on every node)', async () => {
    const u = fresh();
    const token = await signToken({ sub: u });
    // The first call of a script on a connection loads it (EVAL); every later one is EVALSHA.
    for (const gw of [a, b]) assert.equal((await send(`${gw.url}/api/records/warm-up`, { token })).statusCode, 200);
    const owner = await cluster.ownerOf(`rate_limit:{${u}}`);
    const N = 4;
    const seen = await commandsDuring(async () => {
      for (let i = 0; i < N; i++) assert.equal((await send(`${(i % 2 === 0 ? a : b).url}/api/records/${i}`, { token })).statusCode, 200);
    });
    const mentions = (c: Seen) => c.args.some((arg) => arg.includes(`{${u}}`));
    for (const [node, commands] of seen) {
      const sent = commands.filter((c) => c.source !== 'lua' && mentions(c));
      if (node === owner) {
        assert.deepEqual(sent.map((c) => c.command), Array<string>(N).fill('evalsha'), `sent to the owner: ${JSON.stringify(sent)}`);
        const counted = commands.filter((c) => c.source === 'lua' && c.command === 'set' && c.args[0] === `rate_limit:{${u}}:records`);
        assert.equal(counted.length, N, 'the limit is counted inside the script');
        const lookups = commands.filter((c) => c.source === 'lua' && c.args[0] === `revoked:user:{${u}}`);
        assert.equal(lookups.length, N, 'the revocation is read inside the same script');
      } else {
        assert.deepEqual(commands.filter(mentions), [], `nothing of this user on ${node.port}`);
      }
    }
  });

  it('a revocation by token and one by user are refused on both gateways within 1 s', async () => {
    const u = fresh();
    const one = await signToken({ sub: u });
    const other = await signToken({ sub: u });
    for (const gw of [a, b]) assert.equal((await send(`${gw.url}/api/records/before`, { token: one })).statusCode, 200);
    await revoke({ jti: decodeJwt(one).jti, user_id: u });
    for (const gw of [a, b]) {
      expectProblem(await until('the token refused', 1_000, async () => {
        const res = await send(`${gw.url}/api/chart/x`, { token: one });
        return res.statusCode === 401 ? res : undefined;
      }), 401, 'GW_AUTH_TOKEN_REVOKED');
      assert.equal((await send(`${gw.url}/api/chart/x`, { token: other })).statusCode, 200, 'the user\'s other token passes');
    }
    await revoke({ user_id: u });
    for (const gw of [a, b]) {
      await until('every token of the user refused', 1_000, async () => ((await send(`${gw.url}/api/chart/x`, { token: other })).statusCode === 401 ? true : undefined));
    }
    // Every replica's mirror (the fallback) heard both announcements, on whichever node they were made.
    const owner = await cluster.ownerOf(`revoked:user:{${u}}`);
    assert.equal(await owner.client.exists(`revoked:user:{${u}}`), 1);
    assert.equal(await owner.client.exists(`revoked:jti:{${u}}:${decodeJwt(one).jti}`), 1);
  });

  it('the slot of a busy user moves to another primary under load: no request fails, and the user\'s count moves with it', async () => {
    const u = fresh();
    const token = await signToken({ sub: u });
    const key = `rate_limit:{${u}}:chart`;
    assert.equal((await send(`${a.url}/api/chart/first`, { token })).statusCode, 200);
    const from = await cluster.ownerOf(key);
    const to = cluster.nodes.find((n) => n !== from)!;

    const statuses = new Map<number, number>();
    let running = true;
    let done = 0;
    const worker = async (gw: TestGateway) => {
      while (running) {
        const res = await send(`${gw.url}/api/chart/${randomUUID()}`, { token });
        statuses.set(res.statusCode, (statuses.get(res.statusCode) ?? 0) + 1);
        if (res.statusCode !== 200) assert.fail(`${res.statusCode} ${res.text}`);
        done++;
      }
    };
    const load = Promise.all([a, a, b, b].map(worker));
    const asked = await watchAsking(to.client);
    try {
      await until('traffic flowing', 5_000, async () => (done >= 20 ? true : undefined));
      await cluster.moveSlotOf(key, to, async () => {
        // Before the slot is handed over: the gateways have met the move (ASK to the new primary).
        await until('a request sent to the importing primary with ASKING', 5_000, async () => (asked.count > 0 ? true : undefined), 2);
      });
      const movedAt = done;
      await until('traffic served by the new primary', 5_000, async () => (done >= movedAt + 20 ? true : undefined));
    } finally {
      running = false;
      asked.stop();
      await load;
    }
    assert.deepEqual([...statuses.keys()], [200], `statuses: ${JSON.stringify(Object.fromEntries(statuses))}`);
    assert.equal(await cluster.ownerOf(key), to);
    assert.equal(await to.client.exists(key), 1, 'the count lives on the new primary');
    assert.equal(await from.client.call('CLUSTER', 'COUNTKEYSINSLOT', String(hashSlot(key))), 0, 'nothing of the slot is left on the old primary');
  });
});

/** Counts ASKING commands a node receives (MONITOR). */
async function watchAsking(client: Redis): Promise<{ count: number; stop(): void }> {
  const monitor = await client.monitor();
  const out = { count: 0, stop: () => monitor.disconnect() };
  monitor.on('monitor', (_time: string, args: string[]) => {
    if (args[0]?.toLowerCase() === 'asking') out.count++;
  });
  return out;
}
