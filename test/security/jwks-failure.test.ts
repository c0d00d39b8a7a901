import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import { SignJWT } from 'jose';
import { request } from 'undici';
import { routesFor, startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { read } from '../helpers/http.js';
import { expectAuthRefused, JWKS_PATH, rsaSigningKey, startJwks, type RsaSigningKey } from '../helpers/jwt.js';
import { freePort } from '../helpers/ports.js';
import { signToken } from '../helpers/tokens.js';
import { startUpstream, type TestUpstream } from '../helpers/upstream.js';

/**
 * README "Dependency failures are not credential failures": a JWKS endpoint that cannot be
 * reached (or answers nonsense) makes an asymmetric token 503 GW_AUTH_UNAVAILABLE with
 * Retry-After, never 401, and nothing reaches the upstream. A reachable JWKS without the
 * token's kid is the caller's problem: 401.
 */

function rs256(key: RsaSigningKey, sub: string, kid: string | undefined = key.kid): Promise<string> {
  const t = Math.floor(Date.now() / 1000);
  return new SignJWT({ role: 'health_provider', jti: randomUUID() })
    .setProtectedHeader({ alg: 'RS256', typ: 'JWT', ...(kid !== undefined ? { kid } : undefined) })
    .setSubject(sub)
    .setIssuedAt(t)
    .setExpirationTime(t + 600)
    .sign(key.privateKey);
}

const ROUTES = (upstreamUrl: string) => routesFor(upstreamUrl, [{ name: 'records', prefix: '/records', auth: 'required' }]);

describe('JWKS dependency failures', () => {
  let upstream: TestUpstream;
  let rsa: RsaSigningKey;
  const closers: Array<() => Promise<void>> = [];

  before(async () => {
    rsa = await rsaSigningKey('rsa-live');
    upstream = await startUpstream();
  });
  after(async () => {
    for (const close of closers.reverse()) await close();
    await upstream?.close();
  });

  async function gateway(env: Record<string, string>): Promise<TestGateway> {
    const gw = await startTestGateway(ROUTES(upstream.url), env);
    closers.push(() => gw.close());
    return gw;
  }

  async function unavailable(gw: TestGateway, authorization: string): Promise<void> {
    const { answer } = await expectAuthRefused(gw, upstream, authorization, 'GW_AUTH_UNAVAILABLE', { status: 503 });
    assert.ok(Number(answer.headers['retry-after']) >= 1, `Retry-After: ${String(answer.headers['retry-after'])}`);
  }

  async function accepted(gw: TestGateway, authorization: string, userId: string): Promise<void> {
    const before = upstream.received.length;
    const answer = await read(request(`${gw.url}/records/${userId}`, { headers: { authorization } }));
    assert.equal(answer.statusCode, 200, answer.text);
    assert.equal(upstream.received.length, before + 1);
    assert.equal(upstream.received.at(-1)!.headers['x-user-id'], userId);
  }

  describe('the JWKS URL points at a closed port', () => {
    let gw: TestGateway;
    before(async () => {
      // A small budget: failed authentications count against the address, dependency failures must not.
      gw = await gateway({ JWT_JWKS_URL: `http://127.0.0.1:${await freePort()}${JWKS_PATH}`, AUTH_FAILURES_PER_ADDRESS_PER_MINUTE: '3' });
    });

    it('an RS256 token gets 503 GW_AUTH_UNAVAILABLE, not 401, and the upstream sees nothing', async () => {
      await unavailable(gw, `Bearer ${await rs256(rsa, 'rs-closed')}`);
    });

    it('so does an RS256 token with a kid nobody has fetched yet, or without a kid', async () => {
      await unavailable(gw, `Bearer ${await rs256(rsa, 'rs-closed-unknown', 'rsa-never-seen')}`);
      await unavailable(gw, `Bearer ${await rs256(rsa, 'rs-closed-no-kid', undefined)}`);
    });

    it('keeps answering 503 while the endpoint stays down, and never turns it into 429 for the address', async () => {
      for (let i = 0; i < 6; i++) await unavailable(gw, `Bearer ${await rs256(rsa, `rs-closed-${i}`)}`);
    });

    it('HS256 tokens are verified locally and still pass', async () => {
      await accepted(gw, `Bearer ${await signToken({ sub: 'hs-while-jwks-down' })}`, 'hs-while-jwks-down');
    });
  });

  describe('the JWKS endpoint answers 500', () => {
    let gw: TestGateway;
    before(async () => {
      const broken = await startUpstream((req, res) => {
        req.resume();
        res.writeHead(500, { 'content-type': 'text/plain' });
        res.end('internal error');
      });
      closers.push(() => broken.close());
      gw = await gateway({ JWT_JWKS_URL: `${broken.url}${JWKS_PATH}` });
    });

    it('an RS256 token gets 503 GW_AUTH_UNAVAILABLE', async () => {
      await unavailable(gw, `Bearer ${await rs256(rsa, 'rs-500')}`);
    });
  });

  describe('the JWKS endpoint answers 200 with something that is not a key set', () => {
    let gw: TestGateway;
    before(async () => {
      const garbage = await startUpstream((req, res) => {
        req.resume();
        res.writeHead(200, { 'content-type': 'text/html' });
        res.end('<html>maintenance</html>');
      });
      closers.push(() => garbage.close());
      gw = await gateway({ JWT_JWKS_URL: `${garbage.url}${JWKS_PATH}` });
    });

    it('an RS256 token gets 503 GW_AUTH_UNAVAILABLE', async () => {
      await unavailable(gw, `Bearer ${await rs256(rsa, 'rs-garbage')}`);
    });
  });

  describe('the JWKS endpoint accepts the connection and never answers', () => {
    let gw: TestGateway;
    before(async () => {
      const stalled = await startUpstream((req) => {
        req.resume();
      });
      closers.push(() => stalled.close());
      // AUTH_REQUEST_TIMEOUT_MS bounds the fetch: the request ends on the gateway's own timeout.
      gw = await gateway({ JWT_JWKS_URL: `${stalled.url}${JWKS_PATH}`, AUTH_REQUEST_TIMEOUT_MS: '100' });
    });

    it('an RS256 token gets 503 GW_AUTH_UNAVAILABLE once the fetch times out', async () => {
      await unavailable(gw, `Bearer ${await rs256(rsa, 'rs-stalled')}`);
    });
  });

  describe('a working JWKS endpoint', () => {
    let gw: TestGateway;
    let jwks: Awaited<ReturnType<typeof startJwks>>;
    let jwksClosed = false;
    before(async () => {
      jwks = await startJwks([rsa.jwk]);
      closers.push(() => (jwksClosed ? Promise.resolve() : jwks.close()));
      gw = await gateway({ JWT_JWKS_URL: jwks.jwksUrl });
    });

    it('an RS256 token signed by a key it serves passes', async () => {
      await accepted(gw, `Bearer ${await rs256(rsa, 'rs-live')}`, 'rs-live');
    });

    it('an RS256 token whose kid it does not serve gets 401 GW_AUTH_TOKEN_INVALID', async () => {
      await expectAuthRefused(gw, upstream, `Bearer ${await rs256(rsa, 'rs-unknown-kid', 'rsa-retired')}`, 'GW_AUTH_TOKEN_INVALID');
    });

    it('keys already fetched keep working after the endpoint goes away', async () => {
      await jwks.close();
      jwksClosed = true;
      await accepted(gw, `Bearer ${await rs256(rsa, 'rs-after-jwks-gone')}`, 'rs-after-jwks-gone');
    });
  });
});
