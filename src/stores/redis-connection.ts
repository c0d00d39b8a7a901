import { isIP } from 'node:net';
import type { ConnectionOptions } from 'node:tls';
import { askOnce, targetOf, type RespTarget } from './resp-pipe.js';

export interface HostPort {
  host: string;
  port: number;
}

/**
 * How the gateway reaches Redis: one server by URL, the primary a set of sentinels names, or the
 * primaries of a Redis Cluster (found from some of its nodes).
 */
export type RedisConnection =
  | { readonly kind: 'url'; readonly url: string; readonly ca: Buffer | undefined }
  | { readonly kind: 'sentinel'; readonly sentinels: readonly HostPort[]; readonly name: string; readonly password: string | null; readonly tls: RedisTls | null }
  | { readonly kind: 'cluster'; readonly nodes: readonly HostPort[]; readonly password: string | null; readonly tls: RedisTls | null };

/** REDIS_TLS with its CA bundle (REDIS_CA_FILE; else the system's CAs). */
export interface RedisTls {
  readonly ca: Buffer | undefined;
}

interface RedisEnv {
  REDIS_URL?: string;
  REDIS_SENTINELS?: string[];
  REDIS_SENTINEL_NAME?: string;
  REDIS_CLUSTER_NODES?: string[];
  REDIS_PASSWORD?: string;
  REDIS_TLS?: boolean;
}

/** From the environment (load.ts has checked that at most one way is set); null: none. */
export function redisConnectionOf(env: RedisEnv, ca: Buffer | undefined): RedisConnection | null {
  if (env.REDIS_URL !== undefined) return { kind: 'url', url: env.REDIS_URL, ca };
  const password = env.REDIS_PASSWORD ?? null;
  const tls = env.REDIS_TLS === true ? { ca } : null;
  if (env.REDIS_CLUSTER_NODES !== undefined) return { kind: 'cluster', nodes: env.REDIS_CLUSTER_NODES.map(hostPort), password, tls };
  if (env.REDIS_SENTINELS === undefined) return null;
  return { kind: 'sentinel', sentinels: env.REDIS_SENTINELS.map(hostPort), name: env.REDIS_SENTINEL_NAME!, password, tls };
}

function hostPort(hp: string): HostPort {
  const at = hp.lastIndexOf(':');
  return { host: hp.slice(0, at), port: Number(hp.slice(at + 1)) };
}

/** A server of a Sentinel or Cluster deployment, with the deployment's password and TLS. */
export function serverTarget(host: string, port: number, password: string | null, tls: RedisTls | null): RespTarget {
  return {
    host,
    port,
    // SNI carries host names only; an address is checked against the certificate's IP entries.
    tls: tls === null ? null : ({ ...(isIP(host) === 0 ? { servername: host } : {}), ...(tls.ca === undefined ? {} : { ca: tls.ca }) } satisfies ConnectionOptions),
    username: null,
    password,
    db: 0,
  };
}

/**
 * Where the request path's connection goes (one Redis or Sentinel; a cluster has a pipe per
 * primary, cluster-pipe.ts): the URL's server, or the primary the sentinels name now (asked in
 * turn, the first answer wins), looked up again before every connection.
 */
export function pipeTarget(c: Exclude<RedisConnection, { kind: 'cluster' }>, timeoutMs: number): RespTarget | (() => Promise<RespTarget>) {
  if (c.kind === 'url') return targetOf(c.url, c.ca);
  return async () => {
    const problems: string[] = [];
    for (const s of c.sentinels) {
      try {
        const reply = await askOnce(s.host, s.port, ['SENTINEL', 'get-master-addr-by-name', c.name], timeoutMs);
        if (Array.isArray(reply) && typeof reply[0] === 'string' && reply[1] !== undefined) return serverTarget(reply[0], Number(reply[1]), c.password, c.tls);
        problems.push(`${s.host}:${s.port} knows no primary named "${c.name}"`);
      } catch (err) {
        problems.push(`${s.host}:${s.port}: ${(err as Error).message}`);
      }
    }
    throw new Error(problems.join('; '));
  };
}
