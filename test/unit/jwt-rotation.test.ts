import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { JwtVerifier, type VerifyResult } from '../../src/auth/jwt.js';
import { signTokenWithKid } from '../helpers/jwt.js';
import { signToken } from '../helpers/tokens.js';

/**
 * The end of a rotation overlap on the verifier's clock: a token verified (and cached) under
 * the previous key is refused once the clock reaches that key's untilMs, while tokens of the
 * current key go on passing.
 */

const NEW_SECRET = 'unit-rotation-new-0123456789abcdef-0123456789';
const OLD_SECRET = 'unit-rotation-old-0123456789abcdef-0123456789';
const OVERLAP_MS = 60_000;

function cacheOf(verifier: JwtVerifier): Map<string, unknown> {
  return (verifier as unknown as { verified: Map<string, unknown> }).verified;
}

function reason(result: VerifyResult): string {
  return result.ok ? 'ok' : result.reason;
}

describe('JwtVerifier: the previous key retires at its untilMs', () => {
  const clock = { now: Date.now() };

  async function make(kids: boolean): Promise<{ verifier: JwtVerifier; untilMs: number }> {
    clock.now = Date.now();
    const untilMs = clock.now + OVERLAP_MS;
    const verifier = await JwtVerifier.create({
      keys: [
        { secret: NEW_SECRET, kid: kids ? 'k-new' : undefined },
        { secret: OLD_SECRET, kid: kids ? 'k-old' : undefined, untilMs },
      ],
      maxLifetimeSeconds: 7200,
      clockSkewSeconds: 30,
      now: () => clock.now,
    });
    return { verifier, untilMs };
  }

  for (const kids of [false, true]) {
    it(`refuses a cached old-key token from untilMs on, keeps the new-key token (${kids ? 'with' : 'without'} kids)`, async () => {
      const { verifier, untilMs } = await make(kids);
      // Both tokens live an hour: only the key's retirement can end the old one within the test.
      const oldHeader = `Bearer ${kids ? await signTokenWithKid('k-old', { secret: OLD_SECRET, expiresInSeconds: 3600 }) : await signToken({ secret: OLD_SECRET, expiresInSeconds: 3600 })}`;
      const newHeader = `Bearer ${kids ? await signTokenWithKid('k-new', { secret: NEW_SECRET, expiresInSeconds: 3600 }) : await signToken({ secret: NEW_SECRET, expiresInSeconds: 3600 })}`;

      assert.equal(reason(await verifier.verify(oldHeader)), 'ok');
      assert.equal(reason(await verifier.verify(newHeader)), 'ok');
      assert.ok(cacheOf(verifier).has(oldHeader), 'the old-key token is cached');
      assert.ok(cacheOf(verifier).has(newHeader), 'the new-key token is cached');

      // Just before the end of the overlap, the cache answers (synchronously) for both.
      clock.now = untilMs - 1;
      const hit = verifier.verify(oldHeader);
      assert.ok(!(hit instanceof Promise), 'a cache hit is answered at once');
      assert.equal(reason(hit as VerifyResult), 'ok');

      clock.now = untilMs;
      assert.equal(reason(await verifier.verify(oldHeader)), 'GW_AUTH_TOKEN_INVALID', 'the old key is retired at untilMs');
      assert.equal(cacheOf(verifier).has(oldHeader), false, 'the stale verdict is dropped');
      assert.equal(reason(await verifier.verify(newHeader)), 'ok');

      clock.now = untilMs + 10 * 60_000;
      assert.equal(reason(await verifier.verify(oldHeader)), 'GW_AUTH_TOKEN_INVALID');
      assert.equal(reason(await verifier.verify(newHeader)), 'ok');
      assert.equal(cacheOf(verifier).has(oldHeader), false, 'a refused token is never cached');
    });
  }

  it('refuses an old-key token first seen after untilMs, and accepts a new-key token first seen then', async () => {
    const { verifier, untilMs } = await make(false);
    const oldHeader = `Bearer ${await signToken({ secret: OLD_SECRET, expiresInSeconds: 3600 })}`;
    const newHeader = `Bearer ${await signToken({ secret: NEW_SECRET, expiresInSeconds: 3600 })}`;
    clock.now = untilMs + 1;
    assert.equal(reason(await verifier.verify(oldHeader)), 'GW_AUTH_TOKEN_INVALID');
    assert.equal(reason(await verifier.verify(newHeader)), 'ok');
  });

  it('a cached old-key token still expires on its own exp when that comes first', async () => {
    clock.now = Date.now();
    const verifier = await JwtVerifier.create({
      keys: [{ secret: NEW_SECRET }, { secret: OLD_SECRET, untilMs: clock.now + 3_600_000 }],
      maxLifetimeSeconds: 7200,
      clockSkewSeconds: 30,
      now: () => clock.now,
    });
    const oldHeader = `Bearer ${await signToken({ secret: OLD_SECRET, expiresInSeconds: 60 })}`;
    assert.equal(reason(await verifier.verify(oldHeader)), 'ok');
    clock.now += 60_000 + 31_000;
    assert.equal(reason(await verifier.verify(oldHeader)), 'GW_AUTH_TOKEN_EXPIRED');
  });
});
