import type { ChildProcess } from 'node:child_process';
import { closeSync, openSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { SignJWT } from 'jose';
import { parseAllDocuments } from 'yaml';
import { freePort, start, waitFor200 } from './procs.js';

/**
 * Every route is rate limited. The limiter stays in the path, so its cost is measured, but with
 * the largest budget the schema allows (a burst of 1M, then ~16.7k req/s) a single wrk client
 * does not trip it; if it ever does, the run fails on the 429s.
 */
const RATE_LIMIT = 1_000_000;

export interface Gateway {
  child: ChildProcess;
  port: number;
  /** The gateway's stdout: its access log. */
  log: string;
}

/**
 * The node flags the gateway is deployed with (NODE_OPTIONS of the Deployment in
 * `deploy/kubernetes/deployment.yaml`, which the Dockerfile repeats): the benchmark measures the
 * gateway as it runs in production. Read from the measured build's own checkout.
 */
export async function deployedNodeOptions(root: string): Promise<string> {
  const text = await readFile(join(root, 'deploy', 'kubernetes', 'deployment.yaml'), 'utf8').catch(() => '');
  for (const doc of parseAllDocuments(text)) {
    const d = doc.toJS() as { kind?: string; spec?: { template?: { spec?: { containers?: Array<{ env?: Array<{ name: string; value?: string }> }> } } } } | null;
    if (d?.kind !== 'Deployment') continue;
    const value = d.spec?.template?.spec?.containers?.[0]?.env?.find((e) => e.name === 'NODE_OPTIONS')?.value;
    if (value !== undefined) return value;
  }
  return '';
}

export interface GatewayOptions {
  /** A CPU list for taskset, or null. */
  cpu: string | null;
  /** Names the routes file, logs and spool in the run's dir. */
  name: string;
  nodeArgs?: string[];
  /** Revocations, sessions and rate limits in this Redis (one script call per request). */
  redisUrl?: string | null;
  /** Or in this Redis Cluster (`host:port,...`). */
  redisClusterNodes?: string | null;
  /** The audit trail: spooled on disk with fdatasync, delivered in batches to the stand-in. */
  audit?: boolean;
}

/**
 * The compiled gateway (`node dist/src/main.js` in root) with a routes file of three routes to
 * the upstream, all rewritten to `/`: `/plain` (public), `/authed` (a valid token with the role
 * health_provider or admin) and `/records` (the same, and `phi: true`: fail-closed on Redis and
 * on the audit spool, as a PHI route is deployed).
 */
export async function startGateway(root: string, dir: string, upstreamPort: number, secret: string, o: GatewayOptions): Promise<Gateway> {
  const port = await freePort();
  const { name } = o;
  const routes = join(dir, `${name}.routes.yaml`);
  await writeFile(
    routes,
    `services:
  bench: { instances: ["http://127.0.0.1:${upstreamPort}"] }
routes:
  - { name: plain, prefix: /plain, service: bench, auth: public, rewrite: /, rateLimit: { perMinute: ${RATE_LIMIT} } }
  - { name: authed, prefix: /authed, service: bench, auth: required, roles: [health_provider, admin], rewrite: /, rateLimit: { perMinute: ${RATE_LIMIT} } }
  - { name: records, prefix: /records, service: bench, auth: required, roles: [health_provider, admin], phi: true, rewrite: /, rateLimit: { perMinute: ${RATE_LIMIT} } }
`,
  );
  const log = join(dir, `${name}.access.log`);
  // O_APPEND, so the file can be truncated between runs while the gateway keeps writing.
  const out = openSync(log, 'a');
  const stderrFile = join(dir, `${name}.stderr.log`);
  const err = openSync(stderrFile, 'a');
  const child = start(process.execPath, [...(o.nodeArgs ?? []), 'dist/src/main.js'], {
    cpu: o.cpu,
    cwd: root,
    // Only what the gateway needs: a stray variable in the caller's shell must not change the setup.
    env: {
      PATH: process.env.PATH,
      NODE_OPTIONS: await deployedNodeOptions(root),
      PORT: String(port),
      HOST: '127.0.0.1',
      JWT_SECRET: secret,
      ROUTES_FILE: routes,
      LOG_LEVEL: 'INFO',
      AUTH_SERVICE_URL: 'http://127.0.0.1:9',
      // The audit stand-in is the upstream nginx: it answers 200 to the audit service's path.
      AUDIT_SERVICE_URL: `http://127.0.0.1:${upstreamPort}`,
      AUDIT_SPOOL_DIR: join(dir, `${name}.audit-spool`),
      AUDIT_ENABLED: o.audit === true ? 'true' : 'false',
      ...(o.redisUrl ? { REDIS_URL: o.redisUrl } : undefined),
      ...(o.redisClusterNodes ? { REDIS_CLUSTER_NODES: o.redisClusterNodes } : undefined),
    },
    stdout: out,
    stderr: err,
  });
  closeSync(out);
  closeSync(err);
  try {
    await waitFor200(`http://127.0.0.1:${port}/health/live`, child, 'the gateway');
  } catch (e) {
    const stderr = await readFile(stderrFile, 'utf8').catch(() => '');
    throw new Error(`${(e as Error).message}\n${stderr}`);
  }
  return { child, port, log };
}

/** An HS256 bearer token the gateway accepts: signed with its JWT_SECRET, with a known role. */
export function signToken(secret: string, id = 'bench-token', subject = 'bench-user'): Promise<string> {
  const now = Math.floor(Date.now() / 1000);
  return new SignJWT({ role: 'health_provider' })
    .setProtectedHeader({ alg: 'HS256', typ: 'JWT' })
    .setSubject(subject)
    .setJti(id)
    .setIssuedAt(now)
    // Under the gateway's 2 h lifetime cap, and longer than any sensible run.
    .setExpirationTime(now + 7_000)
    .sign(new TextEncoder().encode(secret));
}

/**
 * A wrk script that sends `count` different tokens in turn. Once `count` exceeds the gateway's
 * verified-token cache, a cyclic order means no request finds its token cached: every one pays
 * for a full signature check, as the first request of each session does.
 */
export async function tokenRotationScript(dir: string, secret: string, count: number): Promise<string> {
  const tokens = await Promise.all(Array.from({ length: count }, (_, i) => signToken(secret, `bench-token-${i}`)));
  const file = join(dir, 'rotate-tokens.lua');
  await writeFile(
    file,
    `local tokens = {\n${tokens.map((t) => `"Bearer ${t}",`).join('\n')}\n}
local i = 0
request = function()
  i = i % #tokens + 1
  return wrk.format(nil, nil, { ["Authorization"] = tokens[i] })
end
`,
  );
  return file;
}
