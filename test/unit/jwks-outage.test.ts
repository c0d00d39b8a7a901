import assert from 'node:assert/strict';
import { after, before, describe, it, mock } from 'node:test';
import { SignJWT } from 'jose';
import { JwtVerifier, type VerifyResult } from '../../src/auth/jwt.js';
import { rsaSigningKey, startJwks, type RsaSigningKey } from '../helpers/jwt.js';

/**
 * README, "When a dependency is down": for the JWKS endpoint, "Keys already fetched keep
 * working; a token needing a new key gets 503 GW_AUTH_UNAVAILABLE". The key set is cached for
 * 10 minutes (JWT_JWKS_URL); an outage longer than that must not turn every asymmetric token
 * into a 503. Date is mocked (the verifier and jose's key-set cache both read it); the JWKS
 * fetch itself is real HTTP on loopback.
 */

const MINUTE = 60_000;

function reason(result: VerifyResult): string {
  return result.ok ? 'ok' : result.reason;
}

describe('JwtVerifier: a JWKS outage after the keys were fetched', () => {
  let rsa: RsaSigningKey;
  let jwks: Awaited<ReturnType<typeof startJwks>>;
  let verifier: JwtVerifier;

  /** A fresh RS256 token (a new Authorization header, so the verified-token cache cannot answer). */
  async function token(sub: string, kid = rsa.kid): Promise<string> {
    const t = Math.floor(Date.now() / 1000);
    const jwt = await new SignJWT({ role: 'health_provider' }).setProtectedHeader({ alg: 'RS256', typ: 'JWT', kid }).setSubject(sub).setIssuedAt(t).setExpirationTime(t + 600).sign(rsa.privateKey);
    return `Bearer ${jwt}`;
  }

  before(async () => {
    rsa = await rsaSigningKey('rsa-outage');
    jwks = await startJwks([rsa.jwk]);
    mock.timers.enable({ apis: ['Date'], now: Date.now() });
    verifier = await JwtVerifier.create({ keys: [{ secret: 'unit-jwks-outage-0123456789abcdef-0123456789' }], maxLifetimeSeconds: 7200, clockSkewSeconds: 30, jwksUrl: jwks.jwksUrl, jwksTimeoutMs: 1_000 });
    assert.equal(reason(await verifier.verify(await token('before-outage'))), 'ok', 'the key set is fetched while the endpoint is up');
    await jwks.close();
  });
  after(() => {
    mock.timers.reset();
  });

  it('a new token signed by a fetched key passes a few minutes into the outage', async () => {
    mock.timers.tick(5 * MINUTE);
    assert.equal(reason(await verifier.verify(await token('five-minutes-in'))), 'ok');
  });

  it('a token naming a key never fetched gets GW_AUTH_UNAVAILABLE once a refetch is allowed', async () => {
    assert.equal(reason(await verifier.verify(await token('new-key', 'rsa-next'))), 'GW_AUTH_UNAVAILABLE');
  });

  it('a new token signed by a fetched key still passes when the outage outlasts the 10-minute cache', async () => {
    mock.timers.tick(6 * MINUTE);
    assert.equal(reason(await verifier.verify(await token('eleven-minutes-in'))), 'ok');
  });
});
