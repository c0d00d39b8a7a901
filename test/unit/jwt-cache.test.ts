import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { JwtVerifier, VERIFIED_CACHE_SIZE } from '../../src/auth/jwt.js';
import { signToken, TEST_SECRET } from '../helpers/tokens.js';

describe('verified-token cache', () => {
  const clock = { now: Date.now() };
  const make = () => JwtVerifier.create({ keys: [{ secret: TEST_SECRET }], maxLifetimeSeconds: 7200, clockSkewSeconds: 30, now: () => clock.now });

  it('serves a repeated token without losing the expiry check', async () => {
    const verifier = await make();
    clock.now = Date.now();
    const header = `Bearer ${await signToken({ expiresInSeconds: 60 })}`;
    assert.equal((await verifier.verify(header)).ok, true);
    assert.equal((await verifier.verify(header)).ok, true);
    clock.now += 60_000 + 29_000;
    assert.equal((await verifier.verify(header)).ok, true, 'still within the clock skew');
    clock.now += 2_000;
    const late = await verifier.verify(header);
    assert.equal(late.ok, false);
    assert.equal(!late.ok && late.reason, 'GW_AUTH_TOKEN_EXPIRED');
  });

  it('never answers for a token that differs by one byte from a cached one', async () => {
    const verifier = await make();
    clock.now = Date.now();
    const token = await signToken({ role: 'resident' });
    assert.equal((await verifier.verify(`Bearer ${token}`)).ok, true);
    const [h, payload, sig] = token.split('.');
    // The first signature character carries 6 whole bits (the last one carries padding bits that
    // decoders ignore, so changing it may not change the signature at all).
    const flipped = `${sig![0] === 'A' ? 'B' : 'A'}${sig!.slice(1)}`;
    const tampered = await verifier.verify(`Bearer ${h}.${payload}.${flipped}`);
    assert.equal(tampered.ok, false);
    const forged = Buffer.from(JSON.stringify({ sub: 'user-1', role: 'admin', exp: Math.floor(clock.now / 1000) + 60 })).toString('base64url');
    const escalated = await verifier.verify(`Bearer ${h}.${forged}.${sig}`);
    assert.equal(escalated.ok, false);
    assert.equal(!escalated.ok && escalated.reason, 'GW_AUTH_TOKEN_INVALID');
  });

  it('stays bounded: the oldest token is verified again after the cache has turned over', async () => {
    const verifier = await make();
    clock.now = Date.now();
    const first = `Bearer ${await signToken({ sub: 'first' })}`;
    await verifier.verify(first);
    const other = await signToken({ sub: 'other' });
    // Variants of one valid token (extra spaces after Bearer) are distinct cache keys.
    for (let i = 1; i <= VERIFIED_CACHE_SIZE; i++) await verifier.verify(`Bearer${' '.repeat(i)}${other}`);
    const size = (verifier as unknown as { verified: Map<string, unknown> }).verified.size;
    assert.ok(size <= VERIFIED_CACHE_SIZE && size > VERIFIED_CACHE_SIZE / 2, `cache holds ${size}`);
    assert.equal((verifier as unknown as { verified: Map<string, unknown> }).verified.has(first), false);
    assert.equal((await verifier.verify(first)).ok, true);
  });
});
