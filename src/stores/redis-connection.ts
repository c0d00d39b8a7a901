import { askOnce, targetOf, type RespTarget } from './resp-pipe.js';

export interface HostPort {
  host: string;
  port: number;
}

/** How the gateway reaches Redis: one server by URL, or the primary a set of sentinels names. */
export type RedisConnection =
  | { readonly kind: 'url'; readonly url: string; readonly ca: Buffer | undefined }
  | { readonly kind: 'sentinel'; readonly sentinels: readonly HostPort[]; readonly name: string; readonly password: string | null };

/** From the environment (load.ts has checked that at most one of the two is set); null: none. */
export function redisConnectionOf(
  env: { REDIS_URL?: string; REDIS_SENTINELS?: string[]; REDIS_SENTINEL_NAME?: string; REDIS_PASSWORD?: string },
  ca: Buffer | undefined,
): RedisConnection | null {
  if (env.REDIS_URL !== undefined) return { kind: 'url', url: env.REDIS_URL, ca };
  if (env.REDIS_SENTINELS === undefined) return null;
  return {
    kind: 'sentinel',
    sentinels: env.REDIS_SENTINELS.map((hp) => {
      const at = hp.lastIndexOf(':');
      return { host: hp.slice(0, at), port: Number(hp.slice(at + 1)) };
    }),
    name: env.REDIS_SENTINEL_NAME!,
    password: env.REDIS_PASSWORD ?? null,
  };
}

/**
 * Where the request path's connection goes: the URL's server, or the primary the sentinels name
 * now (asked in turn, the first answer wins), looked up again before every connection.
 */
export function pipeTarget(c: RedisConnection, timeoutMs: number): RespTarget | (() => Promise<RespTarget>) {
  if (c.kind === 'url') return targetOf(c.url, c.ca);
  return async () => {
    const problems: string[] = [];
    for (const s of c.sentinels) {
      try {
        const reply = await askOnce(s.host, s.port, ['SENTINEL', 'get-master-addr-by-name', c.name], timeoutMs);
        if (Array.isArray(reply) && typeof reply[0] === 'string' && reply[1] !== undefined) {
          return { host: reply[0], port: Number(reply[1]), tls: null, username: null, password: c.password, db: 0 };
        }
        problems.push(`${s.host}:${s.port} knows no primary named "${c.name}"`);
      } catch (err) {
        problems.push(`${s.host}:${s.port}: ${(err as Error).message}`);
      }
    }
    throw new Error(problems.join('; '));
  };
}
