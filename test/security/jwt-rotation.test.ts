import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { request } from 'undici';
import { routesFor, startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { read } from '../helpers/http.js';
import { expectAuthRefused, signTokenWithKid } from '../helpers/jwt.js';
import { signToken } from '../helpers/tokens.js';
import { startUpstream, type TestUpstream } from '../helpers/upstream.js';

/**
 * Key rotation (README "Key rotation"): JWT_SECRET is the new secret, JWT_PREVIOUS_SECRET the
 * old one, accepted until JWT_PREVIOUS_SECRET_EXPIRES_AT. A token's kid selects its key; a
 * token without one is tried against both.
 */

const NEW_SECRET = 'rotation-new-secret-0123456789abcdef-0123456789';
const OLD_SECRET = 'rotation-old-secret-0123456789abcdef-0123456789';
const OTHER_SECRET = 'rotation-other-secret-0123456789abcdef-012345';
const NEW_KID = 'k-2026-11';
const OLD_KID = 'k-2026-05';

const inOneHour = () => new Date(Date.now() + 3_600_000).toISOString();
const anHourAgo = () => new Date(Date.now() - 3_600_000).toISOString();

const ROUTES = (upstreamUrl: string) => routesFor(upstreamUrl, [{ name: 'records', prefix: '/records', auth: 'required' }]);

describe('key rotation', () => {
  let upstream: TestUpstream;
  const gateways: TestGateway[] = [];

  before(async () => {
    upstream = await startUpstream();
  });
  after(async () => {
    for (const gw of gateways) await gw.close();
    await upstream?.close();
  });

  async function gateway(env: Record<string, string>): Promise<TestGateway> {
    const gw = await startTestGateway(ROUTES(upstream.url), { JWT_SECRET: NEW_SECRET, JWT_PREVIOUS_SECRET: OLD_SECRET, ...env });
    gateways.push(gw);
    return gw;
  }

  async function accepted(gw: TestGateway, token: string, userId: string): Promise<void> {
    const before = upstream.received.length;
    const answer = await read(request(`${gw.url}/records/${userId}`, { headers: { authorization: `Bearer ${token}` } }));
    assert.equal(answer.statusCode, 200, answer.text);
    assert.equal(upstream.received.length, before + 1);
    assert.equal(upstream.received.at(-1)!.headers['x-user-id'], userId);
  }

  describe('during the overlap, without kids', () => {
    let gw: TestGateway;
    before(async () => {
      gw = await gateway({ JWT_PREVIOUS_SECRET_EXPIRES_AT: inOneHour() });
    });

    it('accepts a token signed with the new secret', async () => {
      await accepted(gw, await signToken({ sub: 'new-no-kid', secret: NEW_SECRET }), 'new-no-kid');
    });

    it('accepts a token signed with the previous secret', async () => {
      await accepted(gw, await signToken({ sub: 'old-no-kid', secret: OLD_SECRET }), 'old-no-kid');
    });

    it('accepts tokens naming a kid: a secret without a configured id takes any kid (README)', async () => {
      await accepted(gw, await signTokenWithKid('k-anything', { sub: 'new-any-kid', secret: NEW_SECRET }), 'new-any-kid');
      await accepted(gw, await signTokenWithKid('k-anything', { sub: 'old-any-kid', secret: OLD_SECRET }), 'old-any-kid');
    });

    it('refuses a token signed with any other secret', async () => {
      await expectAuthRefused(gw, upstream, `Bearer ${await signToken({ secret: OTHER_SECRET })}`, 'GW_AUTH_TOKEN_INVALID');
    });

    it('still checks the claims of a token signed with the previous secret', async () => {
      await expectAuthRefused(gw, upstream, `Bearer ${await signToken({ secret: OLD_SECRET, role: 'superuser' })}`, 'GW_AUTH_CLAIMS_INVALID');
      await expectAuthRefused(gw, upstream, `Bearer ${await signToken({ secret: OLD_SECRET, expiresInSeconds: -300 })}`, 'GW_AUTH_TOKEN_EXPIRED');
    });
  });

  describe('during the overlap, with JWT_KID and JWT_PREVIOUS_KID', () => {
    let gw: TestGateway;
    before(async () => {
      gw = await gateway({ JWT_PREVIOUS_SECRET_EXPIRES_AT: inOneHour(), JWT_KID: NEW_KID, JWT_PREVIOUS_KID: OLD_KID });
    });

    it('accepts a new-secret token with the new kid, and without a kid', async () => {
      await accepted(gw, await signTokenWithKid(NEW_KID, { sub: 'new-kid', secret: NEW_SECRET }), 'new-kid');
      await accepted(gw, await signToken({ sub: 'new-none', secret: NEW_SECRET }), 'new-none');
    });

    it('accepts an old-secret token with the previous kid, and without a kid', async () => {
      await accepted(gw, await signTokenWithKid(OLD_KID, { sub: 'old-kid', secret: OLD_SECRET }), 'old-kid');
      await accepted(gw, await signToken({ sub: 'old-none', secret: OLD_SECRET }), 'old-none');
    });

    it('checks a token only against the key its kid names: a valid signature under the other key is refused', async () => {
      await expectAuthRefused(gw, upstream, `Bearer ${await signTokenWithKid(NEW_KID, { secret: OLD_SECRET })}`, 'GW_AUTH_TOKEN_INVALID');
      await expectAuthRefused(gw, upstream, `Bearer ${await signTokenWithKid(OLD_KID, { secret: NEW_SECRET })}`, 'GW_AUTH_TOKEN_INVALID');
    });

    it('refuses a kid it does not know, whatever the token is signed with', async () => {
      for (const secret of [NEW_SECRET, OLD_SECRET, OTHER_SECRET]) {
        await expectAuthRefused(gw, upstream, `Bearer ${await signTokenWithKid('k-unknown', { secret })}`, 'GW_AUTH_TOKEN_INVALID');
      }
      // kids are compared exactly
      await expectAuthRefused(gw, upstream, `Bearer ${await signTokenWithKid(NEW_KID.toUpperCase(), { secret: NEW_SECRET })}`, 'GW_AUTH_TOKEN_INVALID');
      await expectAuthRefused(gw, upstream, `Bearer ${await signTokenWithKid(`${NEW_KID} `, { secret: NEW_SECRET })}`, 'GW_AUTH_TOKEN_INVALID');
    });
  });

  describe('during the overlap, with JWT_KID only (the previous secret has no id)', () => {
    let gw: TestGateway;
    before(async () => {
      gw = await gateway({ JWT_PREVIOUS_SECRET_EXPIRES_AT: inOneHour(), JWT_KID: NEW_KID });
    });

    it('the new secret takes only tokens naming its kid, or none', async () => {
      await accepted(gw, await signTokenWithKid(NEW_KID, { sub: 'only-new-kid', secret: NEW_SECRET }), 'only-new-kid');
      await accepted(gw, await signToken({ sub: 'only-new-none', secret: NEW_SECRET }), 'only-new-none');
      await expectAuthRefused(gw, upstream, `Bearer ${await signTokenWithKid('k-other', { secret: NEW_SECRET })}`, 'GW_AUTH_TOKEN_INVALID');
    });

    it('the previous secret, without an id, takes old-secret tokens whatever kid they name', async () => {
      await accepted(gw, await signTokenWithKid('k-other', { sub: 'only-old-any', secret: OLD_SECRET }), 'only-old-any');
      await accepted(gw, await signToken({ sub: 'only-old-none', secret: OLD_SECRET }), 'only-old-none');
    });
  });

  describe('after the overlap (JWT_PREVIOUS_SECRET_EXPIRES_AT in the past)', () => {
    let gw: TestGateway;
    before(async () => {
      gw = await gateway({ JWT_PREVIOUS_SECRET_EXPIRES_AT: anHourAgo(), JWT_KID: NEW_KID, JWT_PREVIOUS_KID: OLD_KID });
    });

    it('refuses old-secret tokens, with and without the previous kid', async () => {
      await expectAuthRefused(gw, upstream, `Bearer ${await signToken({ secret: OLD_SECRET })}`, 'GW_AUTH_TOKEN_INVALID');
      await expectAuthRefused(gw, upstream, `Bearer ${await signTokenWithKid(OLD_KID, { secret: OLD_SECRET })}`, 'GW_AUTH_TOKEN_INVALID');
    });

    it('still accepts new-secret tokens, with and without the new kid', async () => {
      await accepted(gw, await signTokenWithKid(NEW_KID, { sub: 'after-kid', secret: NEW_SECRET }), 'after-kid');
      await accepted(gw, await signToken({ sub: 'after-none', secret: NEW_SECRET }), 'after-none');
    });
  });

  describe('after the overlap, without kids', () => {
    let gw: TestGateway;
    before(async () => {
      gw = await gateway({ JWT_PREVIOUS_SECRET_EXPIRES_AT: anHourAgo() });
    });

    it('refuses old-secret tokens and accepts new-secret ones', async () => {
      await expectAuthRefused(gw, upstream, `Bearer ${await signToken({ secret: OLD_SECRET })}`, 'GW_AUTH_TOKEN_INVALID');
      await expectAuthRefused(gw, upstream, `Bearer ${await signTokenWithKid('k-anything', { secret: OLD_SECRET })}`, 'GW_AUTH_TOKEN_INVALID');
      await accepted(gw, await signToken({ sub: 'after-plain', secret: NEW_SECRET }), 'after-plain');
    });
  });
});
