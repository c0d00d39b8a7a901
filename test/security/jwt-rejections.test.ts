import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import { SignJWT, type CryptoKey, type JWK, type JWTPayload } from 'jose';
import { request } from 'undici';
import { routesFor, startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { read } from '../helpers/http.js';
import { b64url, expectAuthRefused, handmadeToken, hs256, rsaSigningKey, startJwks, type RsaSigningKey } from '../helpers/jwt.js';
import { signToken, TEST_SECRET } from '../helpers/tokens.js';
import { startUpstream, type TestUpstream } from '../helpers/upstream.js';

/**
 * Every way a bearer token can be wrong gets a 401 with its own reason code and a Bearer
 * challenge, never echoes the token, and never reaches the upstream. One gateway: HS256 with
 * TEST_SECRET, a JWKS with one RSA key, an issuer, an audience and a one-hour lifetime cap.
 */

const ISSUER = 'https://auth.healthcare.test';
const AUDIENCE = 'api-gateway';
const MAX_LIFETIME = 3600;
const SKEW = 30;
const SECRET = new TextEncoder().encode(TEST_SECRET);

const nowSeconds = () => Math.floor(Date.now() / 1000);

/** Claims that pass every check; `overrides` replace or add, `omit` removes. */
function claims(overrides: Record<string, unknown> = {}, omit: readonly string[] = []): JWTPayload {
  const t = nowSeconds();
  const c: JWTPayload = { sub: 'user-1', role: 'health_provider', iss: ISSUER, aud: AUDIENCE, iat: t, exp: t + 600, jti: randomUUID(), ...overrides };
  for (const name of omit) delete c[name];
  return c;
}

/** Signs `payload` as is (jose checks nothing about its claims). */
function sign(payload: JWTPayload, key: Uint8Array | CryptoKey = SECRET, header: { alg?: string; kid?: string; jwk?: JWK; jku?: string; typ?: string } = {}): Promise<string> {
  return new SignJWT(payload).setProtectedHeader({ typ: 'JWT', ...header, alg: header.alg ?? 'HS256' }).sign(key);
}

const bearer = (token: string) => `Bearer ${token}`;

describe('JWT rejections at the gateway', () => {
  let upstream: TestUpstream;
  let jwks: Awaited<ReturnType<typeof startJwks>>;
  let gw: TestGateway;
  let rsa: RsaSigningKey;
  let impostor: RsaSigningKey;

  before(async () => {
    [rsa, impostor] = await Promise.all([rsaSigningKey('rsa-2026'), rsaSigningKey('rsa-2026')]);
    jwks = await startJwks([rsa.jwk]);
    upstream = await startUpstream();
    gw = await startTestGateway(routesFor(upstream.url, [{ name: 'records', prefix: '/records', auth: 'required' }]), {
      JWT_ISSUER: ISSUER,
      JWT_AUDIENCE: AUDIENCE,
      JWT_EXPIRES_IN: String(MAX_LIFETIME),
      JWT_CLOCK_SKEW_SECONDS: String(SKEW),
      JWT_JWKS_URL: jwks.jwksUrl,
    });
  });
  after(async () => {
    await gw?.close();
    await upstream?.close();
    await jwks?.close();
  });

  /** Every credential sent, to check none of them reached the log. */
  const sent: string[] = [];
  const refused = (authorization: string | undefined, code: string) => {
    if (authorization !== undefined) sent.push(authorization);
    return expectAuthRefused(gw, upstream, authorization, code);
  };

  /** A request that must pass: 200, and the upstream sees the identity of the token. */
  async function accepted(authorization: string, userId: string, role: string): Promise<void> {
    sent.push(authorization);
    const before = upstream.received.length;
    const answer = await read(request(`${gw.url}/records/accepted-${userId}`, { headers: { authorization } }));
    assert.equal(answer.statusCode, 200, answer.text);
    assert.equal(upstream.received.length, before + 1);
    const seen = upstream.received.at(-1)!;
    assert.equal(seen.headers['x-user-id'], userId);
    assert.equal(seen.headers['x-user-role'], role);
  }

  describe('control: well-formed tokens pass', () => {
    it('an HS256 token with the right issuer and audience', async () => {
      await accepted(bearer(await sign(claims({ sub: 'hs-user' }))), 'hs-user', 'health_provider');
    });

    it('an HS256 token whose aud is a list that holds the gateway', async () => {
      await accepted(bearer(await sign(claims({ sub: 'aud-list', aud: ['billing', AUDIENCE] }))), 'aud-list', 'health_provider');
    });

    it('the scheme name in any case (RFC 9110 11.1): "bearer", "BEARER"', async () => {
      await accepted(`bearer ${await sign(claims({ sub: 'lower-scheme' }))}`, 'lower-scheme', 'health_provider');
      await accepted(`BEARER ${await sign(claims({ sub: 'upper-scheme' }))}`, 'upper-scheme', 'health_provider');
    });

    it('an RS256 token signed by the private key of a JWKS key, the upstream sees X-User-ID', async () => {
      const token = await sign(claims({ sub: 'rs-user', role: 'care_staff' }), rsa.privateKey, { alg: 'RS256', kid: rsa.kid });
      await accepted(bearer(token), 'rs-user', 'care_staff');
    });
  });

  describe('no usable Authorization header', () => {
    it('no header: GW_AUTH_TOKEN_MISSING, a bare challenge without an error code (RFC 6750 3.1)', async () => {
      const { answer } = await refused(undefined, 'GW_AUTH_TOKEN_MISSING');
      assert.doesNotMatch(String(answer.headers['www-authenticate']), /error=/);
    });

    it('an empty header: GW_AUTH_TOKEN_MISSING', async () => {
      await refused('', 'GW_AUTH_TOKEN_MISSING');
    });

    it('"Bearer " with nothing after it: GW_AUTH_TOKEN_MALFORMED', async () => {
      // Node trims the trailing space of a field value: the gateway reads "Bearer".
      await refused('Bearer ', 'GW_AUTH_TOKEN_MALFORMED');
    });

    it('"Bearer" alone: GW_AUTH_TOKEN_MALFORMED', async () => {
      await refused('Bearer', 'GW_AUTH_TOKEN_MALFORMED');
    });

    it('Basic credentials: GW_AUTH_TOKEN_MALFORMED', async () => {
      await refused(`Basic ${Buffer.from('provider@hospital.com:secure_password').toString('base64')}`, 'GW_AUTH_TOKEN_MALFORMED');
    });

    it('a valid token under another scheme (Token, Basic, JWT): GW_AUTH_TOKEN_MALFORMED', async () => {
      const token = await sign(claims());
      for (const scheme of ['Token', 'Basic', 'JWT']) await refused(`${scheme} ${token}`, 'GW_AUTH_TOKEN_MALFORMED');
    });

    it('"Token x.y.z": GW_AUTH_TOKEN_MALFORMED', async () => {
      await refused('Token x.y.z', 'GW_AUTH_TOKEN_MALFORMED');
    });

    it('a valid token followed by more text: GW_AUTH_TOKEN_MALFORMED', async () => {
      await refused(`Bearer ${await sign(claims())} extra`, 'GW_AUTH_TOKEN_MALFORMED');
    });
  });

  describe('malformed compact serialisation', () => {
    it('one segment: GW_AUTH_TOKEN_MALFORMED', async () => {
      await refused(bearer((await sign(claims())).replaceAll('.', '')), 'GW_AUTH_TOKEN_MALFORMED');
    });

    it('two segments (signature dropped): GW_AUTH_TOKEN_MALFORMED', async () => {
      const [h, p] = (await sign(claims())).split('.');
      await refused(bearer(`${h}.${p}`), 'GW_AUTH_TOKEN_MALFORMED');
    });

    it('four segments (a valid token with one more): GW_AUTH_TOKEN_MALFORMED', async () => {
      const token = await sign(claims());
      await refused(bearer(`${token}.${token.split('.')[2]}`), 'GW_AUTH_TOKEN_MALFORMED');
    });

    it('five segments (JWE shape): GW_AUTH_TOKEN_MALFORMED', async () => {
      const [h, p, s] = (await sign(claims())).split('.');
      await refused(bearer(`${h}.${p}.${s}.${p}.${s}`), 'GW_AUTH_TOKEN_MALFORMED');
    });

    it('an empty segment: GW_AUTH_TOKEN_MALFORMED', async () => {
      const [h, p, s] = (await sign(claims())).split('.');
      await refused(bearer(`${h}..${s}`), 'GW_AUTH_TOKEN_MALFORMED');
      await refused(bearer(`.${p}.${s}`), 'GW_AUTH_TOKEN_MALFORMED');
    });

    it('standard base64 with padding instead of base64url: GW_AUTH_TOKEN_MALFORMED', async () => {
      const header = Buffer.from(JSON.stringify({ alg: 'HS256', typ: 'JWT' })).toString('base64');
      const payload = Buffer.from(JSON.stringify(claims({ sub: 'user-1?' }))).toString('base64');
      assert.match(`${header}${payload}`, /[+/=]/, 'the test needs a character outside base64url');
      const input = `${header}.${payload}`;
      await refused(bearer(`${input}.${hs256(input)}`), 'GW_AUTH_TOKEN_MALFORMED');
    });

    it('a header that is not valid base64url: GW_AUTH_TOKEN_MALFORMED', async () => {
      const p = b64url(claims());
      // One character: a length no base64 string can have.
      await refused(bearer(`e.${p}.${hs256(`e.${p}`)}`), 'GW_AUTH_TOKEN_MALFORMED');
    });

    it('a header that decodes to something other than a JSON object: GW_AUTH_TOKEN_MALFORMED', async () => {
      const p = b64url(claims());
      for (const header of ['{alg:HS256}', '["HS256"]', '"HS256"', 'null']) {
        const h = b64url(header);
        await refused(bearer(`${h}.${p}.${hs256(`${h}.${p}`)}`), 'GW_AUTH_TOKEN_MALFORMED');
      }
    });

    it('a payload that is not valid base64url, correctly signed: GW_AUTH_TOKEN_MALFORMED', async () => {
      const h = b64url({ alg: 'HS256', typ: 'JWT' });
      await refused(bearer(`${h}.e.${hs256(`${h}.e`)}`), 'GW_AUTH_TOKEN_MALFORMED');
    });

    it('a payload that decodes to something other than a JSON object, correctly signed: GW_AUTH_TOKEN_MALFORMED', async () => {
      for (const payload of ['{sub:user-1}', '[1,2]', '42']) {
        await refused(bearer(handmadeToken({ alg: 'HS256', typ: 'JWT' }, payload)), 'GW_AUTH_TOKEN_MALFORMED');
      }
    });

    it('a payload that is not valid base64url, with a signature that does not match: 401 either way', async () => {
      // Whether the signature or the payload is looked at first decides the code; both are 401.
      const h = b64url({ alg: 'HS256', typ: 'JWT' });
      await expectAuthRefused(gw, upstream, bearer(`${h}.e.${hs256('something else')}`), ['GW_AUTH_TOKEN_MALFORMED', 'GW_AUTH_TOKEN_INVALID']);
    });
  });

  describe('unsigned tokens (alg none)', () => {
    for (const alg of ['none', 'None', 'NONE', 'nOnE']) {
      it(`alg "${alg}" with an empty signature: GW_AUTH_TOKEN_MALFORMED`, async () => {
        const token = handmadeToken({ alg, typ: 'JWT' }, claims({ role: 'admin' }), '');
        assert.ok(token.endsWith('.'));
        await refused(bearer(token), 'GW_AUTH_TOKEN_MALFORMED');
      });

      it(`alg "${alg}" with a signature (the valid HS256 MAC of the same bytes): GW_AUTH_TOKEN_INVALID`, async () => {
        await refused(bearer(handmadeToken({ alg, typ: 'JWT' }, claims({ role: 'admin' }))), 'GW_AUTH_TOKEN_INVALID');
      });
    }

    it('no alg at all: GW_AUTH_TOKEN_INVALID', async () => {
      await refused(bearer(handmadeToken({ typ: 'JWT' }, claims())), 'GW_AUTH_TOKEN_INVALID');
    });
  });

  describe('signatures that do not verify', () => {
    it('signed with another secret: GW_AUTH_TOKEN_INVALID', async () => {
      await refused(bearer(await signToken({ secret: 'another-secret-0123456789abcdef-0123456789', claims: { iss: ISSUER, aud: AUDIENCE } })), 'GW_AUTH_TOKEN_INVALID');
    });

    it('signed with the right secret but HS384 / HS512 (the secret is pinned to HS256): GW_AUTH_TOKEN_INVALID', async () => {
      for (const alg of ['HS384', 'HS512']) await refused(bearer(await sign(claims(), SECRET, { alg })), 'GW_AUTH_TOKEN_INVALID');
    });

    it('the payload tampered (role escalated to admin) under the original signature: GW_AUTH_TOKEN_INVALID', async () => {
      const original = claims({ role: 'resident' });
      const [h, , s] = (await sign(original)).split('.');
      await refused(bearer(`${h}.${b64url({ ...original, role: 'admin' })}.${s}`), 'GW_AUTH_TOKEN_INVALID');
    });

    it('the payload tampered (another subject) under the original signature: GW_AUTH_TOKEN_INVALID', async () => {
      const original = claims({ sub: 'resident-7', role: 'resident' });
      const [h, , s] = (await sign(original)).split('.');
      await refused(bearer(`${h}.${b64url({ ...original, sub: 'resident-8' })}.${s}`), 'GW_AUTH_TOKEN_INVALID');
    });

    it('the signature altered: GW_AUTH_TOKEN_INVALID', async () => {
      const [h, p, s] = (await sign(claims())).split('.');
      // The first character carries six whole bits of the MAC (the last one carries padding bits).
      await refused(bearer(`${h}.${p}.${s![0] === 'A' ? 'B' : 'A'}${s!.slice(1)}`), 'GW_AUTH_TOKEN_INVALID');
    });

    it('the signature of another valid token: GW_AUTH_TOKEN_INVALID', async () => {
      const [h, p] = (await sign(claims({ sub: 'a' }))).split('.');
      const [, , s] = (await sign(claims({ sub: 'b' }))).split('.');
      await refused(bearer(`${h}.${p}.${s}`), 'GW_AUTH_TOKEN_INVALID');
    });
  });

  describe('algorithm confusion with the JWKS public key', () => {
    it('HS256 whose HMAC key is the PEM text of the public key: GW_AUTH_TOKEN_INVALID', async () => {
      await refused(bearer(handmadeToken({ alg: 'HS256', typ: 'JWT' }, claims({ role: 'admin' }), undefined, rsa.pem)), 'GW_AUTH_TOKEN_INVALID');
    });

    it('the same without the trailing newline, and naming the JWKS key by kid: GW_AUTH_TOKEN_INVALID', async () => {
      await refused(bearer(handmadeToken({ alg: 'HS256', typ: 'JWT' }, claims({ role: 'admin' }), undefined, rsa.pem.trim())), 'GW_AUTH_TOKEN_INVALID');
      await refused(bearer(handmadeToken({ alg: 'HS256', typ: 'JWT', kid: rsa.kid }, claims({ role: 'admin' }), undefined, rsa.pem)), 'GW_AUTH_TOKEN_INVALID');
    });

    it('HS256 whose HMAC key is the JWK JSON or the modulus of the public key: GW_AUTH_TOKEN_INVALID', async () => {
      await refused(bearer(handmadeToken({ alg: 'HS256', typ: 'JWT' }, claims({ role: 'admin' }), undefined, JSON.stringify(rsa.jwk))), 'GW_AUTH_TOKEN_INVALID');
      await refused(bearer(handmadeToken({ alg: 'HS256', typ: 'JWT' }, claims({ role: 'admin' }), undefined, Buffer.from(rsa.jwk.n!, 'base64url'))), 'GW_AUTH_TOKEN_INVALID');
    });

    it('"RS256" in the header over an HMAC under the shared secret: GW_AUTH_TOKEN_INVALID', async () => {
      await refused(bearer(handmadeToken({ alg: 'RS256', typ: 'JWT', kid: rsa.kid }, claims({ role: 'admin' }))), 'GW_AUTH_TOKEN_INVALID');
    });

    it('RS256 signed by another private key under the JWKS key\'s kid: GW_AUTH_TOKEN_INVALID', async () => {
      await refused(bearer(await sign(claims({ role: 'admin' }), impostor.privateKey, { alg: 'RS256', kid: rsa.kid })), 'GW_AUTH_TOKEN_INVALID');
    });

    it('RS256 by another key that brings its own key (jwk, jku headers): GW_AUTH_TOKEN_INVALID, the jku is never fetched', async () => {
      const attackerJwks = await startJwks([{ ...impostor.jwk, kid: 'attacker' }]);
      try {
        const embedded = await sign(claims({ role: 'admin' }), impostor.privateKey, { alg: 'RS256', kid: 'attacker', jwk: { ...impostor.jwk, kid: 'attacker' } });
        await refused(bearer(embedded), 'GW_AUTH_TOKEN_INVALID');
        const remote = await sign(claims({ role: 'admin' }), impostor.privateKey, { alg: 'RS256', kid: 'attacker', jku: attackerJwks.jwksUrl });
        await refused(bearer(remote), 'GW_AUTH_TOKEN_INVALID');
        const remoteSameKid = await sign(claims({ role: 'admin' }), impostor.privateKey, { alg: 'RS256', kid: rsa.kid, jku: attackerJwks.jwksUrl });
        await refused(bearer(remoteSameKid), 'GW_AUTH_TOKEN_INVALID');
        assert.equal(attackerJwks.received.length, 0, 'the gateway fetched the key set the token pointed at');
      } finally {
        await attackerJwks.close();
      }
    });

    it('RS256 naming a kid the JWKS does not hold: GW_AUTH_TOKEN_INVALID', async () => {
      await refused(bearer(await sign(claims(), rsa.privateKey, { alg: 'RS256', kid: 'rsa-unknown' })), 'GW_AUTH_TOKEN_INVALID');
    });
  });

  describe('time claims', () => {
    it('expired: GW_AUTH_TOKEN_EXPIRED', async () => {
      const t = nowSeconds();
      await refused(bearer(await sign(claims({ iat: t - 900, exp: t - 300 }))), 'GW_AUTH_TOKEN_EXPIRED');
    });

    it('expired, RS256: GW_AUTH_TOKEN_EXPIRED', async () => {
      const t = nowSeconds();
      await refused(bearer(await sign(claims({ iat: t - 900, exp: t - 300 }), rsa.privateKey, { alg: 'RS256', kid: rsa.kid })), 'GW_AUTH_TOKEN_EXPIRED');
    });

    it('nbf in the future: GW_AUTH_TOKEN_NOT_YET_VALID', async () => {
      await refused(bearer(await sign(claims({ nbf: nowSeconds() + 300 }))), 'GW_AUTH_TOKEN_NOT_YET_VALID');
    });

    it('iat in the future: GW_AUTH_TOKEN_NOT_YET_VALID', async () => {
      const t = nowSeconds();
      await refused(bearer(await sign(claims({ iat: t + 300, exp: t + 900 }))), 'GW_AUTH_TOKEN_NOT_YET_VALID');
    });

    it('no exp: GW_AUTH_CLAIMS_INVALID', async () => {
      await refused(bearer(await sign(claims({}, ['exp']))), 'GW_AUTH_CLAIMS_INVALID');
    });

    it('exp that is not a number: GW_AUTH_CLAIMS_INVALID', async () => {
      await refused(bearer(await sign(claims({ exp: String(nowSeconds() + 600) }))), 'GW_AUTH_CLAIMS_INVALID');
    });

    it('a lifetime over JWT_EXPIRES_IN (exp - iat = cap + 1): GW_AUTH_CLAIMS_INVALID', async () => {
      const t = nowSeconds();
      await refused(bearer(await sign(claims({ iat: t, exp: t + MAX_LIFETIME + 1 }))), 'GW_AUTH_CLAIMS_INVALID');
    });

    it('a lifetime over the cap from an old iat, though not expired yet: GW_AUTH_CLAIMS_INVALID', async () => {
      const t = nowSeconds();
      await refused(bearer(await sign(claims({ iat: t - 86_400, exp: t + 600 }))), 'GW_AUTH_CLAIMS_INVALID');
    });

    it('no iat and an exp further away than the cap: GW_AUTH_CLAIMS_INVALID', async () => {
      await refused(bearer(await sign(claims({ exp: nowSeconds() + MAX_LIFETIME + SKEW + 600 }, ['iat']))), 'GW_AUTH_CLAIMS_INVALID');
    });

    it('control: a lifetime of exactly the cap passes', async () => {
      const t = nowSeconds();
      await accepted(bearer(await sign(claims({ sub: 'full-life', iat: t, exp: t + MAX_LIFETIME }))), 'full-life', 'health_provider');
    });
  });

  describe('identity claims', () => {
    it('no sub: GW_AUTH_CLAIMS_INVALID', async () => {
      await refused(bearer(await sign(claims({}, ['sub']))), 'GW_AUTH_CLAIMS_INVALID');
    });

    it('a sub that is not a usable user id (empty, number, with spaces): GW_AUTH_CLAIMS_INVALID', async () => {
      for (const sub of ['', 42, 'user 1', ['user-1']]) await refused(bearer(await sign(claims({ sub }))), 'GW_AUTH_CLAIMS_INVALID');
    });

    it('no role: GW_AUTH_CLAIMS_INVALID', async () => {
      await refused(bearer(await sign(claims({}, ['role']))), 'GW_AUTH_CLAIMS_INVALID');
    });

    it('an unknown role (superuser, root, Admin, "admin "): GW_AUTH_CLAIMS_INVALID', async () => {
      for (const role of ['superuser', 'root', 'Admin', 'admin ', '']) await refused(bearer(await sign(claims({ role }))), 'GW_AUTH_CLAIMS_INVALID');
    });

    it('a role of the wrong type (number, array, object, null, true): GW_AUTH_CLAIMS_INVALID', async () => {
      for (const role of [1, ['admin'], ['health_provider'], { name: 'admin' }, null, true]) {
        await refused(bearer(await sign(claims({ role }))), 'GW_AUTH_CLAIMS_INVALID');
      }
    });
  });

  describe('token type: only an access token authenticates a request (RFC 8725 3.11, RFC 9068)', () => {
    it('a refresh token, signed with the same key and carrying a role, is refused by its typ header or its typ claim', async () => {
      for (const typ of ['refresh+jwt', 'application/refresh+jwt', 'id+jwt', 'secevent+jwt', 'JOSE']) {
        await refused(bearer(await sign(claims(), SECRET, { typ })), 'GW_AUTH_TOKEN_TYPE');
      }
      for (const typ of ['refresh', 'id', 'Access', '']) await refused(bearer(await sign(claims({ typ }))), 'GW_AUTH_TOKEN_TYPE');
    });

    it('access tokens pass: typ JWT or at+jwt in any case, with or without application/, or no typ at all; typ claim access or none', async () => {
      let n = 0;
      for (const typ of ['JWT', 'jwt', 'at+jwt', 'AT+JWT', 'application/at+jwt', 'application/JWT']) {
        const sub = `typ-ok-${n++}`;
        await accepted(bearer(await sign(claims({ sub }), SECRET, { typ })), sub, 'health_provider');
      }
      const noTyp = await new SignJWT(claims({ sub: 'typ-none' })).setProtectedHeader({ alg: 'HS256' }).sign(SECRET);
      await accepted(bearer(noTyp), 'typ-none', 'health_provider');
      await accepted(bearer(await sign(claims({ sub: 'typ-claim-access', typ: 'access' }))), 'typ-claim-access', 'health_provider');
    });
  });

  describe('issuer and audience (JWT_ISSUER and JWT_AUDIENCE set)', () => {
    it('another issuer: GW_AUTH_CLAIMS_INVALID', async () => {
      await refused(bearer(await sign(claims({ iss: 'https://evil.example' }))), 'GW_AUTH_CLAIMS_INVALID');
    });

    it('no issuer: GW_AUTH_CLAIMS_INVALID', async () => {
      await refused(bearer(await sign(claims({}, ['iss']))), 'GW_AUTH_CLAIMS_INVALID');
    });

    it('another audience, or a list without the gateway: GW_AUTH_CLAIMS_INVALID', async () => {
      await refused(bearer(await sign(claims({ aud: 'billing-service' }))), 'GW_AUTH_CLAIMS_INVALID');
      await refused(bearer(await sign(claims({ aud: ['billing-service', 'chat-history'] }))), 'GW_AUTH_CLAIMS_INVALID');
    });

    it('no audience: GW_AUTH_CLAIMS_INVALID', async () => {
      await refused(bearer(await sign(claims({}, ['aud']))), 'GW_AUTH_CLAIMS_INVALID');
    });

    it('an RS256 token from another issuer: GW_AUTH_CLAIMS_INVALID', async () => {
      await refused(bearer(await sign(claims({ iss: 'https://evil.example' }), rsa.privateKey, { alg: 'RS256', kid: rsa.kid })), 'GW_AUTH_CLAIMS_INVALID');
    });

    it('a plain test token without iss and aud is refused here', async () => {
      await refused(bearer(await signToken()), 'GW_AUTH_CLAIMS_INVALID');
    });
  });

  it('the upstream only ever saw the requests of accepted tokens', () => {
    const urls = upstream.received.map((r) => r.url);
    assert.ok(urls.length > 0);
    assert.deepEqual(
      urls.filter((u) => !u.startsWith('/records/accepted-')),
      [],
    );
  });

  it('no token, or part of one, was written to the log', () => {
    const logged = JSON.stringify(gw.logs);
    assert.ok(gw.logs.length > 0);
    for (const authorization of sent) {
      for (const part of authorization.replace(/^\S*\s*/, '').split('.')) {
        if (part.length >= 16) assert.ok(!logged.includes(part), `logged: ${part}`);
      }
    }
  });
});
