// scratch: RSS and heap of the deployed gateway under wrk, second by second
import { mkdtemp, chmod } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { startNginx, upstreamConf } from './nginx.js';
import { startRedis } from './redis.js';
import { startGateway, signToken } from './gateway.js';
import { freePort, stopAll, which } from './procs.js';
import { rssMb } from './cpu.js';
import { runWrk } from './wrk.js';
const dir = await mkdtemp(join(tmpdir(), 'memw-'));
await chmod(dir, 0o755);
const up = await freePort();
await startNginx(which('nginx')!, dir, 'upstream', upstreamConf(dir, up), '0', `http://127.0.0.1:${up}/`);
const redis = await startRedis(which('redis-server')!, '0');
const secret = randomBytes(32).toString('hex');
const extra = (process.env.NODE_ARGS ?? '').split(' ').filter(Boolean);
const gw = await startGateway(process.cwd(), dir, up, secret, { cpu: '1', name: 'gw', redisUrl: `redis://127.0.0.1:${redis.port}`, audit: process.env.AUDIT !== 'off', nodeArgs: extra });
const token = await signToken(secret);
const pid = gw.child.pid!;
console.log('idle RSS', rssMb([pid])?.toFixed(1));
const path = process.env.PATHX ?? '/records';
for (let round = 0; round < 3; round++) {
  const timer = setInterval(() => process.stdout.write(`${rssMb([pid])?.toFixed(0)} `), 1000);
  const r = await runWrk(`http://127.0.0.1:${gw.port}${path}`, { connections: 50, seconds: 8, threads: 1, cpu: '0', headers: [`Authorization: Bearer ${token}`] });
  clearInterval(timer);
  console.log(`\nround ${round}: ${r.rps.toFixed(0)} req/s, RSS now ${rssMb([pid])?.toFixed(1)}`);
}
await stopAll();
