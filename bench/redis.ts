import { spawnSync, type ChildProcess } from 'node:child_process';
import { createConnection } from 'node:net';
import { join } from 'node:path';
import { freePort, start } from './procs.js';

/** A throw-away redis-server on loopback (no persistence), for the gateway's shared-store row. */
export async function startRedis(redisServer: string, cpu: string | null): Promise<{ child: ChildProcess; port: number }> {
  const port = await freePort();
  const child = start(redisServer, ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], { cpu });
  const deadline = Date.now() + 10_000;
  while (!(await answersPing(port))) {
    if (Date.now() > deadline) throw new Error(`redis-server did not answer on port ${port} within 10 s`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  return { child, port };
}

/**
 * Three redis-servers as the primaries of a Redis Cluster (slots spread evenly by
 * `redis-cli --cluster create`), for the deployed row on a cluster; resolves once all say ok.
 */
export async function startRedisCluster(redisServer: string, cpu: string | null, dir: string): Promise<{ children: ChildProcess[]; nodes: string }> {
  const ports = [await freePort(), await freePort(), await freePort()];
  const children = ports.map((port) =>
    start(redisServer, ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--cluster-enabled', 'yes', '--cluster-config-file', join(dir, `cluster-${port}.conf`)], { cpu }),
  );
  for (const port of ports) await untilAnswer(port, 'PING', (r) => r.startsWith('+PONG'));
  const created = spawnSync(join(redisServer, '..', 'redis-cli'), ['--cluster', 'create', ...ports.map((p) => `127.0.0.1:${p}`), '--cluster-yes'], { encoding: 'utf8', timeout: 30_000 });
  if (created.status !== 0) throw new Error(`redis-cli --cluster create failed: ${created.stderr || created.stdout}`);
  for (const port of ports) await untilAnswer(port, 'CLUSTER INFO', (r) => r.includes('cluster_state:ok'));
  return { children, nodes: ports.map((p) => `127.0.0.1:${p}`).join(',') };
}

async function untilAnswer(port: number, command: string, ok: (reply: string) => boolean): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (!ok(await ask(port, command))) {
    if (Date.now() > deadline) throw new Error(`redis-server on port ${port} did not answer ${command} as expected within 10 s`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

function answersPing(port: number): Promise<boolean> {
  return ask(port, 'PING').then((r) => r.startsWith('+PONG'));
}

/** One inline command; its first reply chunk, or '' when the server cannot be reached. */
function ask(port: number, command: string): Promise<string> {
  return new Promise((resolve) => {
    const socket = createConnection({ port, host: '127.0.0.1' });
    socket.once('error', () => resolve(''));
    socket.once('connect', () => socket.write(`${command}\r\n`));
    socket.once('data', (d) => {
      socket.destroy();
      resolve(d.toString());
    });
  });
}
