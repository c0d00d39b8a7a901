import type { ChildProcess } from 'node:child_process';
import { createConnection } from 'node:net';
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

function answersPing(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = createConnection({ port, host: '127.0.0.1' });
    socket.once('error', () => resolve(false));
    socket.once('connect', () => socket.write('PING\r\n'));
    socket.once('data', (d) => {
      socket.destroy();
      resolve(d.toString().startsWith('+PONG'));
    });
  });
}
