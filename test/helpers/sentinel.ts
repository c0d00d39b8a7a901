import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { askOnce } from '../../src/stores/resp-pipe.js';
import { until } from './poll.js';
import { freePort } from './ports.js';
import { startRedis, type TestRedis } from './redis.js';

export const SENTINEL_NAME = 'gw-primary';

export interface TestSentinels {
  primary: TestRedis;
  replica: TestRedis;
  /** `host:port,...` for REDIS_SENTINELS. */
  list: string;
  /** The port of the primary the sentinels name now. */
  primaryPort(): Promise<number>;
  stop(): Promise<void>;
}

/**
 * A primary, one replica and three sentinels (quorum 2) on loopback, ready to fail over: every
 * sentinel knows the replica and the two other sentinels. The primary is declared down after
 * 1 s without an answer.
 */
export async function startSentinels(): Promise<TestSentinels> {
  const dir = await mkdtemp(join(tmpdir(), 'gw-sentinel-'));
  const primary = await startRedis();
  const replica = await startRedis(['--replicaof', '127.0.0.1', String(primary.port)]);
  const ports = [await freePort(), await freePort(), await freePort()];
  const children: ChildProcess[] = [];
  for (const port of ports) {
    const conf = join(dir, `sentinel-${port}.conf`);
    await writeFile(
      conf,
      [`port ${port}`, 'bind 127.0.0.1', `dir ${dir}`, `sentinel monitor ${SENTINEL_NAME} 127.0.0.1 ${primary.port} 2`, `sentinel down-after-milliseconds ${SENTINEL_NAME} 1000`, `sentinel failover-timeout ${SENTINEL_NAME} 5000`, ''].join('\n'),
    );
    children.push(spawn('redis-server', [conf, '--sentinel'], { stdio: 'ignore' }));
  }
  const ask = (port: number, ...args: string[]) => askOnce('127.0.0.1', port, ['SENTINEL', ...args], 1_000);
  // Ready to fail over: each sentinel sees the replica and both other sentinels.
  await until('sentinels that know the replica and each other', 30_000, async () => {
    for (const port of ports) {
      try {
        const replicas = (await ask(port, 'replicas', SENTINEL_NAME)) as unknown[];
        const others = (await ask(port, 'sentinels', SENTINEL_NAME)) as unknown[];
        if (replicas.length < 1 || others.length < 2) return undefined;
      } catch {
        return undefined;
      }
    }
    return true;
  }, 200);
  return {
    primary,
    replica,
    list: ports.map((p) => `127.0.0.1:${p}`).join(','),
    async primaryPort() {
      const reply = (await ask(ports[0]!, 'get-master-addr-by-name', SENTINEL_NAME)) as string[];
      return Number(reply[1]);
    },
    async stop() {
      await Promise.all(
        children.map(async (c) => {
          if (c.exitCode !== null || c.signalCode !== null) return;
          const gone = once(c, 'exit');
          c.kill('SIGKILL');
          await gone;
        }),
      );
      await primary.stop();
      await replica.stop();
      await rm(dir, { recursive: true, force: true });
    },
  };
}
