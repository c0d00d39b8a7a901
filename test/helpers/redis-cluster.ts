import { execFile } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { Redis, type RedisOptions } from 'ioredis';
import { hashSlot } from '../../src/stores/hash-slot.js';
import { until } from './poll.js';
import { startRedis, type TestRedis } from './redis.js';

const run = promisify(execFile);

export interface ClusterNode extends TestRedis {
  /** The node's id in the cluster. */
  id: string;
  /** A client of the test's own on this node alone (no redirections followed). */
  client: Redis;
}

export interface TestCluster {
  nodes: ClusterNode[];
  /** `host:port,...` for REDIS_CLUSTER_NODES. */
  list: string;
  /** The primary that serves the key's hash slot now. */
  ownerOf(key: string): Promise<ClusterNode>;
  /**
   * Moves the key's slot to another primary the way `redis-cli --cluster reshard` does (IMPORTING,
   * MIGRATING, the keys moved in small batches, then the slot assigned), calling `between` after
   * each batch; resolves with the new owner.
   */
  moveSlotOf(key: string, to: ClusterNode, between?: () => Promise<void>): Promise<void>;
  stop(): Promise<void>;
}

export interface ClusterOptions {
  /** More arguments for every redis-server (TLS, a password). */
  serverArgs?: string[];
  /** More arguments for redis-cli (`--tls --cacert …`, `-a …`). */
  cliArgs?: string[];
  /** How the test's own clients connect (TLS, the password). */
  clientOptions?: RedisOptions;
}

/**
 * Three primaries of a Redis Cluster on loopback (no replicas), slots spread evenly by
 * `redis-cli --cluster create`; resolves once every node reports the cluster ok.
 */
export async function startCluster(o: ClusterOptions = {}): Promise<TestCluster> {
  const dir = await mkdtemp(join(tmpdir(), 'gw-cluster-'));
  const servers = await Promise.all(
    [0, 1, 2].map(() => startRedis(['--cluster-enabled', 'yes', '--cluster-config-file', join(dir, 'nodes-{port}.conf'), '--cluster-node-timeout', '1000', ...(o.serverArgs ?? [])])),
  );
  await run('redis-cli', ['--cluster', 'create', ...servers.map((s) => `127.0.0.1:${s.port}`), '--cluster-yes', ...(o.cliArgs ?? [])], { timeout: 30_000 });
  const nodes: ClusterNode[] = [];
  for (const s of servers) {
    const client = new Redis({ host: '127.0.0.1', port: s.port, maxRetriesPerRequest: 1, connectTimeout: 1_000, ...o.clientOptions });
    client.on('error', () => undefined);
    nodes.push({ ...s, id: (await client.call('CLUSTER', 'MYID')) as string, client });
  }
  await until('every node of the cluster reporting cluster_state:ok and all slots', 30_000, async () => {
    for (const n of nodes) {
      const info = (await n.client.call('CLUSTER', 'INFO')) as string;
      if (!info.includes('cluster_state:ok') || !info.includes('cluster_slots_ok:16384')) return undefined;
    }
    return true;
  }, 100);
  const ownerOfSlot = async (slot: number): Promise<ClusterNode> => {
    const ranges = (await nodes[0]!.client.call('CLUSTER', 'SLOTS')) as Array<[number, number, [string, number, string]]>;
    const range = ranges.find(([start, end]) => slot >= start && slot <= end);
    const owner = nodes.find((n) => n.port === range?.[2][1]);
    if (owner === undefined) throw new Error(`no node serves slot ${slot}`);
    return owner;
  };
  return {
    nodes,
    list: nodes.map((n) => `127.0.0.1:${n.port}`).join(','),
    ownerOf: (key) => ownerOfSlot(hashSlot(key)),
    async moveSlotOf(key, to, between = async () => undefined) {
      const slot = hashSlot(key);
      const from = await ownerOfSlot(slot);
      if (from === to) throw new Error(`slot ${slot} is already on ${to.port}`);
      await to.client.call('CLUSTER', 'SETSLOT', String(slot), 'IMPORTING', from.id);
      await from.client.call('CLUSTER', 'SETSLOT', String(slot), 'MIGRATING', to.id);
      for (;;) {
        const batch = (await from.client.call('CLUSTER', 'GETKEYSINSLOT', String(slot), '1')) as string[];
        if (batch.length === 0) break;
        await from.client.call('MIGRATE', '127.0.0.1', String(to.port), '', '0', '5000', 'KEYS', ...batch);
        await between();
      }
      await between();
      // As redis-cli does: the importing node first, then the source, then everyone else.
      await to.client.call('CLUSTER', 'SETSLOT', String(slot), 'NODE', to.id);
      await from.client.call('CLUSTER', 'SETSLOT', String(slot), 'NODE', to.id);
      for (const n of nodes) if (n !== to && n !== from) await n.client.call('CLUSTER', 'SETSLOT', String(slot), 'NODE', to.id);
    },
    async stop() {
      for (const n of nodes) n.client.disconnect();
      await Promise.all(nodes.map((n) => n.stop()));
      await rm(dir, { recursive: true, force: true });
    },
  };
}
