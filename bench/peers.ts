import { spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createConnection } from 'node:net';
import { join } from 'node:path';
import { exited, freePort, start } from './procs.js';

/** The proxies the gateway is measured beside; each is one file in bench/peers/. */
export const PEERS = {
  raw: { file: 'raw.mjs', label: 'Node ceiling: node:http + undici Pool, no features' },
  'fastify-proxy': { file: 'fastify-proxy.mjs', label: 'Fastify 5 + @fastify/http-proxy' },
  'fastify-assembly': { file: 'fastify-assembly.mjs', label: 'Fastify 5 + http-proxy + jwt + rate-limit (Redis)' },
} as const;

export type PeerName = keyof typeof PEERS;

export interface Peer {
  child: ChildProcess;
  port: number;
}

/**
 * bench/peers/ has its own package.json and lockfile: Fastify and its plugins are what the
 * gateway is compared with, never part of it. Installed on first use with `npm ci`.
 */
export function ensurePeers(root: string): void {
  const dir = join(root, 'bench', 'peers');
  if (existsSync(join(dir, 'node_modules', 'fastify')) && existsSync(join(dir, 'node_modules', '@fastify', 'rate-limit'))) return;
  console.log('installing the peer proxies (bench/peers: npm ci)');
  const r = spawnSync('npm', ['ci', '--no-audit', '--no-fund'], { cwd: dir, stdio: 'inherit' });
  if (r.status !== 0) throw new Error('npm ci in bench/peers failed');
}

export async function startPeer(root: string, name: PeerName, env: { upstream: string; secret: string; redisUrl: string }, cpu: string | null, nodeArgs: string[] = []): Promise<Peer> {
  const port = await freePort();
  const child = start(process.execPath, [...nodeArgs, join(root, 'bench', 'peers', PEERS[name].file)], {
    cpu,
    cwd: join(root, 'bench', 'peers'),
    env: { PATH: process.env.PATH, NODE_ENV: 'production', PORT: String(port), UPSTREAM: env.upstream, JWT_SECRET: env.secret, REDIS_URL: env.redisUrl },
    // A peer that fails says why on the benchmark's own stderr.
    stderr: 2,
  });
  await waitForListener(port, child, name);
  return { child, port };
}

/** Peers answer every path by proxying (or refusing without a token): an accepted connection is the sign of life. */
async function waitForListener(port: number, child: ChildProcess, what: string): Promise<void> {
  const deadline = Date.now() + 15_000;
  while (Date.now() < deadline) {
    if (exited(child)) throw new Error(`peer ${what} exited (code ${child.exitCode ?? child.signalCode}) before listening`);
    const open = await new Promise<boolean>((resolve) => {
      const s = createConnection({ port, host: '127.0.0.1' });
      s.once('connect', () => {
        s.destroy();
        resolve(true);
      });
      s.once('error', () => resolve(false));
    });
    if (open) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`peer ${what} did not listen on ${port} within 15 s`);
}
