import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { CompiledRoute } from '../../src/config/compile.js';
import { createLoggers } from '../../src/observability/logger.js';
import { Exchange } from '../../src/pipeline/exchange.js';
import { AccessCheck } from '../../src/pipeline/access-check.js';
import type { SessionValidator } from '../../src/auth/sessions.js';
import type { AccessQuery } from '../../src/stores/access-store.js';
import { AccessControl } from '../../src/stores/failover-access-store.js';
import { MemoryAccessStore } from '../../src/stores/memory-access-store.js';
import type { RedisAccessStore } from '../../src/stores/redis-access-store.js';
import { LogCapture } from '../helpers/gateway.js';

/** Records the keys the stage asks for; admits everything. */
class RecordingStore {
  readonly keys: string[] = [];
  check(q: AccessQuery) {
    this.keys.push(q.rateKey);
    return Promise.resolve({ revoked: false, sessionUser: null, decision: { allowed: true, limit: q.limit, remaining: q.limit - 1, resetMs: 1, retryAfterMs: 0 } });
  }
}

function route(name: string, ownKey: boolean): CompiledRoute {
  return { name, rateLimit: { perMinute: 10, ownKey, failClosed: false, policyName: name, policyHeader: '' } } as unknown as CompiledRoute;
}

function exchange(r: CompiledRoute, userId: string | null, ip = '10.0.0.1'): Exchange {
  const ex = new Exchange('id', 0, ip, false, ip);
  ex.route = r;
  if (userId !== null) ex.identity = { userId, role: 'resident', phiAccessLevel: 'self', tokenId: null, sessionId: null, issuedAt: null, expiresAt: 0 };
  return ex;
}

describe('rate-limit keys', () => {
  const recording = new RecordingStore();
  const local = new MemoryAccessStore();
  const { log } = createLoggers('silent', new LogCapture());
  const control = new AccessControl(recording as unknown as RedisAccessStore, local, log);
  const stage = new AccessCheck(control, null as unknown as SessionValidator, log);

  it('uses the spec key rate_limit:{user_id} (a hash tag), a route part after it for own limits, and ip: for anonymous clients', async () => {
    recording.keys.length = 0;
    await stage.check(exchange(route('history', false), '7c9e6679-7425-40de-944b-e07fc1f90ae7'));
    await stage.check(exchange(route('reports', true), '7c9e6679-7425-40de-944b-e07fc1f90ae7'));
    await stage.check(exchange(route('history', false), null));
    assert.deepEqual(recording.keys, [
      'rate_limit:{7c9e6679-7425-40de-944b-e07fc1f90ae7}',
      'rate_limit:{7c9e6679-7425-40de-944b-e07fc1f90ae7}:reports',
      'rate_limit:{ip:10.0.0.1}',
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
