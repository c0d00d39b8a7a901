import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { CompiledRoute } from '../../src/config/compile.js';
import { createLoggers } from '../../src/observability/logger.js';
import { Exchange } from '../../src/pipeline/exchange.js';
import { RateLimitStage } from '../../src/pipeline/rate-limit.js';
import { FailoverRateLimitStore } from '../../src/stores/failover-rate-limit.js';
import { MemoryRateLimitStore } from '../../src/stores/memory-rate-limit.js';
import type { RateLimitStore } from '../../src/stores/rate-limit-store.js';
import { LogCapture } from '../helpers/gateway.js';

/** Records the keys the stage asks for; admits everything. */
class RecordingStore implements RateLimitStore {
  readonly keys: string[] = [];
  consume(key: string, limit: number) {
    this.keys.push(key);
    return Promise.resolve({ allowed: true, limit, remaining: limit - 1, resetMs: 1, retryAfterMs: 0 });
  }
}

function route(name: string, ownKey: boolean): CompiledRoute {
  return { name, rateLimit: { perMinute: 10, ownKey, failClosed: false, policyName: name, policyHeader: '' } } as unknown as CompiledRoute;
}

function exchange(r: CompiledRoute, userId: string | null, ip = '10.0.0.1'): Exchange {
  const ex = new Exchange('id', 0, ip, false, ip);
  ex.route = r;
  if (userId !== null) ex.identity = { userId, role: 'resident', phiAccessLevel: 'self', tokenId: null, expiresAt: 0 };
  return ex;
}

describe('rate-limit keys', () => {
  const recording = new RecordingStore();
  const local = new MemoryRateLimitStore();
  const { log } = createLoggers('silent', new LogCapture());
  const stage = new RateLimitStage(new FailoverRateLimitStore(recording, local, log), log, () => undefined);

  it('uses the spec key rate_limit:{user_id}, a route part for own limits, and ip: for anonymous clients', async () => {
    recording.keys.length = 0;
    await stage.check(exchange(route('history', false), '7c9e6679-7425-40de-944b-e07fc1f90ae7'));
    await stage.check(exchange(route('reports', true), '7c9e6679-7425-40de-944b-e07fc1f90ae7'));
    await stage.check(exchange(route('history', false), null));
    assert.deepEqual(recording.keys, [
      'rate_limit:7c9e6679-7425-40de-944b-e07fc1f90ae7',
      'rate_limit:reports:7c9e6679-7425-40de-944b-e07fc1f90ae7',
      'rate_limit:ip:10.0.0.1',
    ]);
    local.close();
  });

  it('a user id cannot pose as another key: "reports:alice" and "ip:10.0.0.1" stay apart from them', async () => {
    recording.keys.length = 0;
    await stage.check(exchange(route('history', false), 'reports:alice'));
    await stage.check(exchange(route('history', false), 'ip:10.0.0.1'));
    await stage.check(exchange(route('reports', true), 'alice'));
    await stage.check(exchange(route('history', false), null));
    const [spoofRoute, spoofIp, alice, anonymous] = recording.keys;
    assert.notEqual(spoofRoute, alice);
    assert.notEqual(spoofIp, anonymous);
    assert.equal(new Set(recording.keys).size, 4);
  });
});
