import type { Redis } from 'ioredis';
import type { RateLimitDecision, RateLimitStore } from './rate-limit-store.js';

/**
 * GCRA as one Lua script: read, decide and write are atomic, one round trip per request. The
 * clock is Redis's own (TIME), so replicas with drifting clocks still share one timeline.
 * Mirrors `gcra()` in rate-limit-store.ts.
 */
const SCRIPT = `
local interval = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local tat = tonumber(redis.call('GET', KEYS[1]))
if tat == nil or tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - window
if now < allow_at then
  return {0, 0, math.ceil(tat - now), math.ceil(allow_at - now)}
end
redis.call('SET', KEYS[1], string.format('%.3f', new_tat), 'PX', math.max(1, math.ceil(new_tat - now)))
return {1, math.floor((window - (new_tat - now)) / interval), math.ceil(new_tat - now), 0}
`;

type GcraCommand = (key: string, interval: string, window: string) => Promise<[number, number, number, number]>;

export class RedisRateLimitStore implements RateLimitStore {
  private readonly command: GcraCommand;

  constructor(redis: Redis) {
    redis.defineCommand('gatewayGcra', { numberOfKeys: 1, lua: SCRIPT });
    const bound = (redis as unknown as { gatewayGcra: GcraCommand }).gatewayGcra.bind(redis);
    this.command = bound;
  }

  async consume(key: string, limit: number, windowMs: number): Promise<RateLimitDecision> {
    const [allowed, remaining, resetMs, retryAfterMs] = await this.command(key, String(windowMs / limit), String(windowMs));
    return { allowed: allowed === 1, limit, remaining, resetMs, retryAfterMs };
  }
}
